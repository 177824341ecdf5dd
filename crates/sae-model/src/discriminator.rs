//! The image discriminator D (official `models/networks/discriminator.py`) and the patch
//! co-occurrence discriminator Dpatch (official `models/networks/patch_discriminator.py`).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use sae_nn::{
    ConvLayer, ConvLayerConfig, ConvLayerTape, EqualLinear, EqualLinearConfig, ResBlock,
    ResBlockConfig, ResBlockTape,
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
    ///
    /// Saturates at `usize::MAX` for configurations too deep for any image.
    pub fn input_size(&self) -> usize {
        let blocks = u32::try_from(self.channels.len().saturating_sub(1)).unwrap_or(u32::MAX);
        1usize
            .checked_shl(blocks)
            .and_then(|f| f.checked_mul(self.side))
            .unwrap_or(usize::MAX)
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
        self.forward_taped(x).0
    }

    /// [`Discriminator::forward`] of several batches as one pass, one logit tensor per batch.
    /// D has no layer that mixes samples (no minibatch-stddev), so this is the same function;
    /// one pass of the concatenation runs each layer once on bigger tensors, which costs less
    /// than several passes of small ones (a training step's real, reconstructed and swapped
    /// images).
    ///
    /// # Shapes
    /// - each of `xs`: `[batch_i, 3, s, s]`
    /// - output `i`: `[batch_i, 1]`
    ///
    /// # Panics
    /// As [`Discriminator::forward`], and if `xs` is empty.
    pub fn forward_many(&self, xs: Vec<Tensor<4>>) -> Vec<Tensor<2>> {
        let sizes: Vec<usize> = xs.iter().map(|x| x.dims()[0]).collect();
        split_rows(self.forward(Tensor::cat(xs, 0)), &sizes)
    }

    fn forward_taped(&self, x: Tensor<4>) -> (Tensor<2>, DiscriminatorTape) {
        let (mut h, from_rgb) = self.from_rgb.forward_taped(x);
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let (y, tape) = block.forward_taped(h);
            blocks.push(tape);
            h = y;
        }
        let (h, final_conv) = self.final_conv.forward_taped(h);
        let final_dims = h.dims();
        let h = flatten(h);
        let expected = self.final_linear[0].in_features();
        assert!(
            h.dims()[1] == expected,
            "Discriminator: the input size does not match the training crop (final features {} instead of {expected})",
            h.dims()[1]
        );
        let mut linear_pre = Vec::with_capacity(self.final_linear.len());
        let mut h = h;
        for layer in &self.final_linear {
            let (y, pre) = layer.forward_taped(h);
            linear_pre.push(pre);
            h = y;
        }
        let tape = DiscriminatorTape {
            from_rgb,
            blocks,
            final_conv,
            final_dims,
            linear_pre,
        };
        (h, tape)
    }

    /// `∂(Σ_b D(x)_b)/∂x`, the gradient of the R1 penalty (official
    /// `models/swapping_autoencoder_model.py::compute_R1_loss`), as an expression that is
    /// differentiable in D's weights.
    ///
    /// Burn has no double backward, so this is the hand-written input vector-Jacobian product
    /// of every layer (see [`ConvLayer::input_vjp`]): a forward pass on a frozen copy records
    /// the activation signs, then the VJPs run backwards on the trainable weights. Calling
    /// `backward()` on a function of the result (e.g. `Σ g²`) gives exactly the parameter
    /// gradients that PyTorch's `create_graph=True` gives. Biases before an activation only
    /// move the activation signs, so they get no gradient (PyTorch gives them zeros); the last
    /// layer's bias is not involved at all.
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, size, size]`; output: the same
    pub fn input_gradient(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, ..] = x.dims();
        let device = x.device();
        let (_, tape) = self.clone().no_grad().forward_taped(x.detach());
        let mut g: Tensor<2> = Tensor::ones([b, 1], &device);
        for (layer, pre) in self.final_linear.iter().zip(&tape.linear_pre).rev() {
            g = layer.input_vjp(pre.as_ref(), g);
        }
        let g = g.reshape(tape.final_dims);
        let mut g = self.final_conv.input_vjp(&tape.final_conv, g);
        for (block, t) in self.blocks.iter().zip(&tape.blocks).rev() {
            g = block.input_vjp(t, g);
        }
        self.from_rgb.input_vjp(&tape.from_rgb, g)
    }
}

/// What D's forward pass leaves for [`Discriminator::input_gradient`].
struct DiscriminatorTape {
    from_rgb: ConvLayerTape,
    blocks: Vec<ResBlockTape>,
    final_conv: ConvLayerTape,
    final_dims: [usize; 4],
    linear_pre: Vec<Option<Tensor<2>>>,
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
        let [b, t, ..] = patches.dims();
        let f = self.extract_features_taped(patches).0;
        if aggregate {
            aggregate_crops(f, b, t)
        } else {
            f
        }
    }

    /// [`PatchDiscriminator::extract_features`] of several sets of patches (each with its own
    /// `aggregate`) as one pass of the feature extractor: the same numbers, each layer run once
    /// on bigger tensors (see [`Discriminator::forward_many`]).
    ///
    /// # Shapes
    /// - each set: `[batch_i, crops, 3, p, p]` (the same `crops` and `p` for all)
    /// - output `i`: `[batch_i·crops, C, 2, 2]`
    ///
    /// # Panics
    /// As [`PatchDiscriminator::extract_features`], and if `sets` is empty or the sets differ in
    /// crops or patch size.
    pub fn extract_features_many(&self, sets: Vec<(Tensor<5>, bool)>) -> Vec<Tensor<4>> {
        let dims: Vec<[usize; 5]> = sets.iter().map(|(p, _)| p.dims()).collect();
        let aggregate: Vec<bool> = sets.iter().map(|(_, a)| *a).collect();
        let t = dims[0][1];
        let rows: Vec<usize> = dims.iter().map(|d| d[0] * t).collect();
        let all = self.extract_features(
            Tensor::cat(sets.into_iter().map(|(p, _)| p).collect(), 0),
            false,
        );
        split_rows(all, &rows)
            .into_iter()
            .zip(dims.iter().zip(aggregate))
            .map(|(f, (d, agg))| if agg { aggregate_crops(f, d[0], t) } else { f })
            .collect()
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

    fn extract_features_taped(&self, patches: Tensor<5>) -> (Tensor<4>, FeatureTape) {
        let [b, t, c, h, w] = patches.dims();
        let (mut x, from_rgb) = self
            .from_rgb
            .forward_taped(patches.reshape([b * t, c, h, w]));
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let (y, tape) = block.forward_taped(x);
            blocks.push(tape);
            x = y;
        }
        let (x, extra_block) = self.extra_block.forward_taped(x);
        let (f, final_conv) = self.final_conv.forward_taped(x);
        let tape = FeatureTape {
            patch_dims: [b, t, c, h, w],
            from_rgb,
            blocks,
            extra_block,
            final_conv,
        };
        (f, tape)
    }

    fn features_vjp(&self, tape: &FeatureTape, g: Tensor<4>) -> Tensor<5> {
        let mut g = self.extra_block.input_vjp(
            &tape.extra_block,
            self.final_conv.input_vjp(&tape.final_conv, g),
        );
        for (block, t) in self.blocks.iter().zip(&tape.blocks).rev() {
            g = block.input_vjp(t, g);
        }
        self.from_rgb
            .input_vjp(&tape.from_rgb, g)
            .reshape(tape.patch_dims)
    }

    /// The gradients of the patch R1 penalty (official
    /// `models/swapping_autoencoder_model.py::compute_R1_loss`): with
    /// `p = Σ discriminate_features(extract_features(reference, aggregate), extract_features(target, false))`,
    /// returns `(∂p/∂reference, ∂p/∂target)` as expressions differentiable in Dpatch's weights
    /// (hand-written input-VJPs, as in [`Discriminator::input_gradient`]).
    ///
    /// # Shapes
    /// - `reference`, `target`: `[batch, crops, 3, p, p]`; outputs: the same
    pub fn input_gradients(
        &self,
        reference: Tensor<5>,
        target: Tensor<5>,
        aggregate: bool,
    ) -> (Tensor<5>, Tensor<5>) {
        let [b, t, ..] = reference.dims();
        let device = reference.device();
        let frozen = self.clone().no_grad();
        let (ref_f, ref_tape) = frozen.extract_features_taped(reference.detach());
        let (tgt_f, tgt_tape) = frozen.extract_features_taped(target.detach());
        let feat_dims = ref_f.dims();
        let ref_in = if aggregate {
            aggregate_crops(ref_f, b, t)
        } else {
            ref_f
        };
        let mut x = Tensor::cat(vec![flatten(ref_in), flatten(tgt_f)], 1);
        let mut pres = Vec::with_capacity(self.pairlinear.len());
        for layer in &frozen.pairlinear {
            let (y, pre) = layer.forward_taped(x);
            pres.push(pre);
            x = y;
        }
        let [n, _] = x.dims();
        let mut g: Tensor<2> = Tensor::ones([n, 1], &device);
        for (layer, pre) in self.pairlinear.iter().zip(&pres).rev() {
            g = layer.input_vjp(pre.as_ref(), g);
        }
        let width = g.dims()[1] / 2;
        let g_ref = g.clone().slice([0..n, 0..width]).reshape(feat_dims);
        let g_tgt = g.slice([0..n, width..2 * width]).reshape(feat_dims);
        // The mean over an image's crops is its own adjoint: every crop of image i gets the
        // mean of the gradients of image i's (broadcast) reference features.
        let g_ref = if aggregate {
            aggregate_crops(g_ref, b, t)
        } else {
            g_ref
        };
        (
            self.features_vjp(&ref_tape, g_ref),
            self.features_vjp(&tgt_tape, g_tgt),
        )
    }
}

/// Consecutive row blocks of `x` of the given sizes.
fn split_rows<const D: usize>(x: Tensor<D>, sizes: &[usize]) -> Vec<Tensor<D>> {
    let mut start = 0;
    sizes
        .iter()
        .map(|&n| {
            let part = x.clone().narrow(0, start, n);
            start += n;
            part
        })
        .collect()
}

/// Replaces every crop's feature by the mean over the crops of its image.
fn aggregate_crops(f: Tensor<4>, b: usize, t: usize) -> Tensor<4> {
    let [_, fc, fh, fw] = f.dims();
    f.reshape([b, t, fc, fh, fw])
        .mean_dim(1)
        .expand([b, t, fc, fh, fw])
        .reshape([b * t, fc, fh, fw])
}

/// What Dpatch's feature extractor leaves for its input-VJP.
struct FeatureTape {
    patch_dims: [usize; 5],
    from_rgb: ConvLayerTape,
    blocks: Vec<ResBlockTape>,
    extra_block: ResBlockTape,
    final_conv: ConvLayerTape,
}
