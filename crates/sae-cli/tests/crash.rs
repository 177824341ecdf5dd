//! The crash test: `sae train` killed with SIGKILL at seeded random moments (including during
//! checkpoint writes: it checkpoints every second) and resumed each time ends bit-identical to
//! an uninterrupted run; SIGTERM and SIGHUP finish the step and write a checkpoint.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use common::workdir;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use sae_model::native::read_native;

/// `sae train` of `tiny` on 8 generated images, batch 4, `steps` calls, checkpointing every
/// second; a new run, or `--resume` when the run folder has its options.
fn train(data: &Path, run: &Path, steps: u64) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sae"));
    c.arg("train").args(["--out", run.to_str().unwrap()]);
    if run.join("options.json").exists() {
        c.arg("--resume");
    } else {
        c.args(["--preset", "tiny", "--data", data.to_str().unwrap()])
            .args(["--batch", "4", "--workers", "1"])
            .args(["--steps", &steps.to_string()])
            .args(["--checkpoint-every-s", "1"]);
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> String {
    let o = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "sae train failed: {e}");
    e
}

/// The final checkpoint's tensors (model and optimizer state) and counters.
fn final_state(run: &Path) -> (BTreeMap<String, Vec<u32>>, String) {
    let cps = sae_train::trainer::list_checkpoints(run).unwrap();
    let (_, path) = cps.last().expect("a final checkpoint");
    let c = read_native(path, &Device::flex()).unwrap();
    let mut tensors: BTreeMap<String, Vec<u32>> = c
        .extra_tensors
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.try_to_vec::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
            )
        })
        .collect();
    for p in sae_nn::collect_params(&c.model, None) {
        let bits = p
            .value
            .try_to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect();
        tensors.insert(p.path, bits);
    }
    let state: serde_json::Value = serde_json::from_str(&c.metadata["train_state"]).unwrap();
    (tensors, state["counters"].to_string())
}

#[test]
fn killed_runs_resume_to_the_same_weights() {
    let dir = workdir("kill");
    let data = dir.join("images");
    sae_data::write_synthetic_folder(&data, 8, 64, 3).unwrap();
    let steps = 10;
    let straight = dir.join("straight");
    finish(train(&data, &straight, steps));

    let run = dir.join("killed");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(2026);
    let mut kills = 0;
    let started = Instant::now();
    loop {
        let mut child = train(&data, &run, steps);
        let delay = Duration::from_millis(rng.random_range(200..2500));
        let t0 = Instant::now();
        let mut exited = None;
        while t0.elapsed() < delay {
            if let Some(status) = child.try_wait().unwrap() {
                exited = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match exited {
            Some(status) => {
                let e =
                    String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).into_owned();
                assert!(
                    status.success(),
                    "sae train failed after {kills} kills: {e}"
                );
                break;
            }
            None if kills < 6 => {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
            }
            None => {
                finish(child);
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(600), "no progress");
    }
    println!("killed {kills} times");
    assert!(kills > 0, "the run finished before the first kill");
    let (a, ca) = final_state(&straight);
    let (b, cb) = final_state(&run);
    assert_eq!(ca, cb, "counters");
    assert_eq!(a.len(), b.len());
    let differing: Vec<&String> = a.keys().filter(|k| a[*k] != b[*k]).collect();
    assert!(
        differing.is_empty(),
        "differ after {kills} kills: {differing:?}"
    );
    // No temporary file survives the resumes.
    for sub in ["", "checkpoints", "snapshots"] {
        for entry in std::fs::read_dir(run.join(sub)).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(!name.contains(".tmp-"), "left behind: {name}");
        }
    }
    // stats.jsonl has no line twice.
    let stats = std::fs::read_to_string(run.join("stats.jsonl")).unwrap();
    let images: Vec<u64> = stats
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["images"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(images.windows(2).all(|w| w[0] < w[1]), "{images:?}");
}

#[test]
fn sigterm_and_sighup_checkpoint() {
    for signal in ["TERM", "HUP"] {
        let dir = workdir(&format!("sig{signal}"));
        let data = dir.join("images");
        sae_data::write_synthetic_folder(&data, 8, 64, 3).unwrap();
        let run = dir.join("run");
        let child = train(&data, &run, 100_000);
        // Wait until it trains (the first snapshot is written before the first step).
        let t0 = Instant::now();
        while !run.join("snapshots").exists() {
            assert!(t0.elapsed() < Duration::from_secs(120), "never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        let killed = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let e = finish(child);
        assert!(e.contains("interrupted at"), "{e}");
        let cps = sae_train::trainer::list_checkpoints(&run).unwrap();
        assert!(!cps.is_empty(), "SIG{signal} wrote no checkpoint: {e}");
    }
}
