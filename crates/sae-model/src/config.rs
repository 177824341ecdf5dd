//! The options that shape the four networks, the official presets, and the explicit per-network
//! configurations derived from them.

use burn::config::Config;
use thiserror::Error;

use crate::channels::{discriminator_ch, encoder_nc, generator_head, generator_nf, patch_ch};
use crate::discriminator::{DiscriminatorConfig, PatchDiscriminatorConfig};
use crate::encoder::EncoderConfig;
use crate::generator::GeneratorConfig;
use crate::model::ModelConfig;

/// Every option of the official code that shapes the networks, with the official defaults
/// (the `modify_commandline_options` of `models/networks/*.py` and the model). Names follow the
/// official flags in snake case (`netE_scale_capacity` → `net_e_scale_capacity`). Serialises to
/// JSON with [`Config::save`].
#[derive(Config, Debug, PartialEq)]
pub struct SwappingAutoencoderConfig {
    /// Texture-code width (`global_code_ch`), also G's style dimension.
    #[config(default = 2048)]
    pub global_code_ch: usize,
    /// Structure-code channels (`spatial_code_ch`).
    #[config(default = 8)]
    pub spatial_code_ch: usize,
    /// Encoder channel multiplier (`netE_scale_capacity`).
    #[config(default = 1.0)]
    pub net_e_scale_capacity: f64,
    /// Encoder downsamplings to the structure code, = G's upsamplings (`netE_num_downsampling_sp`).
    #[config(default = 4)]
    pub net_e_num_downsampling_sp: usize,
    /// Extra valid stride-2 convs of the texture branch (`netE_num_downsampling_gl`).
    #[config(default = 2)]
    pub net_e_num_downsampling_gl: usize,
    /// Base of the encoder's exponential channel rule (`netE_nc_steepness`).
    #[config(default = 2.0)]
    pub net_e_nc_steepness: f64,
    /// Generator channel multiplier (`netG_scale_capacity`).
    #[config(default = 1.0)]
    pub net_g_scale_capacity: f64,
    /// Number of resolution-preserving head blocks (`netG_num_base_resnet_layers`).
    #[config(default = 2)]
    pub net_g_num_base_resnet_layers: usize,
    /// Noise in the upsampling blocks (`netG_use_noise`; head blocks always have noise).
    #[config(default = true)]
    pub net_g_use_noise: bool,
    /// Discriminator channel multiplier / 2 (`netD_scale_capacity`).
    #[config(default = 1.0)]
    pub net_d_scale_capacity: f64,
    /// Patch discriminator channel multiplier (`netPatchD_scale_capacity`).
    #[config(default = 4.0)]
    pub net_patch_d_scale_capacity: f64,
    /// Cap on the patch discriminator's low-resolution widths (`netPatchD_max_nc`).
    #[config(default = 384)]
    pub net_patch_d_max_nc: usize,
    /// Side of the co-occurrence patches (`patch_size`).
    #[config(default = 128)]
    pub patch_size: usize,
    /// Training crop, which fixes D's input size (`crop_size`).
    #[config(default = 256)]
    pub crop_size: usize,
    /// Antialiasing blurs: `[1,2,1]` in E, `[1,3,3,1]` in G/D/Dpatch (`use_antialias`).
    #[config(default = true)]
    pub use_antialias: bool,
}

/// A named official configuration (one per launcher entry of `experiments/*_launcher.py`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// The bare defaults (256 px).
    Default,
    /// LSUN Church 256 (`church_default` / `church_pretrained`).
    Church256,
    /// LSUN Bedroom 256.
    Bedroom256,
    /// FFHQ 512.
    Ffhq512,
    /// FFHQ 1024, trained on 768 crops.
    Ffhq1024,
    /// FFHQ 1024, "smaller structure code" (`ffhq1024_patchDv7_L1_smallerstructurecode`).
    Ffhq1024SmallStructure,
    /// Mountains 512.
    Mountain512,
    /// AFHQ 256.
    Afhq256,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 8] = [
        Preset::Default,
        Preset::Church256,
        Preset::Bedroom256,
        Preset::Ffhq512,
        Preset::Ffhq1024,
        Preset::Ffhq1024SmallStructure,
        Preset::Mountain512,
        Preset::Afhq256,
    ];

    /// The command-line name.
    pub const fn name(self) -> &'static str {
        match self {
            Preset::Default => "default",
            Preset::Church256 => "church256",
            Preset::Bedroom256 => "bedroom256",
            Preset::Ffhq512 => "ffhq512",
            Preset::Ffhq1024 => "ffhq1024",
            Preset::Ffhq1024SmallStructure => "ffhq1024-small-structure",
            Preset::Mountain512 => "mountain512",
            Preset::Afhq256 => "afhq256",
        }
    }

    /// Looks a preset up by [`Preset::name`].
    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The network options of the preset (everything else at the official defaults).
    pub fn config(self) -> SwappingAutoencoderConfig {
        let base = SwappingAutoencoderConfig::new();
        match self {
            Preset::Default | Preset::Church256 | Preset::Bedroom256 | Preset::Afhq256 => base,
            Preset::Ffhq512 | Preset::Mountain512 => base.with_crop_size(512),
            Preset::Ffhq1024 => base
                .with_crop_size(768)
                .with_net_g_scale_capacity(0.8)
                .with_net_e_num_downsampling_sp(5)
                .with_net_e_scale_capacity(0.4)
                .with_global_code_ch(1536)
                .with_patch_size(256),
            Preset::Ffhq1024SmallStructure => base
                .with_crop_size(768)
                .with_net_g_scale_capacity(0.8)
                .with_net_e_num_downsampling_sp(6)
                .with_net_e_scale_capacity(1.0)
                .with_net_e_nc_steepness(1.8)
                .with_global_code_ch(1024)
                .with_spatial_code_ch(64)
                .with_patch_size(256),
        }
    }
}

