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
pub mod run_dir;
mod snapshot;
mod stats;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use sae_data::{Dataset, Loader, LoaderConfig, open_dataset};
use sae_model::{Discriminator, Encoder, Generator, PatchDiscriminator, SwappingAutoencoder};
use sae_nn::{PatchSampler, param_shapes};
use serde::{Deserialize, Serialize};

use self::checkpoint::TrainState;
pub use self::error::TrainError;
use self::error::io_err;
use self::progress::Progress;
pub use self::run_dir::{RunDir, list_checkpoints};
use self::stats::StatsWindow;
use crate::adam::Adam;
use crate::losses::{
    Losses, Nets, SeededRandomness, discriminator_losses, generator_losses, r1_losses,
};
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
    device: Device,
    e: Encoder,
    g: Generator,
    d: Discriminator,
    dpatch: PatchDiscriminator,
    opt_g: Adam,
    opt_d: Adam,
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

/// The networks of a trainer, borrowed field by field (so `self.rnd` can be borrowed mutably
/// beside them).
macro_rules! nets {
    ($t:expr) => {
        Nets {
            e: &$t.e,
            g: &$t.g,
            d: &$t.d,
            dpatch: &$t.dpatch,
        }
    };
}

/// `(name, value)` of a step's loss terms.
type Terms = Vec<(&'static str, f32)>;

impl Trainer {
    /// Starts a new run in `run_dir` (which must not hold a run or any part of one): validates
    /// the options, opens the data, writes `options.json` and builds the networks from the
    /// run's seed.
    ///
    /// # Errors
    /// Invalid options (naming the flag), unreadable or empty data, an existing run.
    pub fn new(
        mut opts: TrainOptions,
        run_dir: &Path,
        device: &Device,
    ) -> Result<Self, TrainError> {
        validate(&opts)?;
        if opts.run_id.is_empty() {
            opts.run_id = new_run_id();
        }
        let run = RunDir::new(run_dir);
        run.check_fresh()?;
        let dataset = open_dataset(&opts.data.path)?;
        run.write_options(&opts)?;
        let device = device.clone().autodiff();
        let model = init_seeded(&opts, &device);
        let state = TrainState::start(&opts.run_id, opts.seed);
        Self::assemble(opts, run, device, model, state, dataset, None)
    }

    /// Continues the run in `run_dir` from its newest readable checkpoint (see
    /// [`Trainer::resume_with`]), reading its `options.json`.
    ///
    /// # Errors
    /// As [`Trainer::resume_with`], and no or a bad `options.json`.
    pub fn resume(
        run_dir: &Path,
        device: &Device,
        total_images: Option<u64>,
    ) -> Result<Self, TrainError> {
        let opts = RunDir::new(run_dir).read_options()?;
        Self::resume_with(opts, run_dir, device, total_images)
    }

    /// Continues the run in `run_dir`, whose `options.json` holds `opts`. `total_images`, when
    /// given, replaces the schedule's length (to train longer than first planned).
    ///
    /// - The newest checkpoint that reads back is used; a newer one that is truncated or
    ///   damaged is skipped with a warning naming it.
    /// - A run with no checkpoint yet (it crashed or was killed before its first one) starts
    ///   again from its options, exactly as it first started.
    /// - `stats.jsonl` lines after the checkpoint (steps that will be trained again) are
    ///   dropped, and temporary files of interrupted writes are removed.
    ///
    /// # Errors
    /// Invalid options, checkpoints none of which reads back, optimizer state that does not
    /// fit the model, unreadable data.
    pub fn resume_with(
        mut opts: TrainOptions,
        run_dir: &Path,
        device: &Device,
        total_images: Option<u64>,
    ) -> Result<Self, TrainError> {
        if let Some(total) = total_images {
            opts.schedule.total_images = total;
        }
        validate(&opts)?;
        let run = RunDir::new(run_dir);
        let removed = run.remove_stale_temp_files();
        if removed > 0 {
            eprintln!("removed {removed} temporary file(s) of interrupted writes");
        }
        let device = device.clone().autodiff();
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
                    device,
                    l.model,
                    l.state,
                    dataset,
                    Some((opt_g, opt_d)),
                )?;
                let opt_err = |source| TrainError::OptimizerState {
                    path: l.path.clone(),
                    source,
                };
                trainer
                    .opt_g
                    .check_covers(&trainer.param_sizes(&["g", "e"]))
                    .map_err(opt_err)?;
                trainer
                    .opt_d
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
                Self::assemble(opts, run, device, model, state, dataset, None)?
            }
        };
        Ok(trainer)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        opts: TrainOptions,
        run: RunDir,
        device: Device,
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
        let SwappingAutoencoder { e, g, d, dpatch } = model;
        let (Some(d), Some(dpatch)) = (d, dpatch) else {
            return Err(TrainError::Option {
                option: "model".into(),
                problem: "training needs both discriminators".into(),
            });
        };
        let skipped_total = state.loader.skipped;
        Ok(Trainer {
            run,
            device,
            e,
            g,
            d,
            dpatch,
            opt_g,
            opt_d,
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
        for &net in nets {
            let shapes = match net {
                "e" => param_shapes(&self.e),
                "g" => param_shapes(&self.g),
                "d" => param_shapes(&self.d),
                _ => param_shapes(&self.dpatch),
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

    /// The networks (for inspection and tests).
    pub fn networks(&self) -> (&Encoder, &Generator, &Discriminator, &PatchDiscriminator) {
        (&self.e, &self.g, &self.d, &self.dpatch)
    }

    /// The optimizers (E+G, D+Dpatch).
    pub fn optimizers(&self) -> (&Adam, &Adam) {
        (&self.opt_g, &self.opt_d)
    }

    /// A step's loss values (refused if not finite, before any update) and the gradients of
    /// their total.
    fn finish(&self, losses: Losses) -> Result<(Terms, Gradients), TrainError> {
        let mut terms = Vec::new();
        for (name, t) in losses.terms.iter().chain(&losses.metrics) {
            let value = scalar(t);
            if !value.is_finite() {
                return Err(TrainError::NonFinite {
                    term: name.to_string(),
                    value,
                    call: self.counters.calls + 1,
                    images: self.counters.images,
                });
            }
            terms.push((*name, value));
        }
        Ok((terms, losses.total().backward()))
    }

    fn apply_d(&mut self, grads: &Gradients) {
        self.opt_d.begin_step();
        self.d = self.opt_d.update("d", self.d.clone(), grads);
        self.dpatch = self.opt_d.update("dpatch", self.dpatch.clone(), grads);
    }

    /// One optimizer call on a fresh batch: a D step (followed by the lazy R1 step on the same
    /// batch every `r1_once_every` D steps) or a G step, alternating, D first.
    ///
    /// # Errors
    /// Data errors, and [`TrainError::NonFinite`] before a non-finite update is applied.
    pub fn step(&mut self) -> Result<StepReport, TrainError> {
        let batch = self.loader.next_batch()?;
        self.skipped_total += batch.skipped.len() as u64;
        let real = Tensor::<4>::from_data(TensorData::new(batch.images, batch.shape), &self.device);
        let (cfg, sampler) = (&self.opts.losses, &self.sampler);
        let is_d = self.counters.calls.is_multiple_of(2);
        let mut terms;
        if is_d {
            let losses =
                discriminator_losses(nets!(self), real.clone(), cfg, sampler, &mut self.rnd)?;
            let (t, grads) = self.finish(losses)?;
            terms = t;
            self.apply_d(&grads);
            self.counters.d_steps += 1;
            let every = self.opts.losses.r1_once_every as u64;
            if self.counters.d_steps.is_multiple_of(every) {
                let (cfg, sampler) = (&self.opts.losses, &self.sampler);
                let losses = r1_losses(nets!(self), real, cfg, sampler, &mut self.rnd)?;
                let (t, grads) = self.finish(losses)?;
                terms.extend(t);
                self.apply_d(&grads);
                self.counters.r1_steps += 1;
            }
        } else {
            let losses = generator_losses(nets!(self), real, cfg, sampler, &mut self.rnd)?;
            let (t, grads) = self.finish(losses)?;
            terms = t;
            self.opt_g.begin_step();
            self.g = self.opt_g.update("g", self.g.clone(), &grads);
            self.e = self.opt_g.update("e", self.e.clone(), &grads);
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
        let state = TrainState {
            run_id: self.opts.run_id.clone(),
            counters: self.counters.clone(),
            opt_g_steps: self.opt_g.steps(),
            opt_d_steps: self.opt_d.steps(),
            randomness: self.rnd.clone(),
            loader: self.loader.state(),
            elapsed_s: self.elapsed(),
        };
        let model = SwappingAutoencoder {
            e: self.e.clone(),
            g: self.g.clone(),
            d: Some(self.d.clone()),
            dpatch: Some(self.dpatch.clone()),
        };
        checkpoint::save(
            &path,
            &model,
            &self.opts.model,
            [("opt_g", &self.opt_g), ("opt_d", &self.opt_d)],
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
        let real = match &self.snapshot_real {
            Some(t) => t.clone(),
            None => {
                let t = snapshot::snapshot_batch(&self.opts, self.dataset.as_ref(), &self.device)?;
                self.snapshot_real = Some(t.clone());
                t
            }
        };
        let grid = snapshot::snapshot_grid(&self.e.clone().valid(), &self.g.clone().valid(), real)?;
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

fn scalar(t: &Tensor<1>) -> f32 {
    t.clone()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or(f32::NAN)
}
