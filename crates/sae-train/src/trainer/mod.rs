//! The training loop (the official `train.py` with `optimizers/swapping_autoencoder_optimizer.py`;
//! see `docs/training.md`): D and G steps alternate on fresh batches, D first, with the lazy R1
//! step after every `r1_once_every`-th D step.
//!
//! - [`run_dir`]: the run directory and its files;
//! - [`checkpoint`]: what a training checkpoint holds and how it is read back;
//! - `stats`, `progress`, `snapshot`: `stats.jsonl`, the terminal display, snapshot grids.
//!
//! Resuming from a checkpoint continues bit for bit: the same batches, crops, noise and
//! updates as an uninterrupted run.

mod checkpoint;
mod error;
mod progress;
mod replicas;
pub mod run_dir;
mod snapshot;
mod stats;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use sae_data::{Dataset, Loader, LoaderConfig, open_dataset};
use sae_model::{Discriminator, Encoder, Generator, PatchDiscriminator, SwappingAutoencoder};
use sae_nn::{PatchSampler, param_shapes};
use serde::{Deserialize, Serialize};

use self::checkpoint::TrainState;
pub use self::error::TrainError;
use self::error::io_err;
use self::progress::Progress;
pub use self::replicas::{GradientSync, TrainDevices};
use self::replicas::{Phase, PhaseResult, Replica, Replicas};
pub use self::run_dir::{RunDir, list_checkpoints};
use self::stats::StatsWindow;
use crate::adam::Adam;
use crate::losses::SeededRandomness;
use crate::options::TrainOptions;
pub use crate::options::validate;

/// The counters of the official training loop.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Images seen over D and G calls alike (the official `steps_so_far`).
    pub images: u64,
    /// Optimizer calls (odd: D step, even: G step).
    pub calls: u64,
    /// D steps (the official `num_discriminator_iters`).
    pub d_steps: u64,
    /// G steps.
    pub g_steps: u64,
    /// R1 steps.
    pub r1_steps: u64,
}

/// One optimizer call's result.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// `"D"` or `"G"`.
    pub kind: &'static str,
    /// `(term, value)` of the step, and of the R1 step when one ran after it.
    pub terms: Vec<(&'static str, f32)>,
    /// Images skipped by the loader while filling this batch, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The schedule's image count was reached.
    Finished,
    /// The stop flag was raised (Ctrl-C, SIGTERM, SIGHUP); the last step was finished and
    /// checkpointed.
    Interrupted,
}

/// A training run: the four networks, both optimizers, the counters and the data.
pub struct Trainer {
    opts: TrainOptions,
    run: RunDir,
    /// The networks and optimizers, one copy per device; checkpoints come from the first.
    replicas: Replicas,
    sampler: PatchSampler,
    rnd: SeededRandomness,
    loader: Loader,
    dataset: Arc<dyn Dataset>,
    counters: Counters,
    elapsed_before: f64,
    started: Instant,
    last_checkpoint: Instant,
    snapshot_real: Option<Tensor<4>>,
    stats: StatsWindow,
    skipped_total: u64,
}

impl Trainer {
    /// Starts a new run in `run_dir` (which must not hold a run or any part of one): validates
    /// the options, opens the data, writes `options.json` and builds the networks from the
    /// run's seed, on one device (`&device`) or several ([`TrainDevices`]; the first holds the
    /// run, the rest hold replicas, see `docs/distributed.md`).
    ///
    /// # Errors
    /// Invalid options (naming the flag), a device count that does not divide the run's
    /// `num_gpus` chunks, unreadable or empty data, an existing run.
    pub fn new(
        mut opts: TrainOptions,
        run_dir: &Path,
        devices: impl Into<TrainDevices>,
    ) -> Result<Self, TrainError> {
        let devices = devices.into();
        validate(&opts)?;
        check_devices(&opts, &devices)?;
        if opts.run_id.is_empty() {
            opts.run_id = new_run_id();
        }
        let run = RunDir::new(run_dir);
        run.check_fresh()?;
        let dataset = open_dataset(&opts.data.path)?;
        run.write_options(&opts)?;
        let device = devices.first().clone().autodiff();
        let model = init_seeded(&opts, &device);
        let state = TrainState::start(&opts.run_id, opts.seed);
        Self::assemble(opts, run, &devices, model, state, dataset, None)
    }

