//! The resolved training options (written to `options.json` in the run directory), built from a
//! row of the preset table ([`crate::presets`]) and the command line.

use std::path::PathBuf;

use sae_data::{DataError, Preprocessing, TrainTransform};
use sae_model::{
    DiscriminatorConfig, ModelConfig, PatchDiscriminatorConfig, SwappingAutoencoderConfig,
};
use sae_nn::PatchSamplerConfig;
use serde::{Deserialize, Serialize};

use crate::adam::AdamConfig;
use crate::losses::LossConfig;
use crate::presets::{PresetNetworks, TrainPreset, find_preset};
use crate::trainer::TrainError;

/// Where the images come from and how they are prepared (`data/base_dataset.py::get_transform`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataOptions {
    /// An image folder, a `.zip` of images, or an LMDB folder (holding `data.mdb`).
    pub path: PathBuf,
    /// The official `--preprocess`, e.g. `scale_shortside_and_crop` (stored as that string).
    pub preprocess: Preprocessing,
    /// `--load_size`.
    pub load_size: usize,
    /// `--crop_size` (also D's input size).
    pub crop_size: usize,
    /// Random horizontal flips (`not --no_flip`).
    pub flip: bool,
    /// Decoding threads.
    pub workers: usize,
    /// Batches decoded ahead.
    pub prefetch: usize,
}

/// When things happen, counted in images seen (D and G steps alike, as the official
/// `steps_so_far`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleOptions {
    /// Stop after this many images.
    pub total_images: u64,
    /// One `stats.jsonl` line (and one log line) per this many images (official `print_freq`).
    pub log_every: u64,
    /// One snapshot grid per this many images (official `display_freq` is 1600; the presets
    /// use a larger value because every snapshot costs a forward pass).
    pub snapshot_every: u64,
    /// One checkpoint per this many images (official `save_freq`).
    pub checkpoint_every: u64,
    /// Checkpoints kept (older ones are deleted).
    pub keep_checkpoints: usize,
    /// Also checkpoint when this many seconds have passed since the last checkpoint (0: only
    /// by images), so that a crash loses at most this much work however slow the steps are.
    #[serde(default = "default_checkpoint_every_s")]
    pub checkpoint_every_s: u64,
}

/// The most loader threads.
pub const MAX_WORKERS: usize = 256;

/// The most batches decoded ahead.
pub const MAX_PREFETCH: usize = 64;

/// The largest `load_size` and `crop_size` (8192 px, 8× the largest official crop).
pub const MAX_SIDE: usize = 8192;

/// Ten minutes: a crash of a long run loses at most that much training.
pub const DEFAULT_CHECKPOINT_EVERY_S: u64 = 600;

fn default_checkpoint_every_s() -> u64 {
    DEFAULT_CHECKPOINT_EVERY_S
}

/// `LossConfig`'s derived deserializer requires every field, and Burn's `Config` derive passes
/// on no `#[serde(default)]`: the fields added after runs were already written are filled in
/// here with the value that gives the training those runs had, so their `options.json` still
/// resumes.
fn losses_with_defaults<'de, D: serde::Deserializer<'de>>(d: D) -> Result<LossConfig, D::Error> {
    let mut v = serde_json::Value::deserialize(d)?;
    if let Some(fields) = v.as_object_mut() {
        fields
            .entry("structure_colour_jitter")
            .or_insert(false.into());
    }
    LossConfig::deserialize(v).map_err(serde::de::Error::custom)
}

