//! The training loop (spec 8.5) with a run directory in the style of StyleGAN2-ADA:
//!
//! ```text
//! RUN_DIR/
//!   options.json                     the resolved options, written before the first step
//!   stats.jsonl                      one JSON line per logging interval
//!   snapshots/snapshot-<images>.png  real | reconstruction | swap, one column per image
//!   checkpoints/checkpoint-<images>.safetensors
//! ```
//!
//! A checkpoint is a native model file (`sae swap` reads it) plus the two Adam states, every
//! counter, the crop/noise RNG and the data loader's position, written atomically (temporary
//! file + rename). Resuming from it continues bit for bit: the same batches, crops, noise and
//! updates as an uninterrupted run.

use std::collections::BTreeMap;
use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use sae_model::image_io::{self, ImageTensor, RgbImage};
use sae_model::native::{NativeError, read_native_extras, save_native_with_extras};
use sae_model::{
    Discriminator, Encoder, Generator, GeneratorNoise, PatchDiscriminator, SwappingAutoencoder,
};
use sae_nn::{NoiseRng, PatchSampler, Style, param_shapes};
use serde::{Deserialize, Serialize};

use crate::adam::{Adam, AdamStateError};
use crate::data::{
    Augment, DataError, Dataset, Loader, LoaderConfig, LoaderState, TrainTransform, open_dataset,
};
use crate::losses::{
    LossError, Losses, Nets, SeededRandomness, discriminator_losses, generator_losses, r1_losses,
};
use crate::options::TrainOptions;

/// Everything that stops a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An option is invalid; `option` names it as the command line spells it.
    #[error("{option}: {problem}")]
    Option {
        /// The flag or field, e.g. `--batch`.
        option: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The data could not be opened or read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A step refused its batch.
    #[error(transparent)]
    Loss(#[from] LossError),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] NativeError),
    /// A checkpoint's optimizer state does not fit the model.
    #[error("{path}: {source}")]
    OptimizerState {
        /// The checkpoint.
        path: PathBuf,
        /// What is wrong.
        source: AdamStateError,
    },
    /// A checkpoint or options file is not what this version writes.
    #[error("{path}: {problem}")]
    BadRunFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A loss became NaN or infinite; the step was not applied.
    #[error(
        "loss term {term} is {value} at optimizer call {call} ({images} images seen); the update was not applied, the last checkpoint is the last good state"
    )]
    NonFinite {
        /// The official name of the term.
        term: String,
        /// Its value.
        value: f32,
        /// The optimizer call (1-based) that produced it.
        call: u64,
        /// Images seen before the call.
        images: u64,
    },
    /// A run directory problem (exists without `--resume`, or has no checkpoint to resume).
    #[error("{dir}: {problem}")]
    RunDir {
        /// The run directory.
        dir: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The file system said no.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The counters of spec 8.5.
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

/// What a checkpoint stores besides tensors (JSON metadata `train_state`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct TrainState {
    counters: Counters,
    opt_g_steps: u64,
    opt_d_steps: u64,
    randomness: SeededRandomness,
    loader: LoaderState,
    /// Seconds of training before this checkpoint (for the rate over a resumed run).
    elapsed_s: f64,
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
    /// The stop flag was raised (Ctrl-C); the last step was finished and checkpointed.
    Interrupted,
}

/// A training run: the four networks, both optimizers, the counters and the data.
pub struct Trainer {
    opts: TrainOptions,
    run_dir: PathBuf,
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
    snapshot_real: Option<Tensor<4>>,
    stats: StatsWindow,
    skipped_total: u64,
}

const CHECKPOINT_PREFIX: &str = "checkpoint-";
const CHECKPOINT_SUFFIX: &str = ".safetensors";

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

/// The signature shared by the three step losses of [`crate::losses`].
type StepLoss = fn(
    Nets<'_>,
    Tensor<4>,
    &crate::losses::LossConfig,
    &PatchSampler,
    &mut dyn crate::losses::Randomness,
) -> Result<Losses, LossError>;

