//! Training-step timing on the current device: the cost of a D step, of a D step followed by
//! the lazy R1 step, and of a G step, and the resulting images per second of the official
//! schedule (R1 after every 16th D step). Data: generated images at the preset's crop size.
//!
//! `cargo run --release --example train_speed -- [PRESET [BATCH [REPEATS]]]`
//! (defaults: tiny 4 8). Compare with `python tools/reference/bench_train_torch.py PRESET BATCH`.
//! One church256 step takes seconds on a CPU, which is why this is a timing program and not a
//! criterion benchmark; read the ratios, the machines are shared.

use std::time::Instant;

use burn::tensor::Device;
use sae::data::write_synthetic_folder;
use sae::train::{TrainOptions, Trainer};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of D steps (with or without R1) and G steps after two warm-up calls.
fn time_steps(opts: &TrainOptions, dir: &std::path::Path, repeats: usize) -> (f64, f64) {
    let _ = std::fs::remove_dir_all(dir);
    let mut t = Trainer::new(opts.clone(), dir, &Device::default()).expect("trainer");
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let preset = args.first().map_or("tiny", String::as_str);
    let batch: usize = args.get(1).map_or(4, |b| b.parse().expect("BATCH"));
    let repeats: usize = args.get(2).map_or(8, |r| r.parse().expect("REPEATS"));
    let root = std::env::temp_dir().join(format!("sae-train-speed-{}", std::process::id()));
    let probe = TrainOptions::preset(preset, root.clone()).expect("a training preset");
    let size = probe.data.crop_size;
    write_synthetic_folder(&root.join("images"), 2 * batch, size, 1).expect("images");
    let mut opts = TrainOptions::preset(preset, root.join("images")).unwrap();
    opts.batch_size = batch;
    opts.losses.num_gpus = 1;
    opts.data.preprocess = "resize".parse().expect("a preprocess");
    opts.data.load_size = size;
    opts.schedule.total_images = u64::MAX;
    opts.schedule.snapshot_every = u64::MAX;
    opts.schedule.checkpoint_every = u64::MAX;

    opts.losses.r1_once_every = 1_000_000;
    let (d, g) = time_steps(&opts, &root.join("run-a"), repeats);
    opts.losses.r1_once_every = 1;
    let (d_r1, _) = time_steps(&opts, &root.join("run-b"), repeats);
    let r1 = d_r1 - d;
    // The official schedule: per 2 calls one D and one G step, R1 after every 16th D step.
    let per_pair = d + g + r1 / 16.0;
    println!(
        "preset {preset}, batch {batch}, {size} px, device {:?}",
        Device::default()
    );
    println!("D step      {d:8.3} s");
    println!(
        "D step + R1 {d_r1:8.3} s  (R1 alone {r1:.3} s = {:.2}x a D step)",
        r1 / d
    );
    println!("G step      {g:8.3} s");
    println!(
        "schedule    {:8.2} images/s ({:.2} optimizer calls/s)",
        2.0 * batch as f64 / per_pair,
        2.0 / per_pair
    );
    let _ = std::fs::remove_dir_all(&root);
}