impl SwappingAutoencoderConfig {
    fn e_blur(&self) -> Vec<f32> {
        if self.use_antialias {
            vec![1.0, 2.0, 1.0]
        } else {
            vec![1.0]
        }
    }

    fn blur(&self) -> Vec<f32> {
        if self.use_antialias {
            vec![1.0, 3.0, 3.0, 1.0]
        } else {
            vec![1.0]
        }
    }

    /// The encoder with the official channel rule (including the `min(global_code_ch)` cap of
    /// the current code).
    pub fn encoder(&self) -> EncoderConfig {
        let (sp, gl) = (
            self.net_e_num_downsampling_sp,
            self.net_e_num_downsampling_gl,
        );
        let channels = (0..=sp + gl)
            .map(|i| {
                encoder_nc(
                    i,
                    self.global_code_ch,
                    self.net_e_nc_steepness,
                    self.net_e_scale_capacity,
                )
            })
            .collect();
        EncoderConfig::new(channels, sp, self.spatial_code_ch, self.global_code_ch)
            .with_blur_kernel(self.e_blur())
    }

    /// The generator with the official channel rules.
    pub fn generator(&self) -> GeneratorConfig {
        let sp = self.net_e_num_downsampling_sp;
        let n = self.net_g_num_base_resnet_layers;
        let nf = |j| generator_nf(j, sp, self.net_g_scale_capacity);
        let head = (0..n)
            .map(|i| generator_head(i, n, nf(0), self.spatial_code_ch))
            .collect();
        let up = (1..=sp).map(nf).collect();
        GeneratorConfig::new(self.spatial_code_ch, self.global_code_ch, head, up)
            .with_use_noise(self.net_g_use_noise)
            .with_blur_kernel(self.blur())
    }

    /// The image discriminator for `crop_size` inputs.
    pub fn discriminator(&self) -> DiscriminatorConfig {
        let size = 2usize.pow((self.crop_size as f64).log2().round() as u32);
        let m = 2.0 * self.net_d_scale_capacity;
        let mut channels = Vec::new();
        let mut res = size;
        while res >= 4 {
            channels.push(discriminator_ch(res, m));
            res /= 2;
        }
        let side = 4 * self.crop_size / size;
        DiscriminatorConfig::new(channels, side).with_blur_kernel(self.blur())
    }

    /// The patch co-occurrence discriminator for `patch_size` patches.
    pub fn patch_discriminator(&self) -> PatchDiscriminatorConfig {
        let log = (self.patch_size as f64).log2().ceil() as u32;
        let mut channels = Vec::new();
        let mut res = 2usize.pow(log);
        while res >= 4 {
            channels.push(patch_ch(
                res,
                self.net_patch_d_scale_capacity,
                self.net_patch_d_max_nc,
            ));
            res /= 2;
        }
        PatchDiscriminatorConfig::new(channels).with_blur_kernel(self.blur())
    }
}

/// A [`ModelConfig`] that describes no buildable model (read from a damaged or foreign file,
/// say). `field` names the configuration field as it is spelled in the JSON.
#[derive(Debug, Error, PartialEq)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    /// The field, e.g. `encoder.channels`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

/// The largest width (channels, code sizes, hidden units) a configuration may ask for: 16× the
/// widest official layer (2048), far above any real model, and a bound on what a bad file can
/// make this crate try to allocate.
pub const MAX_WIDTH: usize = 1 << 15;

/// The most resolution levels (encoder downsamplings, generator blocks, discriminator blocks)
/// a configuration may ask for: 2^16-px images are beyond any model.
pub const MAX_LEVELS: usize = 16;

