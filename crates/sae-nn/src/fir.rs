//! FIR kernels, `upfirdn2d`, and the `Blur` / `Upsample` layers built on them (official
//! `models/networks/stylegan2_op/upfirdn2d.py` and `models/networks/stylegan2_layers.py`).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::module::conv2d;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::fir_op::fir_depthwise;
use crate::pad_op::reflect_pad;
use crate::shape::check_nonempty;

/// A separable 2-D FIR kernel: `K = gain · outer(t, t) / sum(outer(t, t))` for 1-D taps `t`
/// (the official `make_kernel`, times the upsampling gain where there is one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FirKernel {
    /// The 1-D taps, e.g. `[1, 3, 3, 1]`.
    pub taps: Vec<f32>,
    /// Multiplier of the normalised kernel (`factor²` for upsampling kernels, else 1).
    pub gain: f32,
}

impl FirKernel {
    /// `make_kernel(taps)`, entries summing to 1.
    ///
    /// # Panics
    /// If `taps` is empty or sums to zero.
    pub fn new(taps: &[f32]) -> Self {
        assert!(!taps.is_empty(), "FirKernel: the taps must not be empty");
        assert!(
            taps.iter().sum::<f32>() != 0.0,
            "FirKernel: the taps {taps:?} sum to zero and cannot be normalised"
        );
        Self {
            taps: taps.to_vec(),
            gain: 1.0,
        }
    }

    /// The same kernel with its entries multiplied by `gain`.
    pub fn with_gain(mut self, gain: f32) -> Self {
        self.gain = gain;
        self
    }

    /// Kernel side.
    pub fn size(&self) -> usize {
        self.taps.len()
    }

    /// Whether the kernel is the 1×1 identity (the "no antialias" `[1]` kernel).
    pub fn is_identity(&self) -> bool {
        self.taps.len() == 1 && self.gain == 1.0
    }

    /// The 2-D kernel, row-major `[k, k]`, as the official `make_kernel(taps) · gain` (the value
    /// of the `Blur.kernel` buffers in an official checkpoint).
    pub fn values(&self) -> Vec<f32> {
        let k = self.taps.len();
        let total: f32 = self.taps.iter().sum::<f32>().powi(2);
        let mut out = Vec::with_capacity(k * k);
        for a in &self.taps {
            for b in &self.taps {
                out.push(a * b / total * self.gain);
            }
        }
        out
    }

    /// The same kernel reversed on both axes (the adjoint filter).
    pub fn reversed(&self) -> Self {
        Self {
            taps: self.taps.iter().rev().copied().collect(),
            gain: self.gain,
        }
    }

    /// Depthwise conv weight `[channels, 1, k, k]`, flipped on both axes so that Burn's
    /// cross-correlation computes upfirdn2d's true convolution.
    pub fn depthwise_weight(&self, channels: usize, device: &Device) -> Tensor<4> {
        let k = self.size();
        let values = self.values();
        let mut flipped = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..k {
                flipped[i * k + j] = values[(k - 1 - i) * k + (k - 1 - j)];
            }
        }
        let kernel: Tensor<4> = Tensor::from_data(TensorData::new(flipped, [1, 1, k, k]), device);
        kernel.expand([channels, 1, k, k])
    }
}

/// Inserts `up − 1` zeros after every sample on both spatial axes.
fn zero_stuff(x: Tensor<4>, up: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let device = x.device();
    let x = x.reshape([b, c, h, 1, w, 1]);
    let x = Tensor::cat(vec![x, Tensor::zeros([b, c, h, up - 1, w, 1], &device)], 3);
    let x = Tensor::cat(vec![x, Tensor::zeros([b, c, h, up, w, up - 1], &device)], 5);
    x.reshape([b, c, h * up, w * up])
}

