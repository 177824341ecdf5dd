//! `ConvLayer` and `ResBlock` (official `models/networks/stylegan2_layers.py`): the convolutions
//! of E, D and Dpatch.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Device;
use burn::tensor::Tensor;

use crate::act::{FusedLeakyReLU, FusedLeakyReLUConfig, leaky_relu_vjp, scaled_leaky_relu};
use crate::equal::{EqualConv2d, EqualConv2dConfig};
use crate::fir::{Blur, BlurConfig};
use crate::pad_op::reflect_pad;

/// Configuration of a [`ConvLayer`], with the official constructor's arguments and defaults.
#[derive(Config, Debug)]
pub struct ConvLayerConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Square kernel side.
    pub kernel_size: usize,
    /// Blur, then a stride-2 unpadded conv.
    #[config(default = false)]
    pub downsample: bool,
    /// 1-D taps of the blur (`[1, 2, 1]` in E, `[1, 3, 3, 1]` in D/Dpatch, `[1]` for none).
    #[config(default = "vec![1.0, 3.0, 3.0, 1.0]")]
    pub blur_kernel: Vec<f32>,
    /// A bias: on the activation when `activate`, else on the conv.
    #[config(default = true)]
    pub bias: bool,
    /// Follow the conv with a `√2`-leaky-ReLU.
    #[config(default = true)]
    pub activate: bool,
    /// Explicit padding: the blur's total pad when downsampling, else the conv's pad. `None`
    /// takes the official default (`len(blur) − 2 + k − 1`, or `k // 2`).
    #[config(default = "None")]
    pub pad: Option<usize>,
    /// Reflection instead of zero padding (the encoder).
    #[config(default = false)]
    pub reflection_pad: bool,
}

impl ConvLayerConfig {
    /// Builds the layer.
    ///
    /// # Panics
    /// If `kernel_size` or a channel count is zero, or the blur taps are empty.
    pub fn init(&self, device: &Device) -> ConvLayer {
        assert!(
            self.kernel_size > 0 && self.in_channels > 0 && self.out_channels > 0,
            "ConvLayer: kernel size and channel counts must be positive, got {self:?}"
        );
        let k = self.kernel_size;
        let (blur, ref_pad, conv_pad, stride) = if self.downsample {
            let p = self.pad.unwrap_or(self.blur_kernel.len() + k - 3) as i64;
            let blur = BlurConfig::new(self.blur_kernel.clone(), [(p + 1) / 2, p / 2])
                .with_reflection_pad(self.reflection_pad)
                .init(device);
            (Some(blur), 0, 0, 2)
        } else {
            let p = self.pad.unwrap_or(k / 2);
            if self.reflection_pad {
                (None, p, 0, 1)
            } else {
                (None, 0, p, 1)
            }
        };
        ConvLayer {
            blur,
            ref_pad,
            conv: EqualConv2dConfig::new(self.in_channels, self.out_channels, k)
                .with_stride(stride)
                .with_padding(conv_pad)
                .with_bias(self.bias && !self.activate)
                .init(device),
            act: (self.activate && self.bias)
                .then(|| FusedLeakyReLUConfig::new(self.out_channels).init(device)),
            scaled_act: self.activate && !self.bias,
        }
    }
}

/// The official `ConvLayer`, an `nn.Sequential` of `[Blur | RefPad], Conv, [Act]`.
///
/// State keys (official → here): `Conv.weight` → `conv.weight`, `Conv.bias` → `conv.bias`,
/// `Act.bias` → `act.bias`; the `Blur.kernel` buffer is recomputed.
#[derive(Module, Debug)]
pub struct ConvLayer {
    /// Blur before a downsampling conv.
    pub blur: Option<Blur>,
    /// Reflection padding before the conv (0: none).
    pub ref_pad: usize,
    /// The convolution.
    pub conv: EqualConv2d,
    /// Bias + `√2`-leaky-ReLU.
    pub act: Option<FusedLeakyReLU>,
    /// `√2`-leaky-ReLU without bias: the official `ConvLayer(activate=True, bias=False)`
    /// (`ScaledLeakyReLU`). SAE's networks do not use it, but it is the official layer's
    /// behaviour and the parity fixture `conv_layer_k3_act_nobias` checks it.
    pub scaled_act: bool,
}