    /// Continues the run in `run_dir` from its newest readable checkpoint (see
    /// [`Trainer::resume_with`]), reading its `options.json`.
    ///
    /// # Errors
    /// As [`Trainer::resume_with`], and no or a bad `options.json`.
    pub fn resume(
        run_dir: &Path,
        devices: impl Into<TrainDevices>,
        total_images: Option<u64>,
    ) -> Result<Self, TrainError> {
        let opts = RunDir::new(run_dir).read_options()?;
        Self::resume_with(opts, run_dir, devices, total_images)
    }

    /// Continues the run in `run_dir`, whose `options.json` holds `opts`, on one device or
    /// several (the same list as before or another: the device list is not part of the run).
    /// `total_images`, when given, replaces the schedule's length (to train longer than first
    /// planned).
    ///
    /// - The newest checkpoint that reads back is used; a newer one that is truncated or
    ///   damaged is skipped with a warning naming it.
    /// - A run with no checkpoint yet (it crashed or was killed before its first one) starts
    ///   again from its options, exactly as it first started.
    /// - `stats.jsonl` lines after the checkpoint (steps that will be trained again) are
    ///   dropped, and temporary files of interrupted writes are removed.
    ///
    /// # Errors
    /// Invalid options, a device count that does not divide the run's chunks, checkpoints none
    /// of which reads back, optimizer state that does not fit the model, unreadable data.
    pub fn resume_with(
        mut opts: TrainOptions,
        run_dir: &Path,
        devices: impl Into<TrainDevices>,
        total_images: Option<u64>,
    ) -> Result<Self, TrainError> {
        let devices = devices.into();
        if let Some(total) = total_images {
            opts.schedule.total_images = total;
        }
        validate(&opts)?;
        check_devices(&opts, &devices)?;
        let run = RunDir::new(run_dir);
        let removed = run.remove_stale_temp_files();
        if removed > 0 {
            eprintln!("removed {removed} temporary file(s) of interrupted writes");
        }
        let device = devices.first().clone().autodiff();
        let mut newest_error = None;
        let mut loaded = None;
        for (_, path) in run.checkpoints()?.iter().rev() {
            match checkpoint::load(path, &opts.model, &opts.run_id, &device) {
                Ok(l) => {
                    loaded = Some(l);
                    break;
                }
                Err(e) => {
                    eprintln!("warning: skipping checkpoint {}: {e}", path.display());
                    newest_error.get_or_insert(e);
                }
            }
        }
        let dataset = open_dataset(&opts.data.path)?;
        let trainer = match loaded {
            Some(l) => {
                let opt_err = |source| TrainError::OptimizerState {
                    path: l.path.clone(),
                    source,
                };
                let opt_g = Adam::from_state(
                    opts.adam.clone(),
                    l.state.opt_g_steps,
                    &l.optimizer("opt_g"),
                    &device,
                )
                .map_err(opt_err)?;
                let opt_d = Adam::from_state(
                    opts.adam.lazy(opts.losses.r1_once_every),
                    l.state.opt_d_steps,
                    &l.optimizer("opt_d"),
                    &device,
                )
                .map_err(opt_err)?;
                run.truncate_stats(l.state.counters.images)?;
                let trainer = Self::assemble(
                    opts,
                    run,
                    &devices,
                    l.model,
                    l.state,
                    dataset,
                    Some((opt_g, opt_d)),
                )?;
                let opt_err = |source| TrainError::OptimizerState {
                    path: l.path.clone(),
                    source,
                };
                let main = trainer.replicas.main();
                main.opt_g
                    .check_covers(&trainer.param_sizes(&["g", "e"]))
                    .map_err(opt_err)?;
                main.opt_d
                    .check_covers(&trainer.param_sizes(&["d", "dpatch"]))
                    .map_err(opt_err)?;
                trainer
            }
            None => {
                if let Some(e) = newest_error {
                    return Err(e);
                }
                eprintln!(
                    "{} has no checkpoint yet: starting the run again from its options.json",
                    run.root().display()
                );
                run.truncate_stats(0)?;
                let model = init_seeded(&opts, &device);
                let state = TrainState::start(&opts.run_id, opts.seed);
                Self::assemble(opts, run, &devices, model, state, dataset, None)?
            }
        };
        Ok(trainer)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        opts: TrainOptions,
        run: RunDir,
        devices: &TrainDevices,
        model: SwappingAutoencoder,
        state: TrainState,
        dataset: Arc<dyn Dataset>,
        optimizers: Option<(Adam, Adam)>,
    ) -> Result<Self, TrainError> {
        let loader = Loader::new(
            dataset.clone(),
            LoaderConfig {
                batch_size: opts.batch_size,
                workers: opts.data.workers,
                prefetch: opts.data.prefetch,
                seed: opts.seed,
                transform: opts.data.transform()?,
            },
            state.loader.clone(),
        )?;
        let sampler = opts.patch.init().map_err(|e| TrainError::Option {
            option: "patch".into(),
            problem: e.to_string(),
        })?;
        let (opt_g, opt_d) = optimizers.unwrap_or_else(|| {
            (
                Adam::new(opts.adam.clone()),
                Adam::new(opts.adam.lazy(opts.losses.r1_once_every)),
            )
        });
        if model.d.is_none() || model.dpatch.is_none() {
            return Err(TrainError::Option {
                option: "model".into(),
                problem: "training needs both discriminators".into(),
            });
        }
        let device = devices.first().clone().autodiff();
        let main = Replica::main(device, model, opt_g, opt_d);
        let skipped_total = state.loader.skipped;
        Ok(Trainer {
            run,
            replicas: Replicas::new(main, devices),
            sampler,
            rnd: state.randomness,
            loader,
            dataset,
            counters: state.counters,
            elapsed_before: state.elapsed_s,
            started: Instant::now(),
            last_checkpoint: Instant::now(),
            snapshot_real: None,
            stats: StatsWindow::default(),
            skipped_total,
            opts,
        })
    }

