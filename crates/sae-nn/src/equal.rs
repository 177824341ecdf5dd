//! Equalized learning-rate layers (official `models/networks/stylegan2_layers.py`).
//!
//! Weights are stored raw (`N(0, 1)` at init) and scaled by `1/√fan_in` on every forward, so
//! Adam sees the same parameters as the official code and an official checkpoint loads as is.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

use crate::act::{add_channel_bias, leaky_relu_vjp, scaled_leaky_relu};
use crate::conv_op::{conv2d, conv2d_input_grad};
use crate::shape::{check_channels, check_nonempty};

/// The official initialisation of every conv, linear and modulated weight: `N(0, 1)`.
pub(crate) const STANDARD_NORMAL: Initializer = Initializer::Normal {
    mean: 0.0,
    std: 1.0,
};

/// Configuration of an [`EqualConv2d`].
#[derive(Config, Debug)]
pub struct EqualConv2dConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Square kernel side.
    pub kernel_size: usize,
    /// Stride on both axes.
    #[config(default = 1)]
    pub stride: usize,
    /// Symmetric zero padding on both axes.
    #[config(default = 0)]
    pub padding: usize,
    /// Whether the conv has a bias (initialised to zero).
    #[config(default = true)]
    pub bias: bool,
}

impl EqualConv2dConfig {
    /// Weights `N(0, 1)`, bias zero. Parameters are initialised lazily, on first use.
    pub fn init(&self, device: &Device) -> EqualConv2d {
        let k = self.kernel_size;
        EqualConv2d {
            weight: STANDARD_NORMAL.init([self.out_channels, self.in_channels, k, k], device),
            bias: self
                .bias
                .then(|| Initializer::Zeros.init([self.out_channels], device)),
            stride: self.stride,
            padding: self.padding,
            scale: 1.0 / ((self.in_channels * k * k) as f64).sqrt(),
        }
    }
}

/// The official `EqualConv2d`: `conv2d(x, weight · 1/√(in·k²), bias, stride, padding)`.
/// State keys: `weight` `[out, in, k, k]`, `bias` `[out]`.
#[derive(Module, Debug)]
pub struct EqualConv2d {
    /// Raw weight, shape `[out, in, k, k]`.
    pub weight: Param<Tensor<4>>,
    /// Optional bias, shape `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Stride on both axes.
    pub stride: usize,
    /// Symmetric zero padding.
    pub padding: usize,
    /// Runtime equalized-lr scale `1/√(in·k²)`.
    pub scale: f64,
}

impl EqualConv2d {
    /// The effective weight, `weight · scale` (the convolution itself applies the scale in
    /// its GEMMs rather than building this tensor).
    pub fn scaled_weight(&self) -> Tensor<4> {
        self.weight.val() * self.scale
    }

    /// Applies the convolution.
    ///
    /// # Shapes
    /// - `x`: `[batch, in, h, w]`
    /// - output: `[batch, out, (h + 2p − k)/s + 1, (w + 2p − k)/s + 1]`
    ///
    /// # Panics
    /// If `x` has the wrong number of channels or a zero-size dimension.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, cin, k, _] = self.weight.dims();
        check_channels("EqualConv2d", "x", &x.dims(), cin);
        let [_, _, h, w] = x.dims();
        assert!(
            h + 2 * self.padding >= k && w + 2 * self.padding >= k,
            "EqualConv2d: input {:?} is smaller than the {k}x{k} kernel (padding {})",
            x.dims(),
            self.padding
        );
        // The scale rides into the convolution (its GEMMs' factor): no scaled copy of the
        // weight per call.
        let y = conv2d(
            x,
            self.weight.val(),
            self.stride,
            self.padding,
            self.scale as f32,
        );
        add_channel_bias(y, self.bias.as_ref().map(|b| b.val()))
    }

    /// The input vector-Jacobian product of [`EqualConv2d::forward`]: a transposed conv with
    /// the same (scaled) weight, stride and padding, whose output padding restores the input
    /// size that a strided conv rounded down. Differentiable in the weight, for R1 (official
    /// `models/swapping_autoencoder_model.py::compute_R1_loss`).
    ///
    /// # Shapes
    /// - `g`: `[batch, out_channels, h_out, w_out]`
    /// - `input_size`: the forward input's `[h, w]`
    /// - output: `[batch, in_channels, h, w]`
    ///
    /// # Panics
    /// If `g` does not have `out_channels` channels, or its size is not what
    /// [`EqualConv2d::forward`] gives for an input of `input_size`.
    pub fn input_vjp(&self, g: Tensor<4>, input_size: [usize; 2]) -> Tensor<4> {
        let [out, _, k, _] = self.weight.dims();
        check_channels("EqualConv2d::input_vjp", "g", &g.dims(), out);
        let (s, p) = (self.stride, self.padding);
        let forward_len = |len: usize| (len + 2 * p).checked_sub(k).map(|l| l / s + 1);
        let [_, _, ho, wo] = g.dims();
        let [h, w] = input_size;
        match forward_len(h).zip(forward_len(w)) {
            Some(size) if size == (ho, wo) => {}
            Some((fh, fw)) => panic!(
                "EqualConv2d::input_vjp: g is {ho}x{wo}, but the forward pass of a {h}x{w} input gives {fh}x{fw}"
            ),
            None => panic!(
                "EqualConv2d::input_vjp: a {h}x{w} input is smaller than the {k}x{k} kernel with padding {p}: the forward pass has no output"
            ),
        }
        conv2d_input_grad(
            g,
            self.weight.val(),
            self.stride,
            self.padding,
            input_size,
            self.scale as f32,
        )
    }
}

