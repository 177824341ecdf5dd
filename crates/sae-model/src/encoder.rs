//! The encoder E (the official `models/networks/encoder.py::StyleGAN2ResnetEncoder`).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use sae_nn::{
    ConvLayer, ConvLayerConfig, EqualLinear, EqualLinearConfig, ResBlock, ResBlockConfig, normalize,
};

/// Explicit configuration of an [`Encoder`]: every width is listed, so a configuration read
/// from a checkpoint's shapes builds the same network as the official code did.
#[derive(Config, Debug, PartialEq)]
pub struct EncoderConfig {
    /// Widths of levels `0 ..= sp + gl`: `FromRGB` outputs level 0, `ResBlockDownBy{2^i}` maps
    /// level `i` to `i+1`, the global branch maps `sp + j` to `sp + j + 1`.
    pub channels: Vec<usize>,
    /// Downsamplings to the structure code (`sp`).
    pub num_downsampling_sp: usize,
    /// Structure-code channels.
    pub spatial_code_ch: usize,
    /// Texture-code width.
    pub global_code_ch: usize,
    /// 1-D blur taps of the downsampling blocks (`[1, 2, 1]`, or `[1]` without antialiasing).
    #[config(default = "vec![1.0, 2.0, 1.0]")]
    pub blur_kernel: Vec<f32>,
}

impl EncoderConfig {
    /// Downsamplings of the texture branch (`gl`).
    pub fn num_downsampling_gl(&self) -> usize {
        self.channels
            .len()
            .saturating_sub(1 + self.num_downsampling_sp)
    }

    /// The smallest image side the encoder takes: each valid 3×3 stride-2 conv of the texture
    /// branch needs at least 3 pixels, so the midpoint needs `2^(gl+1) − 1`, times `2^sp`.
    ///
    /// Saturates at `usize::MAX` for configurations too deep for any image.
    pub fn min_input_size(&self) -> usize {
        let gl = u32::try_from(self.num_downsampling_gl() + 1).unwrap_or(u32::MAX);
        let sp = u32::try_from(self.num_downsampling_sp).unwrap_or(u32::MAX);
        1usize
            .checked_shl(gl)
            .map(|m| m - 1)
            .and_then(|m| m.checked_mul(1usize.checked_shl(sp)?))
            .unwrap_or(usize::MAX)
    }

    /// Builds the encoder.
    ///
    /// # Panics
    /// If `channels` is shorter than `num_downsampling_sp + 1`.
    pub fn init(&self, device: &Device) -> Encoder {
        let sp = self.num_downsampling_sp;
        assert!(
            self.channels.len() > sp,
            "EncoderConfig: {} widths cannot describe {sp} downsamplings",
            self.channels.len()
        );
        let nc = &self.channels;
        let mid = nc[sp];
        Encoder {
            from_rgb: ConvLayerConfig::new(3, nc[0], 1).init(device),
            down_to_spatial_code: (0..sp)
                .map(|i| {
                    ResBlockConfig::new(nc[i], nc[i + 1])
                        .with_blur_kernel(self.blur_kernel.clone())
                        .with_reflection_pad(true)
                        .init(device)
                })
                .collect(),
            to_spatial_code: vec![
                ConvLayerConfig::new(mid, mid, 1).init(device),
                ConvLayerConfig::new(mid, self.spatial_code_ch, 1)
                    .with_activate(false)
                    .init(device),
            ],
            down_to_global_code: (sp..nc.len() - 1)
                .map(|i| {
                    ConvLayerConfig::new(nc[i], nc[i + 1], 3)
                        .with_downsample(true)
                        .with_blur_kernel(vec![1.0])
                        .with_pad(Some(0))
                        .init(device)
                })
                .collect(),
            to_global_code: EqualLinearConfig::new(nc[nc.len() - 1], self.global_code_ch)
                .init(device),
        }
    }
}

