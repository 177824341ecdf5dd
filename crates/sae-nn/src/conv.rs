//! `ConvLayer` and `ResBlock` (spec 1.5, 1.6): the convolutions of E, D and Dpatch.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Device;
use burn::tensor::Tensor;
use burn::tensor::ops::PadMode;

use crate::act::{FusedLeakyReLU, FusedLeakyReLUConfig, scaled_leaky_relu};
use crate::equal::{EqualConv2d, EqualConv2dConfig};
use crate::fir::{Blur, BlurConfig};

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
    /// `√2`-leaky-ReLU without bias (`activate` without `bias`; unused by SAE's networks).
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
            x.pad((p, p, p, p), PadMode::Reflect)
        } else {
            x
        };
        let x = self.conv.forward(x);
        match &self.act {
            Some(act) => act.forward(x),
            None if self.scaled_act => scaled_leaky_relu(x),
            None => x,
        }
    }
}

/// Configuration of a [`ResBlock`].
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
        let y = self.conv2.forward(self.conv1.forward(x.clone()));
        (y + self.skip.forward(x)) / std::f64::consts::SQRT_2
    }
}
