//! What `sae train` and the training examples share: turning command-line choices into
//! validated [`TrainOptions`], starting or resuming the run, and Ctrl-C handling.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::Device;

use crate::options::{TRAIN_PRESETS, TrainOptions};
use crate::trainer::{RunEnd, TrainError, Trainer};

/// The command-line choices of a training run (`sae train`); `None` keeps the preset's value.
#[derive(Clone, Debug, Default)]
pub struct TrainArgs {
    /// A name from [`TRAIN_PRESETS`].
    pub preset: Option<String>,
    /// The dataset (folder, `.zip` or LMDB folder).
    pub data: Option<PathBuf>,
    /// The run directory.
    pub out: PathBuf,
    /// Train this many optimizer calls in total (D and G calls alike; `steps·batch` images).
    pub steps: Option<u64>,
    /// Train this many thousand images in total.
    pub kimg: Option<f64>,
    /// Images per optimizer call (even).
    pub batch: Option<usize>,
    /// Per-GPU chunks of the batch (the official GPU count).
    pub num_gpus: Option<usize>,
    /// Seed of the data order, crops and noise.
    pub seed: Option<u64>,
    /// Decoding threads.
    pub workers: Option<usize>,
    /// Continue the run in `out`.
    pub resume: bool,
}

fn bad(option: &str, problem: impl Into<String>) -> TrainError {
    TrainError::Option {
        option: option.to_string(),
        problem: problem.into(),
    }
}

/// The run length in images from `--steps` / `--kimg` (at most one of them).
fn total_images(args: &TrainArgs, batch: usize) -> Result<Option<u64>, TrainError> {
    match (args.steps, args.kimg) {
        (Some(_), Some(_)) => Err(bad("--steps", "give either --steps or --kimg, not both")),
        (Some(0), None) => Err(bad("--steps", "must be positive")),
        (Some(s), None) => Ok(Some(s * batch as u64)),
        (None, Some(k)) if !(k > 0.0 && k.is_finite()) => {
            Err(bad("--kimg", format!("must be a positive number, got {k}")))
        }
        (None, Some(k)) => Ok(Some((k * 1000.0).ceil() as u64)),
        (None, None) => Ok(None),
    }
}

/// Resolves the options of a new run: the preset, then every given flag, then validation
/// (naming the flag at fault).
///
/// # Errors
/// [`TrainError::Option`] naming the flag.
pub fn resolve_options(args: &TrainArgs) -> Result<TrainOptions, TrainError> {
    let name = args
        .preset
        .as_deref()
        .ok_or_else(|| bad("--preset", "is required for a new run"))?;
    let data = args
        .data
        .clone()
        .ok_or_else(|| bad("--data", "is required for a new run"))?;
    if !data.exists() {
        return Err(bad("--data", format!("{} does not exist", data.display())));
    }
    let mut opts = TrainOptions::preset(name, data).ok_or_else(|| {
        bad(
            "--preset",
            format!(
                "unknown preset `{name}`; one of {}",
                TRAIN_PRESETS.join(", ")
            ),
        )
    })?;
    if let Some(b) = args.batch {
        opts.batch_size = b;
        // A new batch size without a GPU count trains as one device.
        if args.num_gpus.is_none() {
            opts.losses.num_gpus = 1;
        }
    }
    if let Some(n) = args.num_gpus {
        if n == 0 {
            return Err(bad("--num-gpus", "must be at least 1"));
        }
        opts.losses.num_gpus = n;
    }
    if let Some(s) = args.seed {
        opts.seed = s;
    }
    if let Some(w) = args.workers {
        opts.data.workers = w;
    }
    if let Some(t) = total_images(args, opts.batch_size)? {
        opts.schedule.total_images = t;
    }
    crate::trainer::validate(&opts)?;
    Ok(opts)
}

/// Starts (or with `args.resume`, continues) a run and trains until its end or until `stop`.
///
/// On `--resume` only `--steps`/`--kimg` (a new total length) may be given besides `--out`;
/// every other choice comes from the run's `options.json`.
///
/// # Errors
/// Invalid flags, data, checkpoint or I/O errors, a non-finite loss.
pub fn launch(args: &TrainArgs, device: &Device, stop: &AtomicBool) -> Result<RunEnd, TrainError> {
    let mut trainer = if args.resume {
        for (flag, given) in [
            ("--preset", args.preset.is_some()),
            ("--data", args.data.is_some()),
            ("--batch", args.batch.is_some()),
            ("--num-gpus", args.num_gpus.is_some()),
            ("--seed", args.seed.is_some()),
            ("--workers", args.workers.is_some()),
        ] {
            if given {
                return Err(bad(
                    flag,
                    "cannot change on --resume (the run's options.json decides it)",
                ));
            }
        }
        let batch = read_batch(&args.out)?;
        let total = total_images(args, batch)?;
        let t = Trainer::resume(&args.out, device, total)?;
        eprintln!(
            "resuming {} at {} images ({} optimizer calls)",
            args.out.display(),
            t.counters().images,
            t.counters().calls
        );
        t
    } else {
        let opts = resolve_options(args)?;
        let t = Trainer::new(opts, &args.out, device)?;
        eprintln!(
            "new run in {} (preset {}, batch {}, {} images)",
            args.out.display(),
            t.options().preset,
            t.options().batch_size,
            t.options().schedule.total_images
        );
        t
    };
    let end = trainer.run(stop)?;
    match end {
        RunEnd::Finished => eprintln!(
            "finished at {} images; checkpoints in {}",
            trainer.counters().images,
            args.out.join("checkpoints").display()
        ),
        RunEnd::Interrupted => eprintln!(
            "interrupted at {} images; checkpoint written, continue with --resume --out {}",
            trainer.counters().images,
            args.out.display()
        ),
    }
    Ok(end)
}

fn read_batch(run_dir: &Path) -> Result<usize, TrainError> {
    let path = run_dir.join("options.json");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::RunDir {
        dir: run_dir.to_path_buf(),
        problem: format!("no run to resume (options.json: {e})"),
    })?;
    let opts: TrainOptions = serde_json::from_str(&text).map_err(|e| TrainError::BadRunFile {
        path,
        problem: e.to_string(),
    })?;
    Ok(opts.batch_size)
}

/// A flag raised by the first Ctrl-C (SIGINT): the trainer finishes its step, writes a
/// checkpoint and returns. A second Ctrl-C exits at once.
///
/// # Errors
/// If a handler is already installed by someone else.
pub fn stop_on_ctrl_c() -> Result<Arc<AtomicBool>, ctrlc::Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: finishing the step and writing a checkpoint (Ctrl-C again to quit now)"
        );
    })?;
    Ok(stop)
}
