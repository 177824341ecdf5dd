//! Our half of the side-by-side benchmark (`tools/reference/bench_side.py` runs it beside the
//! PyTorch reference on the same configurations and prints the table; see
//! `docs/performance.md`). Each call times one case on the default device and prints one JSON
//! line of medians in seconds.
//!
//! ```sh
//! cargo run --release --example bench_side -- [--device NAME] swap BATCH REPEATS [CONFIG]
//! cargo run --release --example bench_side -- train CONFIG BATCH REPEATS
//! cargo run --release --example bench_side -- matmul N REPEATS
//! ```
//!
//! - `swap [church256|tiny]`: the church-256 (or `tiny`) networks, `BATCH` structure and texture
//!   images at their crop size: encode both, decode with fixed noise (random weights: the cost
//!   does not depend on their values).
//! - `train`: `CONFIG` is `tiny`, `quickstart`, `cfg128` (crop 128, texture code 128, E/G
//!   capacity 0.25, D 0.125, Dpatch 0.5 with at most 64 channels, 32-px patches) or `church256`.
//!   Times a D step, a D step followed by the lazy R1 step, and a G step (each with its Adam
//!   update, on generated images, after two warm-up calls) and the official schedule (one D and
//!   one G call per pair, R1 after every 16th D step).
//! - `matmul`: an `N`×`N`×`N` f32 matrix product, for the achieved fraction of the machine's peak.
//!
//! `--device` takes the names of `sae --device` (`flex`, `wgpu:0`, `vulkan`, `cuda:1`, ...); the
//! default is `flex` where it is compiled in.
//!
//! The machines are shared: read ratios from one run of the script, not absolute times.

use std::path::Path;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use sae::data::write_synthetic_folder;
use sae::model::inference::{Decoder, NoiseMode};
use sae::model::{DeviceSpec, ModelConfig, Preset, SwappingAutoencoderConfig};
use sae::train::{TrainOptions, Trainer};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_side [--device NAME] swap BATCH REPEATS [church256|tiny] | train CONFIG BATCH REPEATS | matmul N REPEATS\n\
         CONFIG: tiny, quickstart, cfg128, church256"
    );
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str) -> T {
    match args.get(i).map(|s| s.parse()) {
        Some(Ok(v)) => v,
        _ => {
            eprintln!("bench_side: {name} must be given as a number");
            usage()
        }
    }
}

/// Median seconds of `repeats` calls of `f` after one warm-up call.
fn time<T>(repeats: usize, device: &Device, mut f: impl FnMut() -> T) -> f64 {
    let mut run = || {
        let s = Instant::now();
        let out = f();
        device.sync().expect("device sync");
        drop(out);
        s.elapsed().as_secs_f64()
    };
    run();
    median((0..repeats).map(|_| run()).collect())
}

/// With `--features op-profile` and SAE_OP_PROFILE set: prints where the timed calls so far
/// spent their time, by operation and shape, and starts the table afresh; else nothing.
fn print_op_profile() {
    #[cfg(feature = "op-profile")]
    if sae::nn::op_profile::enabled() {
        eprint!("{}", sae::nn::op_profile::report(60));
        sae::nn::op_profile::reset();
    }
}