/// `upfirdn2d(x, K, up, down, pad = (p0, p1))` per channel, the same pad on both axes: zero-stuff
/// by `up`, pad `p0` before and `p1` after (a negative pad crops), true convolution with `K`
/// ("valid"), keep every `down`-th sample from index 0.
///
/// Built from a slice and a depthwise `conv2d` with asymmetric padding and stride `down`, which
/// differentiate (twice) on every backend.
///
/// # Shapes
/// - `x`: `[batch, channels, h, w]`
/// - output: `[batch, channels, (h·up + p0 + p1 − k) / down + 1, (same for w)]`
///
/// # Panics
/// If `up` or `down` is zero, `x` has a zero-size dimension, or the padded input is smaller than
/// the kernel.
pub fn upfirdn2d(
    x: Tensor<4>,
    kernel: &FirKernel,
    up: usize,
    down: usize,
    pad: [i64; 2],
) -> Tensor<4> {
    assert!(
        up > 0 && down > 0,
        "upfirdn2d: up ({up}) and down ({down}) must be ≥ 1"
    );
    check_nonempty("upfirdn2d", "x", &x.dims());
    let [_, c, h, w] = x.dims();
    let k = kernel.size() as i64;
    let [p0, p1] = pad;
    for (axis, len) in [("height", h), ("width", w)] {
        let padded = (len * up) as i64 + p0 + p1;
        assert!(
            padded >= k,
            "upfirdn2d: {axis} {len}·{up} padded by ({p0}, {p1}) is {padded}, smaller than the {k}-tap kernel"
        );
    }
    let x = if up > 1 { zero_stuff(x, up) } else { x };
    // Negative pads crop; positive pads go into the convolution's own (asymmetric) zero padding.
    let x = if p0 < 0 || p1 < 0 {
        let [b, _, h, w] = x.dims();
        let (c0, c1) = ((-p0).max(0) as usize, (-p1).max(0) as usize);
        x.slice([0..b, 0..c, c0..h - c1, c0..w - c1])
    } else {
        x
    };
    let (q0, q1) = (p0.max(0) as usize, p1.max(0) as usize);
    if kernel.is_identity() && down == 1 {
        // A 1x1 unit kernel only pads: skip the convolution (the encoder's global branch).
        return if q0 > 0 || q1 > 0 {
            x.pad((q0, q1, q0, q1), PadMode::Constant(0.0))
        } else {
            x
        };
    }
    let device = x.device();
    let weight = kernel.depthwise_weight(c, &device);
    if down == 1 && q0 < kernel.size() && q1 < kernel.size() {
        // Every blur of the networks: the operation whose backward pass is a depthwise conv
        // too (`fir_op`), not Burn's generic transposed conv.
        let reversed = kernel.reversed().depthwise_weight(c, &device);
        return fir_depthwise(x, weight, reversed, [q0, q1]);
    }
    conv2d(
        x,
        weight,
        None,
        ConvOptions::new_with_padding([down, down], [(q0, q1), (q0, q1)], [1, 1], c),
    )
}

/// Configuration of a [`Blur`].
#[derive(Config, Debug)]
pub struct BlurConfig {
    /// 1-D taps of the kernel, e.g. `[1, 3, 3, 1]`.
    pub kernel: Vec<f32>,
    /// `(p0, p1)`: padding before (left/top) and after (right/bottom); negative crops.
    pub pad: [i64; 2],
    /// Upsampling factor the blur follows; the kernel is multiplied by its square when > 1.
    #[config(default = 1)]
    pub upsample_factor: usize,
    /// Reflection-pad by `(p0, p1)` first and blur without padding (the encoder's blur).
    #[config(default = false)]
    pub reflection_pad: bool,
}

impl BlurConfig {
    /// Builds the layer; it has no parameters (the official `kernel` buffer is a constant).
    ///
    /// # Panics
    /// If `reflection_pad` is set with a negative pad, or the kernel taps are empty.
    pub fn init(&self, _device: &Device) -> Blur {
        assert!(
            !self.reflection_pad || (self.pad[0] >= 0 && self.pad[1] >= 0),
            "Blur: reflection padding needs non-negative pads, got {:?}",
            self.pad
        );
        let gain = if self.upsample_factor > 1 {
            (self.upsample_factor * self.upsample_factor) as f32
        } else {
            1.0
        };
        Blur {
            kernel: FirKernel::new(&self.kernel).with_gain(gain),
            pad: self.pad,
            reflection_pad: self.reflection_pad,
        }
    }
}

