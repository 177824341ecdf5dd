//! The resolved training options (written to `options.json` in the run directory) and the
//! training presets: the official launchers (spec 6) plus `tiny`.

use std::path::PathBuf;

use sae_model::{
    DiscriminatorConfig, ModelConfig, PatchDiscriminatorConfig, Preset, SwappingAutoencoderConfig,
};
use sae_nn::PatchSamplerConfig;
use serde::{Deserialize, Serialize};

use crate::adam::AdamConfig;
use crate::losses::LossConfig;

/// Where the images come from and how they are prepared (spec 10.5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataOptions {
    /// An image folder, a `.zip` of images, or an LMDB folder (holding `data.mdb`).
    pub path: PathBuf,
    /// The official `--preprocess` string, e.g. `scale_shortside_and_crop`.
    pub preprocess: String,
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
}

/// Everything that defines a training run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOptions {
    /// The preset the options started from.
    pub preset: String,
    /// Every network's explicit configuration.
    pub model: ModelConfig,
    /// Loss weights, R1 schedule, aggregation and per-GPU chunking.
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

/// The training presets' names, in `--help` order.
pub const TRAIN_PRESETS: [&str; 10] = [
    "tiny",
    "quickstart",
    "church256",
    "bedroom256",
    "ffhq512",
    "ffhq1024",
    "ffhq1024-small-structure",
    "mountain512",
    "afhq256",
    "default",
];

/// Official images per run (spec 8.5).
pub const OFFICIAL_TOTAL_IMAGES: u64 = 25_000_000;

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
fn small_model(size: usize, spatial_code_ch: usize) -> ModelConfig {
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
    /// The options of a training preset (see [`TRAIN_PRESETS`]) on the data at `path`, or
    /// `None` for an unknown name.
    ///
    /// The official presets follow their `_default` launchers (spec 6): batch, GPU count (as
    /// chunks), preprocessing and loss options; `church256` and `bedroom256` train without
    /// patch aggregation as `church_default` / `bedroom_default` do.
    pub fn preset(name: &str, path: PathBuf) -> Option<TrainOptions> {
        let official = |p: Preset,
                        batch: usize,
                        gpus: usize,
                        pre: &str,
                        load: usize,
                        crop: usize,
                        aggregation: bool,
                        patch_r1: f64| {
            let cfg = p.config();
            TrainOptions {
                preset: name.to_string(),
                model: ModelConfig::from(&cfg),
                losses: LossConfig::new()
                    .with_num_gpus(gpus)
                    .with_patch_use_aggregation(aggregation)
                    .with_lambda_patch_r1(patch_r1),
                adam: AdamConfig::new(),
                patch: PatchSamplerConfig::new().with_patch_size(cfg.patch_size),
                batch_size: batch,
                seed: 0,
                data: DataOptions {
                    path: path.clone(),
                    preprocess: pre.to_string(),
                    load_size: load,
                    crop_size: crop,
                    flip: true,
                    workers: 2,
                    prefetch: 2,
                },
                schedule: ScheduleOptions {
                    total_images: OFFICIAL_TOTAL_IMAGES,
                    log_every: 480,
                    snapshot_every: 50_000,
                    checkpoint_every: 50_000,
                    keep_checkpoints: 3,
                },
            }
        };
        // Our small CPU presets: the default launcher's losses at `size` px, batch 8, one
        // loader worker, half-size patches, snapshots and checkpoints every 4000 images.
        let small = |model: ModelConfig,
                     size: usize,
                     total_images: u64,
                     log_every: u64,
                     keep_checkpoints: usize| {
            let mut o = official(Preset::Default, 8, 1, "resize", size, size, true, 1.0);
            o.model = model;
            o.patch = PatchSamplerConfig::new().with_patch_size(size / 2);
            o.data.workers = 1;
            o.schedule = ScheduleOptions {
                total_images,
                log_every,
                snapshot_every: 4_000,
                checkpoint_every: 4_000,
                keep_checkpoints,
            };
            o
        };
        let shortside = "scale_shortside_and_crop";
        let opts = match name {
            "church256" => official(Preset::Church256, 16, 4, shortside, 256, 256, false, 1.0),
            "bedroom256" => official(Preset::Bedroom256, 32, 8, shortside, 256, 256, false, 1.0),
            "ffhq512" => official(Preset::Ffhq512, 16, 8, "resize", 512, 512, true, 1.0),
            "ffhq1024" => official(
                Preset::Ffhq1024,
                16,
                8,
                "resize_and_crop",
                1024,
                768,
                true,
                1.0,
            ),
            "ffhq1024-small-structure" => official(
                Preset::Ffhq1024SmallStructure,
                16,
                8,
                "resize_and_crop",
                1024,
                768,
                true,
                1.0,
            ),
            "mountain512" => official(Preset::Mountain512, 16, 8, shortside, 512, 512, true, 10.0),
            "afhq256" => official(Preset::Afhq256, 32, 8, "resize", 256, 256, true, 1.0),
            "default" => official(
                Preset::Default,
                16,
                1,
                "scale_width_and_crop",
                256,
                256,
                true,
                1.0,
            ),
            "tiny" => small(tiny_model(), 64, 20_000, 256, 3),
            "quickstart" => {
                // Not an official recipe: what made structure and texture separate within a
                // few CPU minutes (see `quickstart_model`). The reconstruction term is 10× the
                // official weight, so that the autoencoder reconstructs within a few hundred
                // steps; the co-occurrence terms (both Dpatch's and G's, as `lambda_PatchGAN`
                // scales both) are 5×, so that the colours still move into the texture code
                // instead of riding along with the layout; the learning rate is 5× (0.01), which
                // gave the clearest grids in 1500 calls among 0.002, 0.004, 0.005 and 0.01.
                let mut o = small(quickstart_model(), 32, 12_000, 400, 2);
                o.losses = o.losses.with_lambda_l1(10.0).with_lambda_patch_gan(5.0);
                o.adam = o.adam.with_lr(0.01);
                o
            }
            _ => return None,
        };
        Some(opts)
    }
}
