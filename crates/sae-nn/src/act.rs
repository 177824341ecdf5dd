//! Activations and code normalisation (official `models/networks/stylegan2_op/fused_act.py` and
//! `util/util.py::normalize`).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::activation::leaky_relu;
use burn::tensor::{Device, Tensor};

use crate::act_op::bias_lrelu;
use crate::shape::check_channels;

/// Negative slope of every leaky ReLU in the model.
pub const LRELU_SLOPE: f64 = 0.2;
/// Gain applied after every leaky ReLU (`2**0.5`), so activations keep unit variance.
pub const LRELU_GAIN: f64 = std::f64::consts::SQRT_2;

/// `[1, C, 1, …]`: the shape that broadcasts a per-channel vector over dim 1 of a rank-`D` tensor.
pub(crate) fn channel_shape<const D: usize>(channels: usize) -> [usize; D] {
    let mut shape = [1; D];
    shape[1] = channels;
    shape
}

/// `√2 · lrelu(x + bias[c], 0.2)`, the official `fused_leaky_relu`, on a tensor of any rank ≥ 2
/// whose dim 1 is the channel dimension.
///
/// # Shapes
/// - `x`: `[batch, channels, ...]`
/// - `bias`: `[channels]`
/// - output: same as `x`
///
/// # Panics
/// If `bias` does not have one entry per channel of `x`.
pub fn fused_leaky_relu<const D: usize>(x: Tensor<D>, bias: Option<Tensor<1>>) -> Tensor<D> {
    match bias {
        Some(bias) => {
            check_channels("fused_leaky_relu", "x", &x.dims(), bias.dims()[0]);
            bias_lrelu(x, bias)
        }
        None => scaled_leaky_relu(x),
    }
}

/// `x + bias` broadcast over dimension 1: the pre-activation of [`fused_leaky_relu`].
pub fn add_channel_bias<const D: usize>(x: Tensor<D>, bias: Option<Tensor<1>>) -> Tensor<D> {
    match bias {
        Some(bias) => {
            let channels = bias.dims()[0];
            check_channels("fused_leaky_relu", "x", &x.dims(), channels);
            x + bias.reshape(channel_shape::<D>(channels))
        }
        None => x,
    }
}

/// `√2 · lrelu(x, 0.2)`: the official `ScaledLeakyReLU`, chosen by a `ConvLayer` that activates
/// without a bias.
pub fn scaled_leaky_relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN
}

/// The input vector-Jacobian product of [`scaled_leaky_relu`] at the pre-activation `pre`:
/// `g · √2 · (1 where pre > 0, else 0.2)`. Only the signs of `pre` matter, so the activation's
/// output serves as well.
///
/// The mask is built from `pre.detach()`, so it is a constant of the returned expression. That
/// is exact for R1: the leaky ReLU is piecewise linear, its second derivative is zero almost
/// everywhere, and PyTorch's `create_graph` gradient also treats the slope as a constant. The
/// result stays differentiable in `g` (and so in the weights that produced `g`), which is what
/// first-order autodiff needs to differentiate a gradient penalty.
///
/// # Shapes
/// - `pre`, `g`, output: the same shape
pub fn leaky_relu_vjp<const D: usize>(pre: &Tensor<D>, g: Tensor<D>) -> Tensor<D> {
    let positive = pre.clone().detach().greater_elem(0.0).float();
    let slope = positive * ((1.0 - LRELU_SLOPE) * LRELU_GAIN) + LRELU_SLOPE * LRELU_GAIN;
    g * slope
}

/// `util.normalize`: L2 normalisation over dim 1 with `1e-8` inside the square root. For a 4-D
/// structure code this is per pixel, for a texture code per sample.
///
/// # Shapes
/// - `x`: `[batch, channels, ...]`; output: same
pub fn normalize<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let norm_sq = (x.clone() * x.clone()).sum_dim(1);
    x * (norm_sq + 1e-8).sqrt().recip()
}

/// Configuration of a [`FusedLeakyReLU`].
#[derive(Config, Debug)]
pub struct FusedLeakyReLUConfig {
    /// Number of channels (length of the bias).
    pub channels: usize,
}

impl FusedLeakyReLUConfig {
    /// A bias initialised to zero, as in the official code.
    pub fn init(&self, device: &Device) -> FusedLeakyReLU {
        FusedLeakyReLU {
            bias: Initializer::Zeros.init([self.channels], device),
        }
    }
}

/// The official `FusedLeakyReLU(C)`: a learnable per-channel bias added before a `√2`-scaled
/// leaky ReLU. State key: `bias` (`Act.bias` / `activate.bias` in the official files).
#[derive(Module, Debug)]
pub struct FusedLeakyReLU {
    /// Per-channel bias, shape `[channels]`.
    pub bias: Param<Tensor<1>>,
}

impl FusedLeakyReLU {
    /// Applies `√2 · lrelu(x + bias)`.
    ///
    /// # Shapes
    /// - `x`: `[batch, channels, ...]`; output: same
    ///
    /// # Panics
    /// If dim 1 of `x` is not `channels`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        fused_leaky_relu(x, Some(self.bias.val()))
    }
}