impl ConvLayer {
    /// # Shapes
    /// - `x`: `[batch, in, h, w]`
    /// - output: `[batch, out, h', w']` with `h' = h` for a padded stride-1 layer and
    ///   `h' = ⌊h/2⌋` for the downsampling variants (for even `h`, exactly `h/2`)
    ///
    /// # Panics
    /// If `x` has the wrong channel count, a zero-size dimension, or is too small for the
    /// kernel or the reflection pad.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_taped(x).0
    }

    /// [`ConvLayer::forward`], also returning what [`ConvLayer::input_vjp`] needs.
    ///
    /// # Shapes
    /// - `x`: `[batch, in_channels, h, w]`; output: as [`ConvLayer::forward`]
    pub fn forward_taped(&self, x: Tensor<4>) -> (Tensor<4>, ConvLayerTape) {
        let x = match &self.blur {
            Some(blur) => blur.forward(x),
            None => x,
        };
        let x = if self.ref_pad > 0 {
            let [_, _, h, w] = x.dims();
            let p = self.ref_pad;
            assert!(
                p < h.min(w),
                "ConvLayer: reflection pad {p} must be smaller than the input size {h}x{w}"
            );
            reflect_pad(x, [p, p])
        } else {
            x
        };
        let [_, _, h, w] = x.dims();
        let x = self.conv.forward(x);
        let (y, pre) = match &self.act {
            Some(act) => {
                // The VJP reads only the sign of the pre-activation, which the output shares.
                let y = act.forward(x);
                (y.clone(), Some(y))
            }
            None if self.scaled_act => (scaled_leaky_relu(x.clone()), Some(x)),
            None => (x, None),
        };
        let tape = ConvLayerTape {
            conv_input: [h, w],
            pre,
        };
        (y, tape)
    }

    /// The input vector-Jacobian product `gᵀ·∂forward/∂x`, built from ordinary differentiable
    /// ops (activation mask, transposed conv, reversed blur), so that a gradient penalty on it
    /// can be differentiated with first-order autodiff (exact R1, official
    /// `models/swapping_autoencoder_model.py::compute_R1_loss`).
    ///
    /// # Shapes
    /// - `g`: the forward output's shape; output: the forward input's shape
    ///
    /// # Panics
    /// For reflection-padded layers (encoder only; R1 never differentiates the encoder).
    pub fn input_vjp(&self, tape: &ConvLayerTape, g: Tensor<4>) -> Tensor<4> {
        assert!(
            self.ref_pad == 0,
            "ConvLayer::input_vjp: reflection padding has no input VJP (only the encoder uses it)"
        );
        let g = match &tape.pre {
            Some(pre) => leaky_relu_vjp(pre, g),
            None => g,
        };
        let g = self.conv.input_vjp(g, tape.conv_input);
        match &self.blur {
            Some(blur) => blur.input_vjp(g),
            None => g,
        }
    }
}

/// What a [`ConvLayer`]'s forward pass leaves for its input-VJP.
#[derive(Clone, Debug)]
pub struct ConvLayerTape {
    /// The conv's input size (after blur and padding).
    pub conv_input: [usize; 2],
    /// When the layer activates: a tensor with the pre-activation's signs (the pre-activation
    /// itself, or the activation's output, which has the same signs), for
    /// [`leaky_relu_vjp`](crate::act::leaky_relu_vjp).
    pub pre: Option<Tensor<4>>,
}