fn swap(batch: usize, repeats: usize, config: &str, device: &Device) -> String {
    let (mut config, size) = match config {
        "church256" => (ModelConfig::from(&Preset::Church256.config()), 256),
        "tiny" => (sae::train::tiny_model(), 64),
        _ => usage(),
    };
    config.discriminator = None;
    config.patch_discriminator = None;
    let model = config.init(device);
    let image = || {
        Tensor::<4>::random(
            [batch, 3, size, size],
            Distribution::Uniform(-1.0, 1.0),
            device,
        )
    };
    let (structure, texture) = (image(), image());
    let mut decoder = Decoder::new(&model, NoiseMode::Fixed(0));
    let t = time(repeats, device, || {
        decoder.swap(structure.clone(), texture.clone())
    });
    // The swaps' operations (warm-up included).
    print_op_profile();
    format!(r#"{{"swap": {t}}}"#)
}

/// The 128-px configuration of the issue's table, from the official channel rules.
fn cfg128() -> ModelConfig {
    ModelConfig::from(
        &SwappingAutoencoderConfig::new()
            .with_global_code_ch(128)
            .with_crop_size(128)
            .with_patch_size(32)
            .with_net_e_scale_capacity(0.25)
            .with_net_g_scale_capacity(0.25)
            .with_net_d_scale_capacity(0.125)
            .with_net_patch_d_scale_capacity(0.5)
            .with_net_patch_d_max_nc(64),
    )
}

/// Median seconds of D steps and of G steps after two warm-up calls.
fn time_steps(opts: &TrainOptions, dir: &Path, repeats: usize, device: &Device) -> (f64, f64) {
    let _ = std::fs::remove_dir_all(dir);
    let mut t = Trainer::new(opts.clone(), dir, device).expect("trainer");
    for _ in 0..2 {
        t.step().expect("step");
    }
    let (mut d, mut g) = (Vec::new(), Vec::new());
    for _ in 0..2 * repeats {
        let s = Instant::now();
        let r = t.step().expect("step");
        let e = s.elapsed().as_secs_f64();
        if r.kind == "D" { d.push(e) } else { g.push(e) }
    }
    (median(d), median(g))
}

fn train(config: &str, batch: usize, repeats: usize, device: &Device) -> String {
    let root = std::env::temp_dir().join(format!("sae-bench-side-{}", std::process::id()));
    let (preset, model) = match config {
        "tiny" | "quickstart" | "church256" => (config, None),
        "cfg128" => ("tiny", Some(cfg128())),
        _ => usage(),
    };
    let mut opts = TrainOptions::preset(preset, root.join("images")).expect("a preset");
    if let Some(model) = model {
        opts.patch.patch_size = 32;
        opts.data.crop_size = 128;
        opts.model = model;
    }
    let size = opts.data.crop_size;
    write_synthetic_folder(&root.join("images"), 2 * batch, size, 1).expect("images");
    opts.batch_size = batch;
    opts.losses.num_gpus = 1;
    opts.data.preprocess = "resize".parse().expect("a preprocess");
    opts.data.load_size = size;
    opts.schedule.total_images = u64::MAX;
    opts.schedule.snapshot_every = u64::MAX;
    opts.schedule.checkpoint_every = u64::MAX;
    opts.schedule.checkpoint_every_s = u64::MAX;

    opts.losses.r1_once_every = 1_000_000;
    let (d, g) = time_steps(&opts, &root.join("run-a"), repeats, device);
    // Where the D and G steps above (warm-up calls included) spent their time.
    print_op_profile();
    opts.losses.r1_once_every = 1;
    let (d_r1, _) = time_steps(&opts, &root.join("run-b"), repeats, device);
    let _ = std::fs::remove_dir_all(&root);
    let r1 = (d_r1 - d).max(0.0);
    // Per pair of calls: one D and one G step, R1 after every 16th D step.
    let schedule = d + g + r1 / 16.0;
    format!(
        r#"{{"d": {d}, "d_r1": {d_r1}, "r1": {r1}, "g": {g}, "schedule": {schedule}, "images_per_s": {}}}"#,
        2.0 * batch as f64 / schedule
    )
}

fn matmul(n: usize, repeats: usize, device: &Device) -> String {
    let a = Tensor::<2>::random([n, n], Distribution::Default, device);
    let b = Tensor::<2>::random([n, n], Distribution::Default, device);
    let t = time(repeats, device, || a.clone().matmul(b.clone()));
    format!(r#"{{"matmul": {t}}}"#)
}

fn main() {
    sae::model::device::keep_freed_memory();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let device = if args.first().map(String::as_str) == Some("--device") {
        let name = args.get(1).cloned().unwrap_or_default();
        args.drain(..2.min(args.len()));
        match name.parse::<DeviceSpec>() {
            Ok(spec) => spec.device(),
            Err(e) => {
                eprintln!("bench_side: --device: {e}");
                std::process::exit(2)
            }
        }
    } else if cfg!(feature = "flex") {
        "flex".parse::<DeviceSpec>().expect("flex").device()
    } else {
        Device::default()
    };
    let line = match args.first().map(String::as_str) {
        Some("swap") => swap(
            arg(&args, 1, "BATCH"),
            arg(&args, 2, "REPEATS"),
            args.get(3).map_or("church256", String::as_str),
            &device,
        ),
        Some("train") => {
            let config = args.get(1).cloned().unwrap_or_else(|| usage());
            train(
                &config,
                arg(&args, 2, "BATCH"),
                arg(&args, 3, "REPEATS"),
                &device,
            )
        }
        Some("matmul") => matmul(arg(&args, 1, "N"), arg(&args, 2, "REPEATS"), &device),
        _ => usage(),
    };
    println!("{}", with_peak_rss(&line));
    eprintln!("device {device:?}");
}

/// `line` (a JSON object) with `peak_rss_bytes`: this process's peak resident memory, read from
/// `/proc/self/status` (`VmHWM`, Linux only; the line is unchanged elsewhere). The driver's
/// `wait4` figure cannot be used: Linux carries a process's peak across `exec`, so every child of
/// the Python driver reported at least the driver's own 0.5 GB.
fn with_peak_rss(line: &str) -> String {
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let kb = s.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
            kb.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        });
    match (peak, serde_json::from_str::<serde_json::Value>(line)) {
        (Some(kb), Ok(serde_json::Value::Object(mut map))) => {
            map.insert("peak_rss_bytes".into(), (kb * 1024).into());
            serde_json::Value::Object(map).to_string()
        }
        _ => line.to_string(),
    }
}
