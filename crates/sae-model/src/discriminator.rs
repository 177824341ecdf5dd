//! The image discriminator D (spec 4) and the patch co-occurrence discriminator Dpatch (spec 5).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use sae_nn::{
    ConvLayer, ConvLayerConfig, EqualLinear, EqualLinearConfig, ResBlock, ResBlockConfig,
};

fn resblocks(channels: &[usize], blur: &[f32], device: &Device) -> Vec<ResBlock> {
    channels
        .windows(2)
        .map(|w| {
            ResBlockConfig::new(w[0], w[1])
                .with_blur_kernel(blur.to_vec())
                .init(device)
        })
        .collect()
}

fn flatten(x: Tensor<4>) -> Tensor<2> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c * h * w])
}

/// Explicit configuration of a [`Discriminator`].
#[derive(Config, Debug, PartialEq)]
pub struct DiscriminatorConfig {
    /// Widths at resolutions `size, size/2, …, 4` (`size` = the crop rounded to a power of 2).
    pub channels: Vec<usize>,
    /// Side of the final feature map (4, or 3 for 768-px crops).
    pub side: usize,
    /// 1-D blur taps of the downsampling blocks.
    #[config(default = "vec![1.0, 3.0, 3.0, 1.0]")]
    pub blur_kernel: Vec<f32>,
}

impl DiscriminatorConfig {
    /// The input side the network accepts: `side · 2^(blocks)`.
    pub fn input_size(&self) -> usize {
        self.side << (self.channels.len() - 1)
    }

    /// Builds D.
    ///
    /// # Panics
    /// If fewer than two widths are given.
    pub fn init(&self, device: &Device) -> Discriminator {
        assert!(
            self.channels.len() >= 2,
            "DiscriminatorConfig needs ≥ 2 widths, got {self:?}"
        );
        let c = &self.channels;
        let last = c[c.len() - 1];
        Discriminator {
            from_rgb: ConvLayerConfig::new(3, c[0], 1).init(device),
            blocks: resblocks(c, &self.blur_kernel, device),
            final_conv: ConvLayerConfig::new(last, last, 3).init(device),
            final_linear: vec![
                EqualLinearConfig::new(last * self.side * self.side, last)
                    .with_activation(true)
                    .init(device),
                EqualLinearConfig::new(last, 1).init(device),
            ],
        }
    }
}

/// The StyleGAN2 discriminator as SAE uses it: no minibatch-stddev layer, logits `[batch, 1]`.
///
/// Official key → field (prefix `D.stylegan2_D.`): `convs.0` → `from_rgb`, the ResBlocks
/// `convs.{1024x1024, 512x512, 1, …, 6}` (highest resolution first) → `blocks.{k}`,
/// `final_conv` → `final_conv`, `final_linear.{0,1}` → `final_linear.{0,1}`.
#[derive(Module, Debug)]
pub struct Discriminator {
    /// 1×1 conv from RGB.
    pub from_rgb: ConvLayer,
    /// Downsampling ResBlocks to 4×4 (3×3 for 768 crops).
    pub blocks: Vec<ResBlock>,
    /// 3×3 conv + act.
    pub final_conv: ConvLayer,
    /// Linear + act, linear to one logit.
    pub final_linear: Vec<EqualLinear>,
}

impl Discriminator {
    /// # Shapes
    /// - `x`: `[batch, 3, s, s]` with `s` the training crop size
    /// - output: `[batch, 1]` raw logits
    ///
    /// # Panics
    /// If `x` does not have the training crop size.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let h = self
            .blocks
            .iter()
            .fold(self.from_rgb.forward(x), |h, b| b.forward(h));
        let h = flatten(self.final_conv.forward(h));
        let expected = self.final_linear[0].in_features();
        assert!(
            h.dims()[1] == expected,
            "Discriminator: the input size does not match the training crop (final features {} instead of {expected})",
            h.dims()[1]
        );
        self.final_linear
            .iter()
            .fold(h, |h, layer| layer.forward(h))
    }
}

