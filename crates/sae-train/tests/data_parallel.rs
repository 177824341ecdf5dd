//! Data-parallel training (`--devices`): two `flex` replicas on two threads train what one
//! device with `--num-gpus 2` trains, on the same batches, randomness and weights, through a D
//! step, a G step, a D step with its lazy R1 step and a G step after it, each resumed from the
//! same checkpoint on one device and on two; the replicas hold equal weights after every step,
//! and a resumed two-device run continues bit for bit.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use sae_data::write_synthetic_folder;
use sae_nn::collect_params;
use sae_train::{GradientSync, TrainDevices, TrainError, TrainOptions, Trainer};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sae-dp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `tiny` at batch 4 in two chunks of 2; R1 after every second D step, so the third call is a D
/// step with its R1 step.
fn options(data: &Path) -> TrainOptions {
    let mut o = TrainOptions::preset("tiny", data.to_path_buf()).unwrap();
    o.data.workers = 1;
    o.batch_size = 4;
    o.losses.num_gpus = 2;
    o.losses.r1_once_every = 2;
    o.schedule.total_images = 1 << 40;
    o.adam.eps = ADAM_EPS;
    o
}

fn two_flex() -> TrainDevices {
    TrainDevices::new(vec![Device::flex(), Device::flex()]).unwrap()
}

type Weights = Vec<(String, Vec<f32>)>;

/// Every parameter of the four networks of one replica, and the first device's Adam moments.
fn weights(t: &Trainer, replica: usize) -> Weights {
    let (e, g, d, p) = t.replica_networks()[replica];
    let mut out = Vec::new();
    for (prefix, params) in [
        ("e", collect_params(e, None)),
        ("g", collect_params(g, None)),
        ("d", collect_params(d, None)),
        ("dpatch", collect_params(p, None)),
    ] {
        for np in params {
            let v = np.value.convert::<f32>().try_to_vec::<f32>().unwrap();
            out.push((format!("{prefix}.{}", np.path), v));
        }
    }
    if replica == 0 {
        let (og, od) = t.optimizers();
        for (name, opt) in [("opt_g", og), ("opt_d", od)] {
            for (k, v) in opt.state_tensors() {
                let v = v.convert::<f32>().try_to_vec::<f32>().unwrap();
                out.push((format!("{name}.{k}"), v));
            }
        }
    }
    out
}

/// The largest absolute difference between two weight sets, and where.
fn worst(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> (f32, String) {
    assert_eq!(a.len(), b.len());
    let mut worst = (0f32, String::new());
    for ((ka, va), (kb, vb)) in a.iter().zip(b) {
        assert_eq!(ka, kb);
        assert_eq!(va.len(), vb.len(), "{ka}");
        for (x, y) in va.iter().zip(vb) {
            let d = (x - y).abs();
            assert!(d.is_finite(), "{ka}: {x} vs {y}");
            if d > worst.0 {
                worst = (d, ka.clone());
            }
        }
    }
    worst
}

/// Adam's ε for this test. With the official 1e-8, Adam maps a gradient of 1e-9 to an update
/// of lr/10 and passes on its sign, so summation-order noise in gradients that small (measured:
/// ~5e-8 absolute on weights whose largest gradient is ~3e-3) moves those few weights by up to
/// 2·lr and the runs drift apart. At 1e-4 an update changes by at most lr/ε = 20 times a gradient
/// change, ~1e-6 per step, so weight differences measure what this test is about. Gradients are
/// compared as well (independent of ε).
const ADAM_EPS: f64 = 1e-4;

/// Each comparison is one call from the same state, so the two runs differ only by the order
/// of float summation (two shards' gradients summed after backward instead of inside it).
/// Measured here: weights at most 3.2e-6 apart (an encoder bias after a G step; D steps
/// 2.4e-7), gradients at most 5.7e-5 of the optimizer's largest (a G-step sum over every pixel;
/// D and R1 steps < 1e-6), loss terms at most ~1e-7. The tolerances leave 20-30x for other
/// CPUs' summation orders; a wrong shard, crop, noise row or gradient scale moves gradients by
/// O(1) of the largest and weights by ~lr = 2e-3.
const WEIGHT_TOL: f32 = 1e-4;
/// See [`WEIGHT_TOL`]; relative to the largest gradient of the same optimizer.
const GRAD_TOL: f32 = 1e-3;
/// Loss terms are means of O(1) values; 1e-5 is 100 ulps of a term of 1.
const TERM_TOL: f32 = 1e-5;

fn compare_step(label: &str, one: &mut Trainer, two: &mut Trainer) {
    let (a, b) = (one.step().unwrap(), two.step().unwrap());
    assert_eq!(a.kind, b.kind, "{label}");
    let names = |r: &sae_train::StepReport| r.terms.iter().map(|t| t.0).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "{label}");
    for ((name, x), (_, y)) in a.terms.iter().zip(&b.terms) {
        assert!(
            (x - y).abs() <= TERM_TOL,
            "{label}: {name} = {x} on one device, {y} on two"
        );
    }
    assert_eq!(one.counters(), two.counters(), "{label}");
    // One Adam step per update, on one device as on two (D steps plus R1 steps; G steps).
    for t in [&*one, &*two] {
        let c = t.counters();
        let (og, od) = t.optimizers();
        assert_eq!(
            (og.steps(), od.steps()),
            (c.g_steps, c.d_steps + c.r1_steps),
            "{label}"
        );
    }
    let (w1, w2) = (weights(one, 0), weights(two, 0));
    let (grad_diff, grad_at) = worst_gradient(&w1, &w2);
    assert!(
        grad_diff <= GRAD_TOL,
        "{label}: gradients differ by {grad_diff:e} of their largest value at {grad_at}"
    );
    let k = w1.len() - opt_len(one);
    let (diff, at) = worst(&w1[..k], &w2[..k]);
    println!(
        "{label}: terms {:?}; largest weight difference {diff:e} at {at}; largest gradient \
         difference {grad_diff:e} of the largest at {grad_at}",
        a.terms
    );
    assert!(
        diff <= WEIGHT_TOL,
        "{label}: weights differ by {diff:e} at {at}"
    );
    // The second replica holds exactly the first one's weights (forked, not recomputed).
    for r in 1..two.device_count() {
        let (diff, at) = worst(&weights(two, r)[..], &w2[..w2.len() - opt_len(two)]);
        assert_eq!(diff, 0.0, "{label}: replica {r} differs at {at}");
    }
}