/// Everything that defines a training run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOptions {
    /// The run's identity, drawn when the run starts and stored in every checkpoint, so a
    /// checkpoint of another run is never resumed (empty: not started yet, or a run from before
    /// run ids).
    #[serde(default)]
    pub run_id: String,
    /// The preset the options started from.
    pub preset: String,
    /// Every network's explicit configuration.
    pub model: ModelConfig,
    /// Loss weights, R1 schedule, aggregation and per-GPU chunking.
    #[serde(deserialize_with = "losses_with_defaults")]
    pub losses: LossConfig,
    /// The E+G Adam (D's is derived with [`AdamConfig::lazy`]).
    pub adam: AdamConfig,
    /// The co-occurrence crops.
    pub patch: PatchSamplerConfig,
    /// Images per optimizer call (the official total batch).
    pub batch_size: usize,
    /// Seed of the data order, the crops and the noise.
    pub seed: u64,
    /// Data.
    pub data: DataOptions,
    /// Logging, snapshots, checkpoints, length.
    pub schedule: ScheduleOptions,
}

/// A small configuration for tests: 64-px images, an 8×8×8 structure code, a 128-d texture
/// code, 32-px patches and narrow networks (about 0.6 M parameters in all).
pub fn tiny_model() -> ModelConfig {
    small_model(64, 8)
}

/// The CPU quickstart's model: [`tiny_model`]'s widths at 32 px, with an 8×8 structure code of
/// only **2** channels and 16-px patches.
///
/// The narrow structure code is a bottleneck for colour: after normalisation each position
/// holds one angle, enough for the layout but not for three RGB colours, so a model trained
/// for a few CPU minutes must carry the colours in the texture code. (With 8 channels the
/// reconstruction loss puts layout *and* colour in the structure code long before the
/// co-occurrence loss can pull the colours out.)
pub fn quickstart_model() -> ModelConfig {
    small_model(32, 2)
}

/// `size`-px images, an 8×8 structure code of `spatial_code_ch` channels, a 128-d texture code,
/// `size / 2`-px patches; D and Dpatch have 16 channels after `from_rgb` and 32 in every block
/// down to 4×4.
pub fn small_model(size: usize, spatial_code_ch: usize) -> ModelConfig {
    let levels = |side: usize| (side / 4).trailing_zeros() as usize;
    let widths = |side: usize| {
        let mut c = vec![16];
        c.extend(std::iter::repeat_n(32, levels(side)));
        c
    };
    let base = SwappingAutoencoderConfig::new()
        .with_global_code_ch(128)
        .with_spatial_code_ch(spatial_code_ch)
        .with_net_e_num_downsampling_sp(levels(size) - 1)
        .with_net_e_scale_capacity(0.125)
        .with_net_g_scale_capacity(0.0625)
        .with_crop_size(size)
        .with_patch_size(size / 2);
    ModelConfig {
        encoder: base.encoder(),
        generator: base.generator(),
        discriminator: Some(DiscriminatorConfig::new(widths(size), 4)),
        patch_discriminator: Some(
            PatchDiscriminatorConfig::new(widths(size / 2)).with_pair_hidden(vec![128, 128, 64]),
        ),
    }
}

impl TrainOptions {
    /// The options of the training preset `name` (see [`crate::TRAIN_PRESETS`]) on the data at `path`,
    /// or `None` for an unknown name.
    pub fn preset(name: &str, path: PathBuf) -> Option<TrainOptions> {
        find_preset(name).map(|p| Self::from_preset(p, path))
    }

