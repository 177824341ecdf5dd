//! What `sae train` and the training examples share: turning command-line choices into
//! validated [`TrainOptions`], starting or resuming the run, and stopping cleanly on Ctrl-C,
//! SIGTERM or SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::options::TrainOptions;
use crate::presets::preset_names;
use crate::trainer::{GradientSync, RunDir, RunEnd, TrainDevices, TrainError, Trainer, validate};

/// The command-line choices of a training run (`sae train`); `None` keeps the preset's value.
#[derive(Clone, Debug, Default)]
pub struct TrainArgs {
    /// A name from [`crate::TRAIN_PRESETS`].
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
    /// Per-GPU chunks of the batch (the official GPU count). Without it, a new `batch` trains
    /// as one chunk per device.
    pub num_gpus: Option<usize>,
    /// Seed of the data order, crops and noise.
    pub seed: Option<u64>,
    /// Decoding threads.
    pub workers: Option<usize>,
    /// Continue the run in `out`.
    pub resume: bool,
    /// Checkpoint every this many seconds as well (0: only by images).
    pub checkpoint_every_s: Option<u64>,
}

fn bad(option: &str, problem: impl Into<String>) -> TrainError {
    TrainError::Option {
        option: option.to_string(),
        problem: problem.into(),
    }
}

/// `--data` as an absolute path, so that `options.json` names the same dataset from any
/// working directory.
fn absolute_data(data: &Path) -> Result<PathBuf, TrainError> {
    if !data.exists() {
        return Err(bad("--data", format!("{} does not exist", data.display())));
    }
    std::path::absolute(data).map_err(|e| bad("--data", format!("{}: {e}", data.display())))
}