/// Configuration of an [`EqualLinear`].
#[derive(Config, Debug)]
pub struct EqualLinearConfig {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Whether the layer has a bias.
    #[config(default = true)]
    pub bias: bool,
    /// Initial value of every bias entry (1 for the modulation layers, 0 elsewhere).
    #[config(default = 0.0)]
    pub bias_init: f64,
    /// Learning-rate multiplier (1 in every SAE layer; kept for StyleGAN2 parity).
    #[config(default = 1.0)]
    pub lr_mul: f64,
    /// Apply the fused `√2`-leaky-ReLU (the official `activation='fused_lrelu'`).
    #[config(default = false)]
    pub activation: bool,
}

impl EqualLinearConfig {
    /// Weights `N(0, 1)/lr_mul`, bias `bias_init` (lazily initialised).
    pub fn init(&self, device: &Device) -> EqualLinear {
        let weight = Initializer::Normal {
            mean: 0.0,
            std: 1.0 / self.lr_mul,
        };
        EqualLinear {
            weight: weight.init([self.out_features, self.in_features], device),
            bias: self.bias.then(|| {
                Initializer::Constant {
                    value: self.bias_init,
                }
                .init([self.out_features], device)
            }),
            scale: self.lr_mul / (self.in_features as f64).sqrt(),
            lr_mul: self.lr_mul,
            activation: self.activation,
        }
    }
}

/// The official `EqualLinear`. State keys: `weight` `[out, in]` (PyTorch layout, unlike
/// `burn::nn::Linear`), `bias` `[out]`.
///
/// Implemented with `matmul` (2-D input) or a 1×1 `conv2d` (4-D input, the per-pixel path of the
/// spatially varying style), never Burn's fused `linear`, so that it can be differentiated twice.
#[derive(Module, Debug)]
pub struct EqualLinear {
    /// Raw weight, shape `[out, in]`.
    pub weight: Param<Tensor<2>>,
    /// Optional bias, shape `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Runtime scale `lr_mul/√in`.
    pub scale: f64,
    /// Learning-rate multiplier applied to the bias.
    pub lr_mul: f64,
    /// Whether the fused `√2`-leaky-ReLU follows.
    pub activation: bool,
}

impl EqualLinear {
    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    fn bias_val(&self) -> Option<Tensor<1>> {
        self.bias.as_ref().map(|b| b.val() * self.lr_mul)
    }

    /// Bias, then the optional fused activation; also returns the pre-activation when there is
    /// an activation (the R1 input-VJP needs its sign).
    fn finish<const D: usize>(&self, y: Tensor<D>) -> (Tensor<D>, Option<Tensor<D>>) {
        let pre = add_channel_bias(y, self.bias_val());
        if self.activation {
            (scaled_leaky_relu(pre.clone()), Some(pre))
        } else {
            (pre, None)
        }
    }

    /// `x · (W·scale)ᵀ + bias·lr_mul`, then the optional activation.
    ///
    /// # Shapes
    /// - `x`: `[batch, in]`; output: `[batch, out]`
    ///
    /// # Panics
    /// If `x` does not have `in` features or is empty.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_taped(x).0
    }

    /// [`EqualLinear::forward`], also returning the pre-activation (when the layer activates)
    /// that [`EqualLinear::input_vjp`] needs.
    ///
    /// # Shapes
    /// - `x`: `[batch, in]`; outputs: `[batch, out]`
    pub fn forward_taped(&self, x: Tensor<2>) -> (Tensor<2>, Option<Tensor<2>>) {
        check_channels("EqualLinear", "x", &x.dims(), self.in_features());
        // The scale multiplies the `[batch, out]` product, not the `[out, in]` weight: a
        // weight-sized pass and buffer fewer per call, forward and backward (D's 8192 → 512
        // linear layer and the generator's 2048 → 512 modulations are millions of weights).
        // `(W·xᵀ)ᵀ` rather than `x·Wᵀ`: the same products, but autodiff then returns the
        // weight's gradient as `gᵀ·x`, contiguous `[out, in]`. From `x·Wᵀ` it is `(xᵀ·g)ᵀ`, a
        // transposed view, which the next element-wise operation on it reads as a strided
        // gather on one thread: 5.7 % of a 128-px training profile's samples when that was the
        // weight scale's product (`docs/performance.md`, sixth round).
        self.finish(self.weight.val().matmul(x.transpose()).transpose() * self.scale)
    }

    /// The input vector-Jacobian product of [`EqualLinear::forward`]: through the activation
    /// (a constant mask from `pre`), then `g · (W·scale)`. Differentiable in the weight, for R1.
    ///
    /// # Shapes
    /// - `pre`: `[batch, out]` from [`EqualLinear::forward_taped`] (`None` without activation)
    /// - `g`: `[batch, out]`; output: `[batch, in]`
    pub fn input_vjp(&self, pre: Option<&Tensor<2>>, g: Tensor<2>) -> Tensor<2> {
        let g = match pre {
            Some(pre) => leaky_relu_vjp(pre, g),
            None => g,
        };
        (g * self.scale).matmul(self.weight.val())
    }

    /// The same map applied per pixel (a 1×1 convolution), as the official layer does for a 4-D
    /// input.
    ///
    /// # Shapes
    /// - `x`: `[batch, in, h, w]`; output: `[batch, out, h, w]`
    ///
    /// # Panics
    /// If `x` does not have `in` channels or is empty.
    pub fn forward_spatial(&self, x: Tensor<4>) -> Tensor<4> {
        check_channels("EqualLinear", "x", &x.dims(), self.in_features());
        check_nonempty("EqualLinear", "x", &x.dims());
        let [out, inp] = self.weight.dims();
        let w = self.weight.val().reshape([out, inp, 1, 1]);
        self.finish(conv2d(x, w, 1, 0, self.scale as f32)).0
    }
}