/// Explicit configuration of a [`PatchDiscriminator`].
#[derive(Config, Debug, PartialEq)]
pub struct PatchDiscriminatorConfig {
    /// Widths at resolutions `2^ceil(log2 P), …, 4`.
    pub channels: Vec<usize>,
    /// Hidden widths of the pair MLP.
    #[config(default = "vec![2048, 2048, 1024]")]
    pub pair_hidden: Vec<usize>,
    /// 1-D blur taps of the downsampling blocks.
    #[config(default = "vec![1.0, 3.0, 3.0, 1.0]")]
    pub blur_kernel: Vec<f32>,
}

impl PatchDiscriminatorConfig {
    /// Builds Dpatch.
    ///
    /// # Panics
    /// If fewer than two widths are given.
    pub fn init(&self, device: &Device) -> PatchDiscriminator {
        assert!(
            self.channels.len() >= 2,
            "PatchDiscriminatorConfig needs ≥ 2 widths, got {self:?}"
        );
        let c = &self.channels;
        let c4 = c[c.len() - 1];
        let mut pairlinear = Vec::new();
        let mut width = c4 * 2 * 2 * 2;
        for &h in &self.pair_hidden {
            pairlinear.push(
                EqualLinearConfig::new(width, h)
                    .with_activation(true)
                    .init(device),
            );
            width = h;
        }
        pairlinear.push(EqualLinearConfig::new(width, 1).init(device));
        PatchDiscriminator {
            from_rgb: ConvLayerConfig::new(3, c[0], 3).init(device),
            blocks: resblocks(c, &self.blur_kernel, device),
            extra_block: ResBlockConfig::new(c4, 2 * c4)
                .with_downsample(false)
                .init(device),
            final_conv: ConvLayerConfig::new(2 * c4, c4, 3)
                .with_pad(Some(0))
                .init(device),
            pairlinear,
        }
    }
}

/// The official `StyleGAN2PatchDiscriminator`: features of patches, and a pair MLP judging
/// whether a patch co-occurs with a reference.
///
/// Official key → field (prefix `Dpatch.`): `convs.0` → `from_rgb`, the ResBlocks
/// `convs.{256x256, 128x128, 1, …, 4}` → `blocks.{k}`, `convs.5` → `extra_block`, `convs.6` →
/// `final_conv`, `pairlinear.{i}` → `pairlinear.{i}`.
#[derive(Module, Debug)]
pub struct PatchDiscriminator {
    /// 3×3 conv from RGB.
    pub from_rgb: ConvLayer,
    /// Downsampling ResBlocks to 4×4.
    pub blocks: Vec<ResBlock>,
    /// Non-downsampling ResBlock doubling the width.
    pub extra_block: ResBlock,
    /// Valid 3×3 conv to `[C, 2, 2]`.
    pub final_conv: ConvLayer,
    /// The pair MLP.
    pub pairlinear: Vec<EqualLinear>,
}

impl PatchDiscriminator {
    /// Features of every patch; with `aggregate`, each patch's feature is replaced by the mean
    /// over the crops of its image.
    ///
    /// # Shapes
    /// - `patches`: `[batch, crops, 3, p, p]`
    /// - output: `[batch·crops, C, 2, 2]`
    pub fn extract_features(&self, patches: Tensor<5>, aggregate: bool) -> Tensor<4> {
        let [b, t, c, h, w] = patches.dims();
        let x = patches.reshape([b * t, c, h, w]);
        let x = self
            .blocks
            .iter()
            .fold(self.from_rgb.forward(x), |h, blk| blk.forward(h));
        let f = self.final_conv.forward(self.extra_block.forward(x));
        if !aggregate {
            return f;
        }
        let [_, fc, fh, fw] = f.dims();
        f.reshape([b, t, fc, fh, fw])
            .mean_dim(1)
            .expand([b, t, fc, fh, fw])
            .reshape([b * t, fc, fh, fw])
    }

    /// Logits of (reference, target) feature pairs.
    ///
    /// # Shapes
    /// - `reference`, `target`: `[n, C, 2, 2]`
    /// - output: `[n, 1]`
    pub fn discriminate_features(&self, reference: Tensor<4>, target: Tensor<4>) -> Tensor<2> {
        let x = Tensor::cat(vec![flatten(reference), flatten(target)], 1);
        self.pairlinear.iter().fold(x, |h, layer| layer.forward(h))
    }
}