/// The run length in images from `--steps` / `--kimg` (at most one of them).
fn total_images(args: &TrainArgs, batch: usize) -> Result<Option<u64>, TrainError> {
    match (args.steps, args.kimg) {
        (Some(_), Some(_)) => Err(bad("--steps", "give either --steps or --kimg, not both")),
        (Some(0), None) => Err(bad("--steps", "must be positive")),
        (Some(s), None) => s.checked_mul(batch as u64).map(Some).ok_or_else(|| {
            bad(
                "--steps",
                format!("{s} steps of {batch} images overflow the image counter"),
            )
        }),
        (None, Some(k)) if !(k > 0.0 && k.is_finite()) => {
            Err(bad("--kimg", format!("must be a positive number, got {k}")))
        }
        (None, Some(k)) if k * 1000.0 >= u64::MAX as f64 => Err(bad(
            "--kimg",
            format!("{k} thousand images overflow the image counter"),
        )),
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
    resolve_options_for(args, 1)
}

/// [`resolve_options`] for a run on `devices` devices: a new `--batch` without `--num-gpus`
/// trains as one chunk per device (as the official code on that many GPUs would).
///
/// # Errors
/// [`TrainError::Option`] naming the flag.
pub fn resolve_options_for(args: &TrainArgs, devices: usize) -> Result<TrainOptions, TrainError> {
    let name = args
        .preset
        .as_deref()
        .ok_or_else(|| bad("--preset", "is required for a new run"))?;
    let data = args
        .data
        .clone()
        .ok_or_else(|| bad("--data", "is required for a new run"))?;
    let data = absolute_data(&data)?;
    let mut opts = TrainOptions::preset(name, data).ok_or_else(|| {
        bad(
            "--preset",
            format!("unknown preset `{name}`; one of {}", preset_names()),
        )
    })?;
    if let Some(b) = args.batch {
        opts.batch_size = b;
        // A new batch size without a GPU count trains as one chunk per device.
        if args.num_gpus.is_none() {
            let n = devices.max(1);
            if n > 1 && !b.is_multiple_of(2 * n) {
                return Err(bad(
                    "--devices",
                    format!(
                        "a batch of {b} on {n} devices does not split into one chunk of an \
                         even size per device; use a multiple of {}",
                        2 * n
                    ),
                ));
            }
            opts.losses.num_gpus = n;
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
    if let Some(s) = args.checkpoint_every_s {
        opts.schedule.checkpoint_every_s = s;
    }
    validate(&opts)?;
    Ok(opts)
}

/// The options of the run in `args.out` for `--resume`, with the flags given on the command
/// line checked against them: a flag equal to the run's option is accepted; `--data` may name
/// the dataset's new location (datasets move between machines), which is written to
/// `options.json` with a notice; `--workers` and `--checkpoint-every-s` may change (neither
/// changes what is trained); `--steps`/`--kimg` set a new total length. Any other change is
/// refused, naming the flag.
///
/// # Errors
/// [`TrainError::Option`] naming a flag that contradicts the run, and errors reading or
/// writing `options.json`.
pub fn resume_options(args: &TrainArgs) -> Result<TrainOptions, TrainError> {
    let run = RunDir::new(&args.out);
    let mut opts = run.read_options()?;
    let differs = |flag: &str, given: String, run_value: String| -> Result<(), TrainError> {
        if given == run_value {
            return Ok(());
        }
        Err(bad(
            flag,
            format!(
                "{given} differs from the run's {run_value}; options.json decides it on \
                 --resume (start a new run with another --out to change it)"
            ),
        ))
    };
    if let Some(p) = &args.preset {
        differs("--preset", p.clone(), opts.preset.clone())?;
    }
    if let Some(b) = args.batch {
        differs("--batch", b.to_string(), opts.batch_size.to_string())?;
    }
    if let Some(n) = args.num_gpus {
        differs(
            "--num-gpus",
            n.to_string(),
            opts.losses.num_gpus.to_string(),
        )?;
    }
    if let Some(s) = args.seed {
        differs("--seed", s.to_string(), opts.seed.to_string())?;
    }
    let mut rewrite = false;
    if let Some(w) = args.workers {
        rewrite |= opts.data.workers != w;
        opts.data.workers = w;
    }
    if let Some(s) = args.checkpoint_every_s {
        rewrite |= opts.schedule.checkpoint_every_s != s;
        opts.schedule.checkpoint_every_s = s;
    }
    if let Some(data) = &args.data
        && absolute_data(data)? != opts.data.path
    {
        let data = absolute_data(data)?;
        // The new place must hold a dataset before options.json is changed to name it.
        sae_data::open_dataset(&data)?;
        eprintln!(
            "notice: the dataset moved from {} to {}; options.json now names the new place",
            opts.data.path.display(),
            data.display()
        );
        opts.data.path = data;
        rewrite = true;
    }
    if rewrite {
        validate(&opts)?;
        run.write_options(&opts)?;
    }
    Ok(opts)
}

/// The devices of a run from the `--device NAME` / `--devices LIST` flags of the training
/// binaries (at most one of them; see [`TrainDevices::parse`]); Burn's default device (a GPU
/// when one is compiled in, else the CPU) when neither is given.
///
/// # Errors
/// [`TrainError::Option`] naming the flag and the bad device name.
pub fn train_devices(
    device: Option<&str>,
    devices: Option<&str>,
) -> Result<TrainDevices, TrainError> {
    match (device, devices) {
        (Some(_), Some(_)) => Err(bad(
            "--devices",
            "give either --device or --devices, not both",
        )),
        (Some(name), None) => sae_model::parse_device(name)
            .map(TrainDevices::single)
            .map_err(|e| bad("--device", e.to_string())),
        (None, Some(list)) => {
            TrainDevices::parse(list).map_err(|e| bad("--devices", e.to_string()))
        }
        (None, None) => Ok(TrainDevices::single(burn::tensor::Device::default())),
    }
}

/// Starts (or with `args.resume`, continues) a run on one device (`&device`) or several
/// ([`TrainDevices`]) and trains until its end or until `stop`.
///
/// # Errors
/// Invalid flags, data, checkpoint or I/O errors, a non-finite loss.
pub fn launch(
    args: &TrainArgs,
    devices: impl Into<TrainDevices>,
    stop: &AtomicBool,
) -> Result<RunEnd, TrainError> {
    let devices = devices.into();
    let mut trainer = if args.resume {
        let opts = resume_options(args)?;
        let total = total_images(args, opts.batch_size)?;
        let t = Trainer::resume_with(opts, &args.out, devices.clone(), total)?;
        eprintln!(
            "resuming {} at {} images ({} optimizer calls)",
            args.out.display(),
            t.counters().images,
            t.counters().calls
        );
        t
    } else {
        let opts = resolve_options_for(args, devices.len())?;
        let t = Trainer::new(opts, &args.out, devices.clone())?;
        eprintln!(
            "new run in {} (preset {}, batch {}, {} images)",
            args.out.display(),
            t.options().preset,
            t.options().batch_size,
            t.options().schedule.total_images
        );
        t
    };
    if devices.len() > 1 {
        let how = match devices.sync() {
            GradientSync::Gather => "gradients summed on the first device",
            GradientSync::AllReduce => "gradients all-reduced across devices",
        };
        eprintln!(
            "{} devices, {} images each per step, {how}",
            devices.len(),
            trainer.options().batch_size / devices.len()
        );
    }
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

/// A flag raised by the first Ctrl-C (SIGINT), SIGTERM (a scheduler stopping the job) or
/// SIGHUP (a closed terminal): the trainer finishes its step, writes a checkpoint and returns.
/// A second signal exits at once.
///
/// # Errors
/// If a handler is already installed by someone else.
pub fn stop_on_signals() -> Result<Arc<AtomicBool>, ctrlc::Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "\nstop requested: finishing the step and writing a checkpoint (Ctrl-C again to quit now)"
        );
    })?;
    Ok(stop)
}