/// Validates options before anything is created, naming the command-line flag at fault.
pub fn validate(opts: &TrainOptions) -> Result<(), TrainError> {
    let bad = |option: &str, problem: String| {
        Err(TrainError::Option {
            option: option.to_string(),
            problem,
        })
    };
    let b = opts.batch_size;
    if b == 0 || !b.is_multiple_of(2) {
        return bad(
            "--batch",
            format!("must be even and positive (swap pairs neighbours), got {b}"),
        );
    }
    if opts.losses.check_batch(b).is_err() {
        return bad(
            "--num-gpus",
            format!(
                "{} chunks of a batch of {b}: each chunk must hold an even number of images",
                opts.losses.num_gpus
            ),
        );
    }
    if opts.losses.r1_once_every == 0 {
        return bad("r1_once_every", "must be at least 1".into());
    }
    if opts.schedule.total_images == 0 {
        return bad(
            "--steps/--kimg",
            "the run must train at least one step".into(),
        );
    }
    for (name, v) in [
        ("log_every", opts.schedule.log_every),
        ("snapshot_every", opts.schedule.snapshot_every),
        ("checkpoint_every", opts.schedule.checkpoint_every),
    ] {
        if v == 0 {
            return bad(name, "must be positive".into());
        }
    }
    if opts.schedule.keep_checkpoints == 0 {
        return bad("keep_checkpoints", "must keep at least one".into());
    }
    if opts.data.workers == 0 {
        return bad("--workers", "needs at least one worker".into());
    }
    let d = opts.model.discriminator.as_ref();
    let Some(d) = d else {
        return bad(
            "model",
            "training needs a discriminator configuration".into(),
        );
    };
    if opts.model.patch_discriminator.is_none() {
        return bad(
            "model",
            "training needs a patch discriminator configuration".into(),
        );
    }
    let expected = d.input_size();
    if opts.data.crop_size != expected {
        return bad(
            "crop_size",
            format!(
                "the discriminator takes {expected}-px images, the data gives {}",
                opts.data.crop_size
            ),
        );
    }
    let smallest = opts.model.encoder.min_input_size();
    if opts.data.crop_size < smallest {
        return bad(
            "crop_size",
            format!(
                "the encoder's texture branch needs images of at least {smallest} px, the data \
                 gives {}",
                opts.data.crop_size
            ),
        );
    }
    opts.patch.init().map_err(|e| TrainError::Option {
        option: "patch".into(),
        problem: e.to_string(),
    })?;
    TrainTransform::new(
        &opts.data.preprocess,
        opts.data.load_size,
        opts.data.crop_size,
        opts.data.flip,
    )?;
    Ok(())
}

fn checkpoint_name(images: u64) -> String {
    format!("{CHECKPOINT_PREFIX}{images:012}{CHECKPOINT_SUFFIX}")
}