/// This step's gradients are Adam's first moments (β1 = 0 for both optimizers, so `m` is the
/// last gradient): the largest difference relative to the largest gradient of the same
/// optimizer (a relative error per tensor would be meaningless for sums that cancel, such as
/// the gradient of a noise strength, a sum over every pixel of noise times gradient), and where.
fn worst_gradient(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> (f32, String) {
    let mut worst = (0f32, String::new());
    for opt in ["opt_g.m.", "opt_d.m."] {
        let pairs = || a.iter().zip(b).filter(|((k, _), _)| k.starts_with(opt));
        let scale = pairs()
            .flat_map(|((_, va), _)| va.iter().map(|x| x.abs()))
            .fold(0f32, f32::max);
        if scale == 0.0 {
            continue;
        }
        for ((k, va), (_, vb)) in pairs() {
            let d = va
                .iter()
                .zip(vb)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            if d / scale > worst.0 {
                worst = (d / scale, k.clone());
            }
        }
    }
    worst
}

fn opt_len(t: &Trainer) -> usize {
    let (og, od) = t.optimizers();
    og.state_tensors().len() + od.state_tensors().len()
}

#[test]
fn two_flex_replicas_train_what_one_device_with_two_chunks_trains() {
    let dir = temp_dir("equiv");
    let data = dir.join("images");
    write_synthetic_folder(&data, 12, 64, 5).unwrap();
    let opts = options(&data);

    // The one-device run. Before each of its calls it is checkpointed, and the checkpoint is
    // resumed twice: on one device and on two. Both copies take the call and are compared, so
    // every comparison starts from the same state and measures that one call (float noise from
    // earlier calls would otherwise pile up through Adam and the GAN and say nothing about
    // the replicas). The first call starts from the run's initial weights.
    let base_dir = dir.join("base");
    let mut base = Trainer::new(opts, &base_dir, Device::flex()).unwrap();
    let labels = ["D step", "G step", "D + R1 step", "G step after R1"];
    let mut last_two = None;
    for (i, label) in labels.into_iter().enumerate() {
        base.save_checkpoint().unwrap();
        let (a, b) = (dir.join(format!("{i}-one")), dir.join(format!("{i}-two")));
        copy_dir(&base_dir, &a);
        copy_dir(&base_dir, &b);
        let mut one = Trainer::resume(&a, Device::flex(), None).unwrap();
        let mut two = Trainer::resume(&b, two_flex(), None).unwrap();
        assert_eq!(two.device_count(), 2);
        assert!(weights(&one, 0) == weights(&two, 0), "{label}: same start");
        compare_step(label, &mut one, &mut two);
        base.step().unwrap();
        // Resuming is exact: the resumed one-device copy is the uninterrupted run.
        assert!(
            weights(&base, 0) == weights(&one, 0),
            "{label}: resume is exact"
        );
        last_two = Some((two, b));
    }
    assert_eq!(base.counters().r1_steps, 1);

    // A two-device run continues bit for bit after its own checkpoint and resume.
    let (mut two, two_dir) = last_two.unwrap();
    two.save_checkpoint().unwrap();
    let again = dir.join("two-again");
    copy_dir(&two_dir, &again);
    let mut resumed = Trainer::resume(&again, two_flex(), None).unwrap();
    for _ in 0..2 {
        two.step().unwrap();
        resumed.step().unwrap();
        assert!(
            weights(&two, 0) == weights(&resumed, 0),
            "the resumed two-device run left the uninterrupted one"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_device_count_that_does_not_divide_the_chunks_is_named() {
    let dir = temp_dir("count");
    let data = dir.join("images");
    write_synthetic_folder(&data, 4, 64, 5).unwrap();
    let three = TrainDevices::new(vec![Device::flex(); 3]).unwrap();
    let err = Trainer::new(options(&data), &dir.join("run"), three)
        .err()
        .expect("3 devices for 2 chunks");
    assert!(
        matches!(&err, TrainError::Option { option, .. } if option == "--devices"),
        "{err}"
    );
    assert!(err.to_string().contains("3 devices"), "{err}");
    assert!(!dir.join("run").join("options.json").exists());
    assert!(TrainDevices::new(vec![]).is_none());
    let err = TrainDevices::parse("flex,gpu").unwrap_err().to_string();
    assert!(
        err.contains("`gpu`") && err.contains("unknown backend"),
        "{err}"
    );
    let parsed = TrainDevices::parse("flex, flex").unwrap();
    assert_eq!((parsed.len(), parsed.sync()), (2, GradientSync::Gather));
    // Only a CUDA list takes the all-reduce path, and names each device once.
    #[cfg(feature = "cuda")]
    {
        let parsed = TrainDevices::parse("cuda:0,cuda:1").unwrap();
        assert_eq!(parsed.sync(), GradientSync::AllReduce);
        let err = TrainDevices::parse("cuda:0,cuda").unwrap_err().to_string();
        assert!(err.contains("cuda:0 is named twice"), "{err}");
    }
}

/// A non-finite loss on the replicas stops the step on every device before any update: both
/// replicas keep their weights and the error names the term.
#[test]
fn a_non_finite_loss_updates_no_replica() {
    let dir = temp_dir("nan");
    let data = dir.join("images");
    write_synthetic_folder(&data, 4, 64, 5).unwrap();
    let mut opts = options(&data);
    opts.losses.lambda_patch_gan = f64::NAN;
    let mut t = Trainer::new(opts, &dir.join("run"), two_flex()).unwrap();
    let before: Vec<Weights> = (0..2).map(|r| weights(&t, r)).collect();
    let err = t.step().unwrap_err();
    assert!(
        matches!(&err, TrainError::NonFinite { term, call: 1, .. } if term == "PatchD_real"),
        "{err}"
    );
    for (r, w) in before.iter().enumerate() {
        assert!(*w == weights(&t, r), "replica {r} changed");
    }
    let (og, od) = t.optimizers();
    assert_eq!((og.steps(), od.steps()), (0, 0));
}

#[test]
fn colour_jitter_draws_the_same_maps_on_one_device_and_on_two() {
    // `structure_colour_jitter` (ours) draws one colour map per reconstructed image; each
    // replica must take its own chunk's maps of the whole batch's draws, so that two devices
    // still train what one device with two chunks trains.
    let dir = temp_dir("jitter");
    let data = dir.join("images");
    write_synthetic_folder(&data, 12, 64, 5).unwrap();
    let mut opts = options(&data);
    opts.losses.structure_colour_jitter = true;
    let base_dir = dir.join("base");
    let mut base = Trainer::new(opts, &base_dir, Device::flex()).unwrap();
    base.step().unwrap();
    base.save_checkpoint().unwrap();
    let (a, b) = (dir.join("one"), dir.join("two"));
    copy_dir(&base_dir, &a);
    copy_dir(&base_dir, &b);
    let mut one = Trainer::resume(&a, Device::flex(), None).unwrap();
    let mut two = Trainer::resume(&b, two_flex(), None).unwrap();
    compare_step("G step with colour jitter", &mut one, &mut two);
}