    /// The options of a preset row on the data at `path`.
    pub fn from_preset(p: &TrainPreset, path: PathBuf) -> TrainOptions {
        let (model, patch_size) = match p.networks {
            PresetNetworks::Official(preset) => {
                let cfg = preset.config();
                (ModelConfig::from(&cfg), cfg.patch_size)
            }
            PresetNetworks::Small {
                size,
                spatial_code_ch,
            } => (small_model(size, spatial_code_ch), size / 2),
        };
        TrainOptions {
            run_id: String::new(),
            preset: p.name.to_string(),
            model,
            losses: LossConfig::new()
                .with_num_gpus(p.num_gpus)
                .with_patch_use_aggregation(p.patch_use_aggregation)
                .with_lambda_l1(p.lambda_l1)
                .with_lambda_patch_gan(p.lambda_patch_gan)
                .with_lambda_patch_r1(p.lambda_patch_r1),
            adam: AdamConfig::new().with_lr(p.lr),
            patch: PatchSamplerConfig::new().with_patch_size(p.patch_size.unwrap_or(patch_size)),
            batch_size: p.batch_size,
            seed: 0,
            data: DataOptions {
                path,
                preprocess: p.preprocess,
                load_size: p.load_size,
                crop_size: p.crop_size,
                flip: true,
                workers: p.workers,
                prefetch: 2,
            },
            schedule: ScheduleOptions {
                total_images: p.total_images,
                log_every: p.log_every,
                snapshot_every: p.snapshot_every,
                checkpoint_every: p.checkpoint_every,
                keep_checkpoints: p.keep_checkpoints,
                checkpoint_every_s: DEFAULT_CHECKPOINT_EVERY_S,
            },
        }
    }
}

impl DataOptions {
    /// The training transform these options describe.
    ///
    /// # Errors
    /// [`DataError::BadConfig`] if a size the preprocessing uses is zero.
    pub fn transform(&self) -> Result<TrainTransform, DataError> {
        TrainTransform::from_preprocessing(
            self.preprocess,
            self.load_size,
            self.crop_size,
            self.flip,
        )
    }
}

/// Validates options before anything is created, naming the command-line flag (or the
/// `options.json` field) at fault.
///
/// # Errors
/// [`TrainError::Option`] naming the flag or field.
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
    if opts.losses.num_gpus == 0 || opts.losses.check_batch(b).is_err() {
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
    if opts.data.workers == 0 || opts.data.workers > MAX_WORKERS {
        return bad(
            "--workers",
            format!(
                "must be between 1 and {MAX_WORKERS}, got {}",
                opts.data.workers
            ),
        );
    }
    if opts.data.prefetch == 0 || opts.data.prefetch > MAX_PREFETCH {
        return bad(
            "prefetch",
            format!(
                "must be between 1 and {MAX_PREFETCH} batches, got {}",
                opts.data.prefetch
            ),
        );
    }
    for (name, side) in [
        ("load_size", opts.data.load_size),
        ("crop_size", opts.data.crop_size),
    ] {
        if side > MAX_SIDE {
            return bad(name, format!("{side} px is above the limit of {MAX_SIDE}"));
        }
    }
    let pre = opts.data.preprocess;
    let crop = opts.data.crop_size;
    if pre.resize != sae_data::ResizeMode::None && opts.data.load_size < crop {
        return bad(
            "load_size",
            format!(
                "{} px is smaller than crop_size {crop}: the resized images could not give \
                 {crop}-px crops",
                opts.data.load_size
            ),
        );
    }
    if pre.resize == sae_data::ResizeMode::Resize
        && pre.crop == sae_data::CropMode::None
        && opts.data.load_size != crop
    {
        return bad(
            "load_size",
            format!(
                "`resize` without a crop gives {0}x{0} images, but the networks take {crop} px",
                opts.data.load_size
            ),
        );
    }
    if opts.patch.num_crops == 0 || opts.patch.num_crops > MAX_PREFETCH {
        return bad(
            "num_crops",
            format!(
                "must be between 1 and {MAX_PREFETCH}, got {}",
                opts.patch.num_crops
            ),
        );
    }
    if opts.patch.patch_size == 0 || opts.patch.patch_size > crop {
        return bad(
            "patch_size",
            format!(
                "{} px must be between 1 and crop_size {crop}",
                opts.patch.patch_size
            ),
        );
    }
    let Some(d) = opts.model.discriminator.as_ref() else {
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
    if let Err(e) = opts.model.validate() {
        return bad(&format!("model.{}", e.field), e.problem);
    }
    opts.patch.init().map_err(|e| TrainError::Option {
        option: "patch".into(),
        problem: e.to_string(),
    })?;
    opts.data.transform()?;
    Ok(())
}