/// The official `Blur`: `upfirdn2d(x, kernel, pad)`, or reflection padding followed by an
/// unpadded blur.
#[derive(Module, Debug)]
pub struct Blur {
    /// The FIR kernel (the official `kernel` buffer, recomputed).
    #[module(skip)]
    pub kernel: FirKernel,
    /// `(p0, p1)` padding.
    pub pad: [i64; 2],
    /// Reflection instead of zero padding.
    pub reflection_pad: bool,
}

impl Blur {
    /// Applies the blur.
    ///
    /// # Shapes
    /// - `x`: `[batch, channels, h, w]`
    /// - output: `[batch, channels, h + p0 + p1 − k + 1, w + p0 + p1 − k + 1]`
    ///
    /// # Panics
    /// If the input is empty or too small for the kernel, or (reflection) not larger than the pad.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if !self.reflection_pad {
            return upfirdn2d(x, &self.kernel, 1, 1, self.pad);
        }
        check_nonempty("Blur", "x", &x.dims());
        let [_, _, h, w] = x.dims();
        let (p0, p1) = (self.pad[0] as usize, self.pad[1] as usize);
        assert!(
            p0.max(p1) < h.min(w),
            "Blur: reflection pad ({p0}, {p1}) must be smaller than the input size {h}x{w}"
        );
        let x = reflect_pad(x, [p0, p1]);
        upfirdn2d(x, &self.kernel, 1, 1, [0, 0])
    }

    /// The input vector-Jacobian product of [`Blur::forward`] (zero padding only): the adjoint
    /// of a stride-1 FIR filter is the same filter reversed, with the complementary padding
    /// `k − 1 − pad` on each side (a negative value crops, the adjoint of zero padding). It is
    /// made of ordinary differentiable ops, so R1 can differentiate through it (official
    /// `models/swapping_autoencoder_model.py::compute_R1_loss`).
    ///
    /// # Shapes
    /// - `g`: the shape of the forward output; output: the shape of the forward input
    ///
    /// # Panics
    /// With reflection padding, which only the encoder uses and R1 never differentiates.
    pub fn input_vjp(&self, g: Tensor<4>) -> Tensor<4> {
        assert!(
            !self.reflection_pad,
            "Blur::input_vjp: reflection padding has no input VJP (only the encoder uses it)"
        );
        let k = self.kernel.size() as i64;
        upfirdn2d(
            g,
            &self.kernel.reversed(),
            1,
            1,
            [k - 1 - self.pad[0], k - 1 - self.pad[1]],
        )
    }
}

/// Configuration of an [`Upsample`].
#[derive(Config, Debug)]
pub struct UpsampleConfig {
    /// 1-D taps of the interpolation kernel.
    #[config(default = "vec![1.0, 3.0, 3.0, 1.0]")]
    pub kernel: Vec<f32>,
    /// Upsampling factor.
    #[config(default = 2)]
    pub factor: usize,
}

impl UpsampleConfig {
    /// Builds the layer (no parameters).
    pub fn init(&self, _device: &Device) -> Upsample {
        let f = self.factor as i64;
        let p = self.kernel.len() as i64 - f;
        Upsample {
            kernel: FirKernel::new(&self.kernel).with_gain((self.factor * self.factor) as f32),
            factor: self.factor,
            pad: [(p + 1).div_euclid(2) + f - 1, p.div_euclid(2)],
        }
    }
}

/// The official `Upsample`: `upfirdn2d(x, make_kernel(k)·factor², up = factor, pad)` with
/// `p = len(k) − factor`, `pad = ((p+1)//2 + factor − 1, p//2)`. In SAE it exists only as the
/// never-called `G.ToRGB.upsample`; it is here so that buffer has a meaning.
#[derive(Module, Debug)]
pub struct Upsample {
    /// Kernel, gain `factor²`.
    #[module(skip)]
    pub kernel: FirKernel,
    /// Upsampling factor.
    pub factor: usize,
    /// `(p0, p1)` padding.
    pub pad: [i64; 2],
}

impl Upsample {
    /// # Shapes
    /// - `x`: `[batch, channels, h, w]`; output: `[batch, channels, h·factor, w·factor]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        upfirdn2d(x, &self.kernel, self.factor, 1, self.pad)
    }
}