    /// `(path, element count)` of every parameter of the named networks.
    fn param_sizes(&self, nets: &[&str]) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        let main = self.replicas.main();
        for &net in nets {
            let shapes = match net {
                "e" => param_shapes(&main.e),
                "g" => param_shapes(&main.g),
                "d" => param_shapes(&main.d),
                _ => param_shapes(&main.dpatch),
            };
            out.extend(
                shapes
                    .into_iter()
                    .map(|(p, s)| (format!("{net}.{p}"), s.iter().product())),
            );
        }
        out
    }

    /// The resolved options.
    pub fn options(&self) -> &TrainOptions {
        &self.opts
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The networks on the first device (for inspection and tests).
    pub fn networks(&self) -> (&Encoder, &Generator, &Discriminator, &PatchDiscriminator) {
        let m = self.replicas.main();
        (&m.e, &m.g, &m.d, &m.dpatch)
    }

    /// The networks of every device, in device order (all equal after every step).
    pub fn replica_networks(
        &self,
    ) -> Vec<(&Encoder, &Generator, &Discriminator, &PatchDiscriminator)> {
        let list = &self.replicas.list;
        list.iter().map(|m| (&m.e, &m.g, &m.d, &m.dpatch)).collect()
    }

    /// The optimizers (E+G, D+Dpatch) on the first device.
    pub fn optimizers(&self) -> (&Adam, &Adam) {
        let m = self.replicas.main();
        (&m.opt_g, &m.opt_d)
    }

    /// The number of devices the run trains on.
    pub fn device_count(&self) -> usize {
        self.replicas.list.len()
    }

    /// One pass on every device and its update; the terms, or [`TrainError::NonFinite`]
    /// before any update.
    fn pass(
        &mut self,
        phase: Phase,
        images: &[f32],
        shape: [usize; 4],
    ) -> Result<Terms, TrainError> {
        let (cfg, sampler) = (&self.opts.losses, &self.sampler);
        match self
            .replicas
            .pass(phase, images, shape, cfg, sampler, &self.rnd)?
        {
            PhaseResult::Done { terms, rnd } => {
                self.rnd = rnd;
                Ok(terms)
            }
            PhaseResult::NonFinite { term, value } => Err(TrainError::NonFinite {
                term,
                value,
                call: self.counters.calls + 1,
                images: self.counters.images,
            }),
        }
    }

    /// One optimizer call on a fresh batch: a D step (followed by the lazy R1 step on the same
    /// batch every `r1_once_every` D steps) or a G step, alternating, D first. With several
    /// devices, each takes its shard of the batch (see [`TrainDevices`]).
    ///
    /// # Errors
    /// Data errors, and [`TrainError::NonFinite`] before a non-finite update is applied.
    pub fn step(&mut self) -> Result<StepReport, TrainError> {
        let batch = self.loader.next_batch()?;
        self.skipped_total += batch.skipped.len() as u64;
        let is_d = self.counters.calls.is_multiple_of(2);
        let mut terms;
        if is_d {
            terms = self.pass(Phase::D, &batch.images, batch.shape)?;
            self.counters.d_steps += 1;
            let every = self.opts.losses.r1_once_every as u64;
            if self.counters.d_steps.is_multiple_of(every) {
                terms.extend(self.pass(Phase::R1, &batch.images, batch.shape)?);
                self.counters.r1_steps += 1;
            }
        } else {
            terms = self.pass(Phase::G, &batch.images, batch.shape)?;
            self.counters.g_steps += 1;
        }
        self.counters.calls += 1;
        self.counters.images += self.opts.batch_size as u64;
        Ok(StepReport {
            kind: if is_d { "D" } else { "G" },
            terms,
            skipped: batch.skipped,
        })
    }

    fn elapsed(&self) -> f64 {
        self.elapsed_before + self.started.elapsed().as_secs_f64()
    }

    /// Writes a checkpoint for the current state (atomically) and deletes the oldest beyond
    /// `keep_checkpoints`. Returns its path.
    ///
    /// # Errors
    /// File-system errors.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf, TrainError> {
        let dir = self.run.checkpoint_dir();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = self.run.checkpoint_path(self.counters.images);
        let main = self.replicas.main();
        let state = TrainState {
            run_id: self.opts.run_id.clone(),
            counters: self.counters.clone(),
            opt_g_steps: main.opt_g.steps(),
            opt_d_steps: main.opt_d.steps(),
            randomness: self.rnd.clone(),
            loader: self.loader.state(),
            elapsed_s: self.elapsed(),
        };
        let model = SwappingAutoencoder {
            e: main.e.clone(),
            g: main.g.clone(),
            d: Some(main.d.clone()),
            dpatch: Some(main.dpatch.clone()),
        };
        checkpoint::save(
            &path,
            &model,
            &self.opts.model,
            [("opt_g", &main.opt_g), ("opt_d", &main.opt_d)],
            &state,
        )?;
        self.run
            .rotate_checkpoints(self.opts.schedule.keep_checkpoints)?;
        self.last_checkpoint = Instant::now();
        Ok(path)
    }

    /// Writes `snapshots/snapshot-<images>.png`: rows real, reconstruction, swap on fixed
    /// images with a fixed noise seed.
    ///
    /// # Errors
    /// Data or file-system errors.
    pub fn save_snapshot(&mut self) -> Result<PathBuf, TrainError> {
        let main = self.replicas.main();
        let real = match &self.snapshot_real {
            Some(t) => t.clone(),
            None => {
                let t = snapshot::snapshot_batch(&self.opts, self.dataset.as_ref(), &main.device)?;
                self.snapshot_real = Some(t.clone());
                t
            }
        };
        let main = self.replicas.main();
        let grid = snapshot::snapshot_grid(&main.e.clone().valid(), &main.g.clone().valid(), real)?;
        let dir = self.run.snapshot_dir();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = self.run.snapshot_path(self.counters.images);
        sae_model::image_io::save_rgb_png(&grid, &path).map_err(sae_data::DataError::from)?;
        Ok(path)
    }

    /// Trains until the schedule's image count or until `stop` is raised (then the current
    /// step is finished and a checkpoint written). Logs to `stats.jsonl` and the terminal,
    /// writes snapshots and checkpoints on schedule (by images, and by wall-clock time every
    /// `checkpoint_every_s` seconds), and a final checkpoint.
    ///
    /// # Errors
    /// Any step or I/O error; a non-finite loss stops without applying the update or writing a
    /// checkpoint.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<RunEnd, TrainError> {
        let total = self.opts.schedule.total_images;
        let batch = self.opts.batch_size as u64;
        let progress = Progress::new(total, self.counters.images);
        if self.counters.images == 0 {
            self.save_snapshot()?;
        }
        let every_s = self.opts.schedule.checkpoint_every_s;
        while self.counters.images < total {
            let t0 = Instant::now();
            let report = self.step()?;
            self.stats.add(&report, t0.elapsed().as_secs_f64(), batch);
            let images = self.counters.images;
            progress.update(images, self.stats.rate());
            let crossed = |every: u64| images % every < batch;
            if crossed(self.opts.schedule.log_every) || images >= total {
                let line = self
                    .stats
                    .flush(&self.counters, self.elapsed(), self.skipped_total);
                self.run.append_stats(&line)?;
                progress.log_stats(&line);
            }
            if crossed(self.opts.schedule.snapshot_every) {
                self.save_snapshot()?;
            }
            let stopping = stop.load(Ordering::SeqCst);
            let timed = every_s > 0 && self.last_checkpoint.elapsed().as_secs() >= every_s;
            if crossed(self.opts.schedule.checkpoint_every) || images >= total || stopping || timed
            {
                let path = self.save_checkpoint()?;
                progress.log(&format!("checkpoint {}", path.display()));
            }
            if stopping {
                return Ok(RunEnd::Interrupted);
            }
        }
        if self
            .run
            .checkpoints()?
            .last()
            .is_none_or(|(i, _)| *i != self.counters.images)
        {
            self.save_checkpoint()?;
        }
        Ok(RunEnd::Finished)
    }
}