/// The encoder: an image → a structure code (spatial, `2^sp` times smaller, unit norm per pixel)
/// and a texture code (a unit vector).
///
/// Official key → field: `E.FromRGB` → `from_rgb`, `E.DownToSpatialCode.ResBlockDownBy{2^i}` →
/// `down_to_spatial_code.{i}`, `E.ToSpatialCode.{k}` → `to_spatial_code.{k}`,
/// `E.DownToGlobalCode.ConvLayerDownBy{2^(sp+j)}` → `down_to_global_code.{j}`,
/// `E.ToGlobalCode.0` → `to_global_code`.
#[derive(Module, Debug)]
pub struct Encoder {
    /// 1×1 conv from RGB.
    pub from_rgb: ConvLayer,
    /// Reflection-padded downsampling ResBlocks to the "midpoint".
    pub down_to_spatial_code: Vec<ResBlock>,
    /// 1×1 conv + act, then 1×1 conv with bias to the structure code.
    pub to_spatial_code: Vec<ConvLayer>,
    /// Valid 3×3 stride-2 convs of the texture branch.
    pub down_to_global_code: Vec<ConvLayer>,
    /// Linear map of the pooled features to the texture code.
    pub to_global_code: EqualLinear,
}

/// The two codes of a batch of images.
#[derive(Clone, Debug)]
pub struct Codes {
    /// Structure code `[batch, spatial_code_ch, h/2^sp, w/2^sp]`, unit norm per pixel.
    pub structure: Tensor<4>,
    /// Texture code `[batch, global_code_ch]`, unit norm.
    pub texture: Tensor<2>,
}

impl Encoder {
    /// Downsamplings to the structure code.
    pub fn num_downsampling_sp(&self) -> usize {
        self.down_to_spatial_code.len()
    }

    /// The shared trunk: the "midpoint" features both codes are computed from.
    pub fn midpoint(&self, x: Tensor<4>) -> Tensor<4> {
        self.down_to_spatial_code
            .iter()
            .fold(self.from_rgb.forward(x), |h, block| block.forward(h))
    }

    /// Encodes images in `[-1, 1]`.
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, h, w]`, `h` and `w` multiples of `2^sp` and at least `7·2^sp`
    /// - output: see [`Codes`]
    ///
    /// # Panics
    /// If the image is not RGB or too small for the texture branch.
    pub fn forward(&self, x: Tensor<4>) -> Codes {
        let mid = self.midpoint(x);
        Codes {
            structure: self.structure_from_midpoint(mid.clone()),
            texture: self.texture_from_midpoint(mid),
        }
    }

    /// The structure code's branch alone, from [`Encoder::midpoint`]'s features: what a swap
    /// needs of its structure image (its texture branch, the 1024- and 2048-channel
    /// convolutions at full size, is then not run).
    ///
    /// # Shapes
    /// - `mid`: `[batch, C, h/2^sp, w/2^sp]`
    /// - output: `[batch, spatial_code_ch, h/2^sp, w/2^sp]`, unit norm per pixel
    ///
    /// # Panics
    /// If `mid` does not have the trunk's channel count (as [`Encoder::midpoint`] gives it) or
    /// has a zero-size dimension.
    pub fn structure_from_midpoint(&self, mid: Tensor<4>) -> Tensor<4> {
        let sp = self
            .to_spatial_code
            .iter()
            .fold(mid, |h, layer| layer.forward(h));
        normalize(sp)
    }

    /// The texture code's branch alone, from [`Encoder::midpoint`]'s features: what a swap
    /// needs of its texture image.
    ///
    /// # Shapes
    /// - `mid`: `[batch, C, h/2^sp, w/2^sp]`, at least 7×7 for the default two texture
    ///   downsamplings
    /// - output: `[batch, global_code_ch]`, unit norm
    ///
    /// # Panics
    /// If `mid` does not have the trunk's channel count, or is too small for the texture
    /// branch's valid convolutions.
    pub fn texture_from_midpoint(&self, mid: Tensor<4>) -> Tensor<2> {
        let g = self
            .down_to_global_code
            .iter()
            .fold(mid, |h, layer| layer.forward(h));
        let [b, c, _, _] = g.dims();
        let pooled = g.mean_dim(3).mean_dim(2).reshape([b, c]);
        normalize(self.to_global_code.forward(pooled))
    }
}