/// The checkpoints of a run, oldest first, by the image count in their names (temporary files
/// of interrupted writes are not matched).
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    let dir = run_dir.join("checkpoints");
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let images = name
            .strip_prefix(CHECKPOINT_PREFIX)
            .and_then(|r| r.strip_suffix(CHECKPOINT_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(images) = images {
            out.push((images, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

impl Trainer {
    /// Starts a new run in `run_dir` (which must not hold a run yet): validates the options,
    /// opens the data, builds the networks and writes `options.json`.
    ///
    /// # Errors
    /// Invalid options (naming the flag), unreadable or empty data, an existing run.
    pub fn new(opts: TrainOptions, run_dir: &Path, device: &Device) -> Result<Self, TrainError> {
        validate(&opts)?;
        let options_path = run_dir.join("options.json");
        if options_path.exists() {
            return Err(TrainError::RunDir {
                dir: run_dir.to_path_buf(),
                problem: "already holds a run (options.json); pass --resume to continue it or choose another --out".into(),
            });
        }
        let dataset = open_dataset(&opts.data.path)?;
        fs::create_dir_all(run_dir).map_err(io_err(run_dir))?;
        let json = serde_json::to_string_pretty(&opts).expect("options serialise");
        sae_model::native::write_atomic(&options_path, json.as_bytes())?;
        let device = device.clone().autodiff();
        let model = init_seeded(&opts, &device);
        let state = TrainState {
            counters: Counters::default(),
            opt_g_steps: 0,
            opt_d_steps: 0,
            randomness: SeededRandomness::seed(opts.seed),
            loader: LoaderState {
                epoch: 0,
                cursor: 0,
                skipped: 0,
            },
            elapsed_s: 0.0,
        };
        Self::assemble(opts, run_dir, device, model, state, dataset, None)
    }

    /// Continues the run in `run_dir` from its newest checkpoint. `total_images`, when given,
    /// replaces the schedule's length (to train longer than first planned).
    ///
    /// # Errors
    /// No run or no checkpoint in `run_dir`, a checkpoint that does not fit the options, or
    /// unreadable data.
    pub fn resume(
        run_dir: &Path,
        device: &Device,
        total_images: Option<u64>,
    ) -> Result<Self, TrainError> {
        let options_path = run_dir.join("options.json");
        let text = fs::read_to_string(&options_path).map_err(|e| TrainError::RunDir {
            dir: run_dir.to_path_buf(),
            problem: format!("no run to resume (options.json: {e})"),
        })?;
        let mut opts: TrainOptions =
            serde_json::from_str(&text).map_err(|e| TrainError::BadRunFile {
                path: options_path.clone(),
                problem: e.to_string(),
            })?;
        if let Some(total) = total_images {
            opts.schedule.total_images = total;
        }
        validate(&opts)?;
        let Some((_, path)) = list_checkpoints(run_dir)?.pop() else {
            return Err(TrainError::RunDir {
                dir: run_dir.to_path_buf(),
                problem: "has no checkpoint to resume from".into(),
            });
        };
        let device = device.clone().autodiff();
        let (model, config) = sae_model::native::load_native(&path, &device)?;
        if config != opts.model {
            return Err(TrainError::BadRunFile {
                path,
                problem: "the checkpoint's model configuration differs from options.json".into(),
            });
        }
        let (extras, meta) = read_native_extras(&path)?;
        let bad = |problem: String| TrainError::BadRunFile {
            path: path.clone(),
            problem,
        };
        let state: TrainState = meta
            .get("train_state")
            .ok_or_else(|| bad("no `train_state` metadata: not a training checkpoint".into()))
            .and_then(|s| serde_json::from_str(s).map_err(|e| bad(format!("train_state: {e}"))))?;
        let split = |prefix: &str| -> BTreeMap<String, TensorData> {
            extras
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone())))
                .collect()
        };
        let opt_err = |source| TrainError::OptimizerState {
            path: path.clone(),
            source,
        };
        let opt_g = Adam::from_state(
            opts.adam.clone(),
            state.opt_g_steps,
            &split("opt_g."),
            &device,
        )
        .map_err(opt_err)?;
        let opt_d = Adam::from_state(
            opts.adam.lazy(opts.losses.r1_once_every),
            state.opt_d_steps,
            &split("opt_d."),
            &device,
        )
        .map_err(opt_err)?;
        let dataset = open_dataset(&opts.data.path)?;
        let trainer = Self::assemble(
            opts,
            run_dir,
            device,
            model,
            state,
            dataset,
            Some((opt_g, opt_d)),
        )?;
        let g_keys = trainer.g_param_sizes();
        let d_keys = trainer.d_param_sizes();
        trainer.opt_g.check_covers(&g_keys).map_err(opt_err)?;
        trainer.opt_d.check_covers(&d_keys).map_err(opt_err)?;
        Ok(trainer)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        opts: TrainOptions,
        run_dir: &Path,
        device: Device,
        model: SwappingAutoencoder,
        state: TrainState,
        dataset: Arc<dyn Dataset>,
        optimizers: Option<(Adam, Adam)>,
    ) -> Result<Self, TrainError> {
        let transform = TrainTransform::new(
            &opts.data.preprocess,
            opts.data.load_size,
            opts.data.crop_size,
            opts.data.flip,
        )?;
        let loader = Loader::new(
            dataset.clone(),
            LoaderConfig {
                batch_size: opts.batch_size,
                workers: opts.data.workers,
                prefetch: opts.data.prefetch,
                seed: opts.seed,
                transform,
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
            run_dir: run_dir.to_path_buf(),
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
            snapshot_real: None,
            stats: StatsWindow::default(),
            skipped_total,
            opts,
        })
    }

    fn g_param_sizes(&self) -> Vec<(String, usize)> {
        let mut out = sizes("g", &self.g);
        out.extend(sizes("e", &self.e));
        out
    }

    fn d_param_sizes(&self) -> Vec<(String, usize)> {
        let mut out = sizes("d", &self.d);
        out.extend(sizes("dpatch", &self.dpatch));
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

    fn check_finite(&self, losses: &Losses) -> Result<Vec<(&'static str, f32)>, TrainError> {
        let mut out = Vec::new();
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
            out.push((*name, value));
        }
        Ok(out)
    }

    /// One optimizer call on a fresh batch: a D step (followed by the lazy R1 step on the same
    /// batch every `r1_once_every` D steps) or a G step, alternating, D first (spec 8.5).
    ///
    /// # Errors
    /// Data errors, and [`TrainError::NonFinite`] before a non-finite update is applied.
    pub fn step(&mut self) -> Result<StepReport, TrainError> {
        let batch = self.loader.next_batch()?;
        self.skipped_total += batch.skipped.len() as u64;
        let real = Tensor::<4>::from_data(TensorData::new(batch.images, batch.shape), &self.device);
        let is_d = self.counters.calls.is_multiple_of(2);
        let mut terms;
        if is_d {
            let (t, grads) = self.evaluate(discriminator_losses, real.clone())?;
            terms = t;
            self.apply_d(&grads);
            self.counters.d_steps += 1;
            if self
                .counters
                .d_steps
                .is_multiple_of(self.opts.losses.r1_once_every as u64)
            {
                let (t, grads) = self.evaluate(r1_losses, real)?;
                terms.extend(t);
                self.apply_d(&grads);
                self.counters.r1_steps += 1;
            }
        } else {
            let (t, grads) = self.evaluate(generator_losses, real)?;
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

    /// One step's losses on `real`: their values (refused if not finite, before any update)
    /// and the gradients of their total.
    fn evaluate(
        &mut self,
        loss: StepLoss,
        real: Tensor<4>,
    ) -> Result<(Terms, Gradients), TrainError> {
        let losses = loss(
            nets!(self),
            real,
            &self.opts.losses,
            &self.sampler,
            &mut self.rnd,
        )?;
        let terms = self.check_finite(&losses)?;
        Ok((terms, losses.total().backward()))
    }

    fn apply_d(&mut self, grads: &Gradients) {
        self.opt_d.begin_step();
        self.d = self.opt_d.update("d", self.d.clone(), grads);
        self.dpatch = self.opt_d.update("dpatch", self.dpatch.clone(), grads);
    }

    fn elapsed(&self) -> f64 {
        self.elapsed_before + self.started.elapsed().as_secs_f64()
    }

    /// Writes a checkpoint for the current state (atomically) and deletes the oldest beyond
    /// `keep_checkpoints`. Returns its path.
    ///
    /// # Errors
    /// File-system errors.
    pub fn save_checkpoint(&self) -> Result<PathBuf, TrainError> {
        let dir = self.run_dir.join("checkpoints");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(checkpoint_name(self.counters.images));
        let mut extras = BTreeMap::new();
        for (k, v) in self.opt_g.state_tensors() {
            extras.insert(format!("opt_g.{k}"), v);
        }
        for (k, v) in self.opt_d.state_tensors() {
            extras.insert(format!("opt_d.{k}"), v);
        }
        let state = TrainState {
            counters: self.counters.clone(),
            opt_g_steps: self.opt_g.steps(),
            opt_d_steps: self.opt_d.steps(),
            randomness: self.rnd.clone(),
            loader: self.loader.state(),
            elapsed_s: self.elapsed(),
        };
        let mut meta = BTreeMap::new();
        meta.insert(
            "train_state".to_string(),
            serde_json::to_string(&state).expect("state serialises"),
        );
        let model = SwappingAutoencoder {
            e: self.e.clone(),
            g: self.g.clone(),
            d: Some(self.d.clone()),
            dpatch: Some(self.dpatch.clone()),
        };
        save_native_with_extras(&model, &self.opts.model, &path, &extras, &meta)?;
        let all = list_checkpoints(&self.run_dir)?;
        let excess = all
            .len()
            .saturating_sub(self.opts.schedule.keep_checkpoints);
        for (_, old) in all.into_iter().take(excess) {
            fs::remove_file(&old).map_err(io_err(&old))?;
        }
        Ok(path)
    }

    /// The fixed images of the snapshot grids: the first images of the dataset (in key order,
    /// up to 8 and at most the batch size), centre-cropped, unflipped.
    fn snapshot_batch(&mut self) -> Result<Tensor<4>, TrainError> {
        if let Some(t) = &self.snapshot_real {
            return Ok(t.clone());
        }
        let want = self.opts.batch_size.min(8);
        let transform = TrainTransform::new(
            &self.opts.data.preprocess,
            self.opts.data.load_size,
            self.opts.data.crop_size,
            false,
        )?;
        let mut images: Vec<ImageTensor> = Vec::new();
        for i in 0..self.dataset.len() {
            if images.len() == want {
                break;
            }
            let key = self.dataset.key(i);
            let Ok(img) = self.dataset.decode(i) else {
                continue;
            };
            let (w, h) = transform.resized_size(img.width() as usize, img.height() as usize);
            let c = self.opts.data.crop_size;
            let aug = Augment {
                crop_x: w.saturating_sub(c) / 2,
                crop_y: h.saturating_sub(c) / 2,
                flip: false,
            };
            if let Ok(t) = transform.apply_with(&img, aug, &key) {
                images.push(t);
            }
        }
        if images.len() < 2 {
            return Err(TrainError::Data(DataError::Empty {
                path: self.opts.data.path.clone(),
            }));
        }
        if !images.len().is_multiple_of(2) {
            images.pop();
        }
        let (h, w) = (images[0].height, images[0].width);
        let n = images.len();
        let data: Vec<f32> = images.into_iter().flat_map(|t| t.data).collect();
        let t = Tensor::<4>::from_data(TensorData::new(data, [n, 3, h, w]), &self.device).inner();
        self.snapshot_real = Some(t.clone());
        Ok(t)
    }

    /// Writes `snapshots/snapshot-<images>.png`: rows real, reconstruction, swap (structure of
    /// the neighbour, own texture, as the training swap), with a fixed noise seed.
    ///
    /// # Errors
    /// Data or file-system errors.
    pub fn save_snapshot(&mut self) -> Result<PathBuf, TrainError> {
        let real = self.snapshot_batch()?;
        let n = real.dims()[0];
        let e = self.e.clone().valid();
        let g = self.g.clone().valid();
        let codes = e.forward(real.clone());
        let mut rng = NoiseRng::seed(0);
        let rec = g.forward(
            codes.structure.clone(),
            Style::Global(codes.texture.clone()),
            GeneratorNoise::Random(&mut rng),
        );
        let swap_idx: Vec<i64> = (0..n as i64).map(|i| i ^ 1).collect();
        let idx = Tensor::<1, burn::tensor::Int>::from_data(
            TensorData::new(swap_idx, [n]),
            &real.device(),
        );
        let mix = g.forward(
            codes.structure.select(0, idx),
            Style::Global(codes.texture),
            GeneratorNoise::Random(&mut rng),
        );
        let rows: Vec<Vec<RgbImage>> = [real, rec, mix]
            .into_iter()
            .map(to_images)
            .collect::<Result<_, _>>()?;
        let cell = (rows[0][0].width(), rows[0][0].height());
        let refs: Vec<Vec<Option<&RgbImage>>> =
            rows.iter().map(|r| r.iter().map(Some).collect()).collect();
        let grid = image_io::grid(&refs, cell);
        let dir = self.run_dir.join("snapshots");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(format!("snapshot-{:012}.png", self.counters.images));
        image_io::save_rgb8(&grid, &path).map_err(|e| TrainError::BadRunFile {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        Ok(path)
    }

    /// Trains until the schedule's image count or until `stop` is raised (then the current
    /// step is finished and a checkpoint written). Logs to `stats.jsonl` and the terminal,
    /// writes snapshots and checkpoints on schedule, and a final checkpoint.
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
        let stats_path = self.run_dir.join("stats.jsonl");
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
                append_line(&stats_path, &line)?;
                progress.log(&line);
            }
            if crossed(self.opts.schedule.snapshot_every) {
                self.save_snapshot()?;
            }
            let stopping = stop.load(Ordering::SeqCst);
            if crossed(self.opts.schedule.checkpoint_every) || images >= total || stopping {
                let path = self.save_checkpoint()?;
                progress.log_str(&format!("checkpoint {}", path.display()));
            }
            if stopping {
                return Ok(RunEnd::Interrupted);
            }
        }
        if list_checkpoints(&self.run_dir)?
            .last()
            .is_none_or(|(i, _)| *i != self.counters.images)
        {
            self.save_checkpoint()?;
        }
        Ok(RunEnd::Finished)
    }
}

/// The initial weights, from the run's seed. Burn's device RNG may be process-global, so the
/// seeding and the draws happen under one lock: concurrent runs in one process (tests) still
/// get their seed's weights.
fn init_seeded(opts: &TrainOptions, device: &Device) -> SwappingAutoencoder {
    static INIT: Mutex<()> = Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(opts.seed);
    materialize(opts.model.init(device))
}

/// Initialises every lazily initialised parameter now, as a tracked leaf. Without this, the
/// first use of a parameter may happen through a frozen clone (`no_grad()` in the D step), and
/// the lazy value it creates would be shared, untracked, with the trainable network.
fn materialize<M: Module>(m: M) -> M {
    struct Touch;
    impl ModuleMapper for Touch {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            p.map(|t| t.detach().require_grad())
        }
    }
    m.map(&mut Touch)
}

fn sizes<M: Module>(prefix: &str, m: &M) -> Vec<(String, usize)> {
    param_shapes(m)
        .into_iter()
        .map(|(p, s)| (format!("{prefix}.{p}"), s.iter().product()))
        .collect()
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

fn to_images(t: Tensor<4>) -> Result<Vec<RgbImage>, TrainError> {
    let [n, c, h, w] = t.dims();
    let data = t
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data");
    let plane = c * h * w;
    (0..n)
        .map(|i| {
            let it = ImageTensor {
                height: h,
                width: w,
                data: data[i * plane..(i + 1) * plane].to_vec(),
            };
            image_io::to_rgb8(&it).map_err(|e| TrainError::BadRunFile {
                path: PathBuf::from("snapshot"),
                problem: e.to_string(),
            })
        })
        .collect()
}

fn append_line(path: &Path, line: &str) -> Result<(), TrainError> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    writeln!(f, "{line}").map_err(io_err(path))
}

/// Running means of every term over one logging interval.
#[derive(Default)]
struct StatsWindow {
    sums: BTreeMap<&'static str, (f64, u64)>,
    seconds: f64,
    steps: u64,
    images: u64,
}

impl StatsWindow {
    fn add(&mut self, report: &StepReport, seconds: f64, batch: u64) {
        for (name, v) in &report.terms {
            let e = self.sums.entry(name).or_default();
            e.0 += f64::from(*v);
            e.1 += 1;
        }
        self.seconds += seconds;
        self.steps += 1;
        self.images += batch;
    }

    fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.images as f64 / self.seconds
        } else {
            0.0
        }
    }

    fn flush(&mut self, c: &Counters, elapsed: f64, skipped: u64) -> String {
        let mut obj = serde_json::Map::new();
        obj.insert("images".into(), c.images.into());
        obj.insert("kimg".into(), (c.images as f64 / 1000.0).into());
        obj.insert("calls".into(), c.calls.into());
        obj.insert("d_steps".into(), c.d_steps.into());
        obj.insert("g_steps".into(), c.g_steps.into());
        obj.insert("r1_steps".into(), c.r1_steps.into());
        obj.insert("elapsed_s".into(), elapsed.into());
        obj.insert("images_per_s".into(), self.rate().into());
        let per_step = if self.steps > 0 {
            self.seconds / self.steps as f64
        } else {
            0.0
        };
        obj.insert("sec_per_step".into(), per_step.into());
        obj.insert("skipped_images".into(), skipped.into());
        for (name, (sum, n)) in &self.sums {
            obj.insert((*name).into(), (sum / *n as f64).into());
        }
        *self = StatsWindow::default();
        serde_json::Value::Object(obj).to_string()
    }
}