#[derive(Config, Debug)]
pub struct ResBlockConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Blur taps of the downsampling convs.
    #[config(default = "vec![1.0, 3.0, 3.0, 1.0]")]
    pub blur_kernel: Vec<f32>,
    /// Reflection padding in `conv1` and `conv2` (never in the skip).
    #[config(default = false)]
    pub reflection_pad: bool,
    /// Explicit pad of `conv1` and `conv2` (see [`ConvLayerConfig::pad`]).
    #[config(default = "None")]
    pub pad: Option<usize>,
    /// Halve the resolution.
    #[config(default = true)]
    pub downsample: bool,
}

impl ResBlockConfig {
    /// Builds the block.
    pub fn init(&self, device: &Device) -> ResBlock {
        let (cin, cout) = (self.in_channels, self.out_channels);
        ResBlock {
            conv1: ConvLayerConfig::new(cin, cin, 3)
                .with_reflection_pad(self.reflection_pad)
                .with_pad(self.pad)
                .init(device),
            conv2: ConvLayerConfig::new(cin, cout, 3)
                .with_downsample(self.downsample)
                .with_blur_kernel(self.blur_kernel.clone())
                .with_reflection_pad(self.reflection_pad)
                .with_pad(self.pad)
                .init(device),
            skip: ConvLayerConfig::new(cin, cout, 1)
                .with_downsample(self.downsample)
                .with_blur_kernel(self.blur_kernel.clone())
                .with_activate(false)
                .with_bias(false)
                .init(device),
        }
    }
}

/// The official `ResBlock`: `(conv2(conv1(x)) + skip(x)) / √2`. `conv1` keeps the channel count;
/// `conv2` changes it (and downsamples); the skip is always a bias-free 1×1 conv.
/// State keys: `conv1.*`, `conv2.*`, `skip.*` (each a [`ConvLayer`]).
#[derive(Module, Debug)]
pub struct ResBlock {
    /// 3×3, in → in.
    pub conv1: ConvLayer,
    /// 3×3, in → out, downsampling.
    pub conv2: ConvLayer,
    /// 1×1, in → out, downsampling, no bias or activation.
    pub skip: ConvLayer,
}

impl ResBlock {
    /// # Shapes
    /// - `x`: `[batch, in, h, w]`
    /// - output: `[batch, out, ⌊h/2⌋, ⌊w/2⌋]` (downsampling) or `[batch, out, h, w]`
    ///
    /// # Panics
    /// As [`ConvLayer::forward`].
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_taped(x).0
    }

    /// [`ResBlock::forward`], also returning what [`ResBlock::input_vjp`] needs.
    pub fn forward_taped(&self, x: Tensor<4>) -> (Tensor<4>, ResBlockTape) {
        let (h, conv1) = self.conv1.forward_taped(x.clone());
        let (y, conv2) = self.conv2.forward_taped(h);
        let (skip_y, skip) = self.skip.forward_taped(x);
        let tape = ResBlockTape { conv1, conv2, skip };
        ((y + skip_y) / std::f64::consts::SQRT_2, tape)
    }

    /// The input vector-Jacobian product of [`ResBlock::forward`] (see
    /// [`ConvLayer::input_vjp`]): both branches' VJPs, summed and divided by √2.
    ///
    /// # Shapes
    /// - `g`: the forward output's shape; output: the forward input's shape
    pub fn input_vjp(&self, tape: &ResBlockTape, g: Tensor<4>) -> Tensor<4> {
        let g = g / std::f64::consts::SQRT_2;
        let main = self
            .conv1
            .input_vjp(&tape.conv1, self.conv2.input_vjp(&tape.conv2, g.clone()));
        main + self.skip.input_vjp(&tape.skip, g)
    }
}

/// What a [`ResBlock`]'s forward pass leaves for its input-VJP.
#[derive(Clone, Debug)]
pub struct ResBlockTape {
    /// First conv.
    pub conv1: ConvLayerTape,
    /// Second conv.
    pub conv2: ConvLayerTape,
    /// Skip conv.
    pub skip: ConvLayerTape,
}