/// A fresh run id: the start time and the process id, hashed (unique enough to tell runs
/// apart; it does not seed anything).
fn new_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// The initial weights, from the run's seed. Burn's device RNG may be process-global, so the
/// seeding and the draws happen under one lock: concurrent runs in one process (tests) still
/// get their seed's weights.
fn init_seeded(opts: &TrainOptions, device: &Device) -> SwappingAutoencoder {
    static INIT: Mutex<()> = Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(opts.seed);
    opts.model.init(device)
}

/// `(name, value)` of a step's loss terms.
type Terms = Vec<(&'static str, f32)>;

/// The device count must divide the run's `num_gpus` chunks: each device takes whole chunks.
fn check_devices(opts: &TrainOptions, devices: &TrainDevices) -> Result<(), TrainError> {
    let (n, chunks) = (devices.len(), opts.losses.num_gpus);
    if !chunks.is_multiple_of(n) {
        return Err(TrainError::Option {
            option: "--devices".into(),
            problem: format!(
                "{n} devices cannot share the run's {chunks} batch chunk(s) (--num-gpus) \
                 evenly: each device takes whole chunks. Use a device count that divides \
                 {chunks}, or start the run with --num-gpus (or --batch) set for {n} devices"
            ),
        });
    }
    Ok(())
}
