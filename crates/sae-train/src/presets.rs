//! The training presets: one typed table, [`TRAIN_PRESETS`], read by
//! [`TrainOptions::preset`](crate::TrainOptions::preset), `sae train --preset` and its `--help`.
//!
//! The official rows follow the `_default` entries of the official launchers
//! (`experiments/{church,bedroom,ffhq,mountain}_launcher.py`; the small-structure FFHQ and AFHQ
//! rows come from `ffhq1024_pretrained_launcher.py` and `afhq_pretrained_launcher.py`, see
//! `docs/training.md`): batch, GPU count (trained here as chunks of one batch), preprocessing and
//! loss options, with the networks of [`sae_model::Preset`]. `tiny` and `quickstart` are ours,
//! for the CPU.

use sae_data::{CropMode, Preprocessing, ResizeMode};
use sae_model::Preset;

/// Which networks a preset trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PresetNetworks {
    /// The networks of an official launcher.
    Official(Preset),
    /// Our small CPU networks (see [`crate::options::small_model`]): `size`-px images, an 8×8
    /// structure code of `spatial_code_ch` channels and a 128-d texture code.
    Small {
        /// Image side.
        size: usize,
        /// Structure-code channels.
        spatial_code_ch: usize,
    },
}

/// One training preset: everything that differs between presets, by name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainPreset {
    /// The `--preset` name.
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// The networks.
    pub networks: PresetNetworks,
    /// Images per optimizer call (the official total batch).
    pub batch_size: usize,
    /// The official GPU count: the batch is split into this many chunks.
    pub num_gpus: usize,
    /// The official `--preprocess`.
    pub preprocess: Preprocessing,
    /// `--load_size`.
    pub load_size: usize,
    /// `--crop_size`.
    pub crop_size: usize,
    /// `--patch_use_aggregation`.
    pub patch_use_aggregation: bool,
    /// `--lambda_L1`.
    pub lambda_l1: f64,
    /// `--lambda_PatchGAN` (scales Dpatch's terms and G's co-occurrence term).
    pub lambda_patch_gan: f64,
    /// `--lambda_patch_R1`.
    pub lambda_patch_r1: f64,
    /// Adam's learning rate (both optimizers).
    pub lr: f64,
    /// Side of the co-occurrence patches (`None`: the networks' own `patch_size`).
    pub patch_size: Option<usize>,
    /// Image-decoding threads.
    pub workers: usize,
    /// Run length in images.
    pub total_images: u64,
    /// One stats line per this many images.
    pub log_every: u64,
    /// One snapshot per this many images.
    pub snapshot_every: u64,
    /// One checkpoint per this many images.
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
}

/// Official images per run (`--total_nimgs`, 25 M).
pub const OFFICIAL_TOTAL_IMAGES: u64 = 25_000_000;

const fn pre(resize: ResizeMode, crop: CropMode) -> Preprocessing {
    Preprocessing { resize, crop }
}

/// An official launcher's row: what every official preset shares.
const fn official(
    preset: Preset,
    batch_size: usize,
    num_gpus: usize,
    preprocess: Preprocessing,
    load_size: usize,
    crop_size: usize,
) -> TrainPreset {
    TrainPreset {
        name: preset.name(),
        about: "",
        networks: PresetNetworks::Official(preset),
        batch_size,
        num_gpus,
        preprocess,
        load_size,
        crop_size,
        patch_use_aggregation: true,
        lambda_l1: 1.0,
        lambda_patch_gan: 1.0,
        lambda_patch_r1: 1.0,
        lr: 0.002,
        patch_size: None,
        workers: 2,
        total_images: OFFICIAL_TOTAL_IMAGES,
        log_every: 480,
        snapshot_every: 50_000,
        checkpoint_every: 50_000,
        keep_checkpoints: 3,
    }
}

/// Our small CPU presets: the default launcher's losses at `size` px, batch 8, one loader
/// worker, half-size patches, snapshots and checkpoints every 4000 images.
const fn small(name: &'static str, size: usize, spatial_code_ch: usize) -> TrainPreset {
    TrainPreset {
        name,
        about: "",
        networks: PresetNetworks::Small {
            size,
            spatial_code_ch,
        },
        batch_size: 8,
        num_gpus: 1,
        preprocess: pre(ResizeMode::Resize, CropMode::None),
        load_size: size,
        crop_size: size,
        patch_size: Some(size / 2),
        workers: 1,
        snapshot_every: 4_000,
        checkpoint_every: 4_000,
        ..official(
            Preset::Default,
            8,
            1,
            pre(ResizeMode::Resize, CropMode::None),
            size,
            size,
        )
    }
}