/// The most FIR taps a blur may have (the official ones have 3 and 4).
pub const MAX_TAPS: usize = 16;

fn bad(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        problem: problem.into(),
    }
}

fn check_widths(field: &str, widths: &[usize], min_len: usize) -> Result<(), ConfigError> {
    if widths.len() < min_len {
        return Err(bad(
            field,
            format!("needs at least {min_len} widths, got {}", widths.len()),
        ));
    }
    if widths.len() > MAX_LEVELS + 2 {
        return Err(bad(
            field,
            format!(
                "{} widths; at most {} are allowed",
                widths.len(),
                MAX_LEVELS + 2
            ),
        ));
    }
    check_sizes(field, widths)
}

fn check_sizes(field: &str, values: &[usize]) -> Result<(), ConfigError> {
    for (i, &w) in values.iter().enumerate() {
        if w == 0 || w > MAX_WIDTH {
            return Err(bad(
                &format!("{field}[{i}]"),
                format!("{w} is not a width in 1..={MAX_WIDTH}"),
            ));
        }
    }
    Ok(())
}

fn check_width(field: &str, w: usize) -> Result<(), ConfigError> {
    if w == 0 || w > MAX_WIDTH {
        return Err(bad(field, format!("{w} is not a width in 1..={MAX_WIDTH}")));
    }
    Ok(())
}

/// The taps of `sae_nn::FirKernel::new`: non-empty, finite, not summing to zero.
fn check_taps(field: &str, taps: &[f32]) -> Result<(), ConfigError> {
    if taps.is_empty() || taps.len() > MAX_TAPS {
        return Err(bad(
            field,
            format!("needs 1..={MAX_TAPS} taps, got {}", taps.len()),
        ));
    }
    if taps.iter().any(|t| !t.is_finite()) {
        return Err(bad(field, format!("taps {taps:?} are not all finite")));
    }
    let sum: f32 = taps.iter().sum();
    if sum == 0.0 || !sum.is_finite() {
        return Err(bad(
            field,
            format!("taps {taps:?} sum to {sum} and cannot be normalised"),
        ));
    }
    Ok(())
}

impl ModelConfig {
    /// Checks that the configuration describes a model every network's `init` can build, and
    /// that the networks fit together (the codes E makes are the codes G reads). Every
    /// configuration read from a file goes through this before anything is built, so a bad one
    /// is a [`ConfigError`] naming the field, never a panic in a layer constructor.
    ///
    /// # Errors
    /// The first field that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let e = &self.encoder;
        if e.num_downsampling_sp > MAX_LEVELS {
            return Err(bad(
                "encoder.num_downsampling_sp",
                format!("{} is above {MAX_LEVELS}", e.num_downsampling_sp),
            ));
        }
        check_widths("encoder.channels", &e.channels, e.num_downsampling_sp + 1)?;
        check_width("encoder.spatial_code_ch", e.spatial_code_ch)?;
        check_width("encoder.global_code_ch", e.global_code_ch)?;
        check_taps("encoder.blur_kernel", &e.blur_kernel)?;
        let g = &self.generator;
        check_widths("generator.head_channels", &g.head_channels, 1)?;
        check_widths("generator.up_channels", &g.up_channels, 1)?;
        check_taps("generator.blur_kernel", &g.blur_kernel)?;
        if g.spatial_code_ch != e.spatial_code_ch {
            return Err(bad(
                "generator.spatial_code_ch",
                format!(
                    "{} differs from the encoder's structure code ({} channels)",
                    g.spatial_code_ch, e.spatial_code_ch
                ),
            ));
        }
        if g.style_dim != e.global_code_ch {
            return Err(bad(
                "generator.style_dim",
                format!(
                    "{} differs from the encoder's texture code ({} dims)",
                    g.style_dim, e.global_code_ch
                ),
            ));
        }
        if let Some(d) = &self.discriminator {
            check_widths("discriminator.channels", &d.channels, 2)?;
            check_taps("discriminator.blur_kernel", &d.blur_kernel)?;
            if d.side == 0 || d.side > 64 {
                return Err(bad(
                    "discriminator.side",
                    format!("{} is not a final side in 1..=64", d.side),
                ));
            }
        }
        if let Some(p) = &self.patch_discriminator {
            check_widths("patch_discriminator.channels", &p.channels, 2)?;
            check_sizes("patch_discriminator.pair_hidden", &p.pair_hidden)?;
            if p.pair_hidden.len() > MAX_LEVELS {
                return Err(bad(
                    "patch_discriminator.pair_hidden",
                    format!("{} layers; at most {MAX_LEVELS}", p.pair_hidden.len()),
                ));
            }
            check_taps("patch_discriminator.blur_kernel", &p.blur_kernel)?;
        }
        Ok(())
    }
}