/// A progress bar on a terminal, plain log lines otherwise.
struct Progress {
    total: u64,
    start_images: u64,
    started: Instant,
    tty: bool,
}

impl Progress {
    fn new(total: u64, start_images: u64) -> Self {
        Self {
            total,
            start_images,
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn update(&self, images: u64, rate: f64) {
        if !self.tty {
            return;
        }
        let frac = images as f64 / self.total as f64;
        let width = 30;
        let filled = ((frac * width as f64) as usize).min(width);
        let done = images.saturating_sub(self.start_images) as f64;
        let secs = self.started.elapsed().as_secs_f64();
        let eta = if done > 0.0 {
            (self.total.saturating_sub(images)) as f64 * secs / done
        } else {
            0.0
        };
        eprint!(
            "\r[{}{}] {images}/{} images {:5.1}% {rate:7.1} img/s ETA {}   ",
            "#".repeat(filled),
            " ".repeat(width - filled),
            self.total,
            100.0 * frac,
            hms(eta)
        );
    }

    fn log(&self, line: &str) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let mut msg = format!(
            "kimg {:.2} | {:.1} img/s",
            v["kimg"].as_f64().unwrap_or(0.0),
            v["images_per_s"].as_f64().unwrap_or(0.0)
        );
        for key in [
            "G_L1",
            "G_GAN_rec",
            "G_GAN_mix",
            "G_mix",
            "D_real",
            "D_rec",
            "D_mix",
            "PatchD_real",
            "PatchD_mix",
            "D_R1",
            "PatchD_R1",
        ] {
            if let Some(x) = v[key].as_f64() {
                msg.push_str(&format!(" | {key} {x:.3}"));
            }
        }
        self.log_str(&msg);
    }

    fn log_str(&self, msg: &str) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
        eprintln!("{msg}");
    }
}

fn hms(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}