const SHORTSIDE_CROP: Preprocessing = pre(ResizeMode::ScaleShortside, CropMode::Random);
const RESIZE: Preprocessing = pre(ResizeMode::Resize, CropMode::None);
const RESIZE_CROP: Preprocessing = pre(ResizeMode::Resize, CropMode::Random);

/// Every training preset, in `--help` order.
pub const TRAIN_PRESETS: [TrainPreset; 10] = [
    TrainPreset {
        about: "64 px, about 0.6 M parameters: for CPU tests",
        total_images: 20_000,
        log_every: 256,
        ..small("tiny", 64, 8)
    },
    TrainPreset {
        about: "32 px, 2-channel structure code, reweighted losses: the CPU quickstart (not official)",
        // Not an official recipe: what made structure and texture separate within a few CPU
        // minutes (see `quickstart_model`). The reconstruction term is 10× the official
        // weight, so that the autoencoder reconstructs within a few hundred steps; the
        // co-occurrence terms (both Dpatch's and G's, as `lambda_PatchGAN` scales both) are
        // 5×, so that the colours still move into the texture code instead of riding along
        // with the layout; the learning rate is 5× (0.01), which gave the clearest grids in
        // 1500 calls among 0.002, 0.004, 0.005 and 0.01.
        lambda_l1: 10.0,
        lambda_patch_gan: 5.0,
        lr: 0.01,
        total_images: 12_000,
        log_every: 400,
        keep_checkpoints: 2,
        ..small("quickstart", 32, 2)
    },
    TrainPreset {
        about: "LSUN Church 256 (church_default: 4 GPUs, no patch aggregation)",
        patch_use_aggregation: false,
        ..official(Preset::Church256, 16, 4, SHORTSIDE_CROP, 256, 256)
    },
    TrainPreset {
        about: "LSUN Bedroom 256 (bedroom_default: 8 GPUs, no patch aggregation)",
        patch_use_aggregation: false,
        ..official(Preset::Bedroom256, 32, 8, SHORTSIDE_CROP, 256, 256)
    },
    TrainPreset {
        about: "FFHQ 512",
        ..official(Preset::Ffhq512, 16, 8, RESIZE, 512, 512)
    },
    TrainPreset {
        about: "FFHQ 1024, trained on 768-px crops",
        ..official(Preset::Ffhq1024, 16, 8, RESIZE_CROP, 1024, 768)
    },
    TrainPreset {
        about: "FFHQ 1024 with the smaller structure code",
        ..official(
            Preset::Ffhq1024SmallStructure,
            16,
            8,
            RESIZE_CROP,
            1024,
            768,
        )
    },
    TrainPreset {
        about: "Mountains 512 (lambda_patch_R1 10)",
        lambda_patch_r1: 10.0,
        ..official(Preset::Mountain512, 16, 8, SHORTSIDE_CROP, 512, 512)
    },
    TrainPreset {
        about: "AFHQ 256",
        ..official(Preset::Afhq256, 32, 8, RESIZE, 256, 256)
    },
    TrainPreset {
        about: "the official defaults (256 px, scale_width_and_crop)",
        ..official(
            Preset::Default,
            16,
            1,
            pre(ResizeMode::ScaleWidth, CropMode::Random),
            256,
            256,
        )
    },
];

/// The preset called `name`.
pub fn find_preset(name: &str) -> Option<&'static TrainPreset> {
    TRAIN_PRESETS.iter().find(|p| p.name == name)
}

/// The preset names, comma-separated (for error messages).
pub fn preset_names() -> String {
    TRAIN_PRESETS
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_row_has_help() {
        for (i, p) in TRAIN_PRESETS.iter().enumerate() {
            assert!(!p.about.is_empty(), "{} has no --help line", p.name);
            assert_eq!(
                TRAIN_PRESETS.iter().position(|q| q.name == p.name),
                Some(i),
                "{} twice",
                p.name
            );
            assert_eq!(find_preset(p.name), Some(p));
        }
    }
}
