//! The generator's style-modulated layers (official `models/networks/stylegan2_layers.py` and
//! `models/networks/generator.py`): `ModulatedConv2d` with the official "new demodulation",
//! `StyledConv`, `ToRGB` and `GeneratorModulation`.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

use crate::act::FusedLeakyReLU;
use crate::act::FusedLeakyReLUConfig;
use crate::conv_op::{conv2d, conv2d_input_grad};
use crate::equal::{EqualLinear, EqualLinearConfig, STANDARD_NORMAL};
use crate::fir::{Blur, BlurConfig};
use crate::noise::{Noise, NoiseInjection, NoiseInjectionConfig};
use crate::resample::bilinear_resize;
use crate::shape::{check_batch, check_channels, check_nonempty};

/// A texture code as the generator's layers consume it.
// A style lives for one generator call and is passed by reference: the size of its largest
// variant costs nothing that boxing it would save.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Style {
    /// One code per image, `[batch, style_dim]`.
    Global(Tensor<2>),
    /// A spatially varying code `[batch, style_dim, h, w]`, bilinearly resized
    /// (`align_corners=False`) to each layer's input size. The official code supports only
    /// batch 1 here; this works for any batch and equals it at batch 1.
    Spatial(Tensor<4>),
    /// The spatially varying code `wa·a + wb·b` with per-pixel weights: region editing (two
    /// textures and a mask) without materialising a `[batch, style_dim, h, w]` code. Every
    /// layer resizes the code bilinearly and maps it linearly, and both are linear in the
    /// weights, so resizing the two 1-channel weight maps and combining the two mapped codes
    /// is the same function as [`Style::Spatial`] of the explicit code, at the cost of the
    /// layer's output channels instead of `style_dim` per pixel.
    ///
    /// - `a`, `b`: `[batch, style_dim]`; `wa`, `wb`: `[batch, 1, h, w]`
    Blend {
        /// The first code.
        a: Tensor<2>,
        /// The second code.
        b: Tensor<2>,
        /// Its weight per pixel.
        wa: Tensor<4>,
        /// The second code's weight per pixel.
        wb: Tensor<4>,
    },
}

impl Style {
    /// The code's batch size.
    pub fn batch(&self) -> usize {
        match self {
            Style::Global(g) => g.dims()[0],
            Style::Spatial(g) => g.dims()[0],
            Style::Blend { a, .. } => a.dims()[0],
        }
    }

    fn dims(&self) -> Vec<usize> {
        match self {
            Style::Global(g) => g.dims().to_vec(),
            Style::Spatial(g) => g.dims().to_vec(),
            Style::Blend { a, wa, .. } => {
                let [b, d] = a.dims();
                let [_, _, h, w] = wa.dims();
                vec![b, d, h, w]
            }
        }
    }

    /// The code L2-normalised per pixel (per sample for a global code), as the generator
    /// takes it (`sae_nn::normalize`). For [`Style::Blend`] the weights are divided by the
    /// norm of `wa·a + wb·b`, computed per pixel from `|a|²`, `a·b` and `|b|²`.
    pub fn normalized(self) -> Style {
        match self {
            Style::Global(g) => Style::Global(crate::normalize(g)),
            Style::Spatial(g) => Style::Spatial(crate::normalize(g)),
            Style::Blend { a, b, wa, wb } => {
                let [n, _] = a.dims();
                let dot = |x: &Tensor<2>, y: &Tensor<2>| {
                    (x.clone() * y.clone()).sum_dim(1).reshape([n, 1, 1, 1])
                };
                let (aa, ab, bb) = (dot(&a, &a), dot(&a, &b), dot(&b, &b));
                let norm_sq = wa.clone() * wa.clone() * aa
                    + wa.clone() * wb.clone() * ab * 2.0
                    + wb.clone() * wb.clone() * bb;
                let inv = (norm_sq + 1e-8).sqrt().recip();
                Style::Blend {
                    a,
                    b,
                    wa: wa * inv.clone(),
                    wb: wb * inv,
                }
            }
        }
    }

    /// Applies `linear` to the code and returns it as a per-pixel factor for an input of spatial
    /// size `size`: `[batch, out, 1, 1]` for a global code, `[batch, out, h, w]` for a spatial one.
    ///
    /// For a spatial code the official layers resize the code to `size` and then apply the
    /// linear map per pixel. Both steps are linear and the interpolation weights sum to one, so
    /// mapping first (at the code's low resolution) and resizing the result is the same function
    /// at a fraction of the cost (`out` channels are resized instead of `style_dim`).
    fn project(&self, linear: &EqualLinear, size: [usize; 2]) -> Tensor<4> {
        match self {
            Style::Global(g) => {
                let s = linear.forward(g.clone());
                let [b, c] = s.dims();
                s.reshape([b, c, 1, 1])
            }
            Style::Spatial(g) => bilinear_resize(linear.forward_spatial(g.clone()), size),
            Style::Blend { a, b, wa, wb } => {
                // W(wa·a + wb·b) + bias = wa·(lin(a) − lin(0)) + wb·(lin(b) − lin(0)) + lin(0).
                let [n, d] = a.dims();
                let zero = linear.forward(Tensor::zeros([1, d], &a.device()));
                let c = zero.dims()[1];
                let mapped = |x: &Tensor<2>| {
                    (linear.forward(x.clone()) - zero.clone()).reshape([n, c, 1, 1])
                };
                let (la, lb) = (mapped(a), mapped(b));
                let (ra, rb) = (
                    bilinear_resize(wa.clone(), size),
                    bilinear_resize(wb.clone(), size),
                );
                ra * la + rb * lb + zero.reshape([1, c, 1, 1])
            }
        }
    }
}

/// Divides `s` by its root mean square over dim 1 (with `1e-8` inside the root).
fn rms_normalize(s: Tensor<4>) -> Tensor<4> {
    let ms = (s.clone() * s.clone()).mean_dim(1);
    s * (ms + 1e-8).sqrt().recip()
}

/// Configuration of a [`ModulatedConv2d`].
#[derive(Config, Debug)]
pub struct ModulatedConv2dConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Square kernel side.
    pub kernel_size: usize,
    /// Style (texture code) dimension.
    pub style_dim: usize,
    /// RMS-normalise the style and give every filter unit norm.
    #[config(default = true)]
    pub demodulate: bool,
    /// Upsample ×2 (transposed conv, then blur).
    #[config(default = false)]
    pub upsample: bool,
    /// 1-D taps of the blur after the upsampling conv.
    #[config(default = "vec![1.0, 3.0, 3.0, 1.0]")]
    pub blur_kernel: Vec<f32>,
}

impl ModulatedConv2dConfig {
    /// Weight `N(0, 1)`; the modulation's bias starts at 1.
    pub fn init(&self, device: &Device) -> ModulatedConv2d {
        let k = self.kernel_size;
        let blur = self.upsample.then(|| {
            // Official: p = (len(blur) − factor) − (k − 1), pad ((p+1)//2 + 1, p//2 + 1).
            let p = self.blur_kernel.len() as i64 - 2 - (k as i64 - 1);
            BlurConfig::new(
                self.blur_kernel.clone(),
                [(p + 1).div_euclid(2) + 1, p.div_euclid(2) + 1],
            )
            .with_upsample_factor(2)
            .init(device)
        });
        ModulatedConv2d {
            weight: STANDARD_NORMAL.init([self.out_channels, self.in_channels, k, k], device),
            modulation: EqualLinearConfig::new(self.style_dim, self.in_channels)
                .with_bias_init(1.0)
                .init(device),
            blur,
            demodulate: self.demodulate,
            upsample: self.upsample,
            scale: 1.0 / ((self.in_channels * k * k) as f64).sqrt(),
        }
    }
}

/// The official `ModulatedConv2d` with `new_demodulation = True`.
///
/// The style scales the *input*: `ŝ = s / rms(s)` (demodulated) or `s`; the filters are
/// normalised independently of the style: `Ŵ[o] = cW[o] / ‖cW[o]‖`. The result is one plain
/// convolution `conv(x ⊙ ŝ, Ŵ)` shared by the whole batch: no per-sample weights and no grouped
/// convolution, unlike StyleGAN2's modulated conv.
///
/// State keys: `weight` `[out, in, k, k]` (the official file stores `[1, out, in, k, k]`; the
/// leading 1 is squeezed on import), `modulation.weight` `[in, style_dim]`, `modulation.bias`
/// `[in]`.
#[derive(Module, Debug)]
pub struct ModulatedConv2d {
    /// Raw weight, shape `[out, in, k, k]`.
    pub weight: Param<Tensor<4>>,
    /// Style → per-input-channel scale.
    pub modulation: EqualLinear,
    /// Blur after the upsampling transposed conv (upsampling layers only).
    pub blur: Option<Blur>,
    /// Whether style and filters are normalised.
    pub demodulate: bool,
    /// Whether the layer upsamples ×2.
    pub upsample: bool,
    /// `1/√(in·k²)`.
    pub scale: f64,
}

impl ModulatedConv2d {
    /// The filters the convolution uses: `cW`, each output filter divided by its norm when
    /// demodulating.
    pub fn effective_weight(&self) -> Tensor<4> {
        let w = self.weight.val() * self.scale;
        if !self.demodulate {
            return w;
        }
        let norm_sq = (w.clone() * w.clone()).sum_dims(&[1, 2, 3]);
        w * (norm_sq + 1e-8).sqrt().recip()
    }

    /// The per-pixel input scale `ŝ` for an input of spatial size `size`.
    pub fn input_scale(&self, style: &Style, size: [usize; 2]) -> Tensor<4> {
        let s = style.project(&self.modulation, size);
        if self.demodulate { rms_normalize(s) } else { s }
    }

    /// Applies the modulated convolution.
    ///
    /// # Shapes
    /// - `x`: `[batch, in, h, w]`
    /// - `style`: `[batch, style_dim]` or `[batch, style_dim, h', w']`
    /// - output: `[batch, out, h, w]`, or `[batch, out, 2h, 2w]` when upsampling
    ///
    /// # Panics
    /// If `x` does not have `in` channels or is empty, the style does not have `style_dim`
    /// channels, or the batch sizes differ.
    pub fn forward(&self, x: Tensor<4>, style: &Style) -> Tensor<4> {
        let [out, cin, k, _] = self.weight.dims();
        check_channels("ModulatedConv2d", "x", &x.dims(), cin);
        check_channels(
            "ModulatedConv2d",
            "style",
            &style.dims(),
            self.modulation.in_features(),
        );
        check_batch("ModulatedConv2d", &x.dims(), &style.dims());
        check_nonempty("ModulatedConv2d", "x", &x.dims());
        let [_, _, h, w] = x.dims();
        let x = x * self.input_scale(style, [h, w]);
        let weight = self.effective_weight();
        match &self.blur {
            Some(blur) => {
                // The official transposed convolution (stride 2, no padding): the input
                // gradient of a stride-2 convolution with the [in, out] kernel, whose input is
                // (h − 1)·2 + k rows.
                let t = conv2d_input_grad(
                    x,
                    weight.swap_dims(0, 1),
                    2,
                    0,
                    [(h - 1) * 2 + k, (w - 1) * 2 + k],
                    1.0,
                );
                debug_assert_eq!(t.dims()[1], out);
                blur.forward(t)
            }
            None => {
                let p = k / 2;
                conv2d(x, weight, 1, p, 1.0)
            }
        }
    }
}

/// Configuration of a [`StyledConv`].
#[derive(Config, Debug)]
pub struct StyledConvConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Square kernel side.
    pub kernel_size: usize,
    /// Style dimension.
    pub style_dim: usize,
    /// Upsample ×2.
    #[config(default = false)]
    pub upsample: bool,
    /// Blur taps of the upsampling path.
    #[config(default = "vec![1.0, 3.0, 3.0, 1.0]")]
    pub blur_kernel: Vec<f32>,
    /// Demodulate.
    #[config(default = true)]
    pub demodulate: bool,
    /// Add noise. The `noise.weight` parameter exists either way, as in the official file.
    #[config(default = true)]
    pub use_noise: bool,
}

impl StyledConvConfig {
    /// Builds the layer.
    pub fn init(&self, device: &Device) -> StyledConv {
        StyledConv {
            conv: ModulatedConv2dConfig::new(
                self.in_channels,
                self.out_channels,
                self.kernel_size,
                self.style_dim,
            )
            .with_demodulate(self.demodulate)
            .with_upsample(self.upsample)
            .with_blur_kernel(self.blur_kernel.clone())
            .init(device),
            noise: NoiseInjectionConfig::new().init(device),
            activate: FusedLeakyReLUConfig::new(self.out_channels).init(device),
            use_noise: self.use_noise,
        }
    }
}

/// The official `StyledConv`: `FusedLeakyReLU(noise(ModulatedConv2d(x, style)))`; the noise is
/// added before the activation's bias. State keys: `conv.*`, `noise.weight`, `activate.bias`.
#[derive(Module, Debug)]
pub struct StyledConv {
    /// The modulated convolution.
    pub conv: ModulatedConv2d,
    /// Noise injection.
    pub noise: NoiseInjection,
    /// Bias and activation.
    pub activate: FusedLeakyReLU,
    /// Whether noise is added at all.
    pub use_noise: bool,
}

impl StyledConv {
    /// # Shapes
    /// - `x`: `[batch, in, h, w]`; `style`: see [`ModulatedConv2d::forward`]
    /// - output: `[batch, out, h, w]` (or `2h, 2w` when upsampling)
    ///
    /// # Panics
    /// As [`ModulatedConv2d::forward`] and [`NoiseInjection::forward`].
    pub fn forward(&self, x: Tensor<4>, style: &Style, noise: Noise<'_>) -> Tensor<4> {
        let y = self.conv.forward(x, style);
        let y = if self.use_noise {
            self.noise.forward(y, noise)
        } else {
            y
        };
        self.activate.forward(y)
    }
}

/// Configuration of a [`ToRgb`].
#[derive(Config, Debug)]
pub struct ToRgbConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Style dimension.
    pub style_dim: usize,
}

impl ToRgbConfig {
    /// Builds the layer; the bias starts at 0.
    pub fn init(&self, device: &Device) -> ToRgb {
        ToRgb {
            conv: ModulatedConv2dConfig::new(self.in_channels, 3, 1, self.style_dim)
                .with_demodulate(false)
                .init(device),
            bias: Initializer::Zeros.init([1, 3, 1, 1], device),
        }
    }
}

/// The official `ToRGB`: a 1×1 modulated conv without demodulation, plus a bias. No output
/// nonlinearity. State keys: `conv.*`, `bias` `[1, 3, 1, 1]` (the official `upsample.kernel`
/// buffer belongs to an upsampling path that is never called).
#[derive(Module, Debug)]
pub struct ToRgb {
    /// The 1×1 modulated conv to 3 channels.
    pub conv: ModulatedConv2d,
    /// RGB bias, shape `[1, 3, 1, 1]`.
    pub bias: Param<Tensor<4>>,
}

impl ToRgb {
    /// # Shapes
    /// - `x`: `[batch, in, h, w]`; output: `[batch, 3, h, w]`
    pub fn forward(&self, x: Tensor<4>, style: &Style) -> Tensor<4> {
        self.conv.forward(x, style) + self.bias.val()
    }
}

/// Configuration of a [`GeneratorModulation`].
#[derive(Config, Debug)]
pub struct GeneratorModulationConfig {
    /// Style dimension.
    pub style_dim: usize,
    /// Channels of the structure code.
    pub channels: usize,
}

impl GeneratorModulationConfig {
    /// Both linears start with zero bias.
    pub fn init(&self, device: &Device) -> GeneratorModulation {
        let linear = || EqualLinearConfig::new(self.style_dim, self.channels).init(device);
        GeneratorModulation {
            scale: linear(),
            bias: linear(),
        }
    }
}

/// The official `GeneratorModulation` (`G.SpatialCodeModulation`):
/// `x = s · scale(g) + bias(g)`, with no "+1" on the scale. State keys: `scale.{weight,bias}`,
/// `bias.{weight,bias}`.
#[derive(Module, Debug)]
pub struct GeneratorModulation {
    /// Texture code → per-channel scale.
    pub scale: EqualLinear,
    /// Texture code → per-channel shift.
    pub bias: EqualLinear,
}

impl GeneratorModulation {
    /// # Shapes
    /// - `x`: `[batch, channels, h, w]` (the structure code)
    /// - `style`: `[batch, style_dim]` or `[batch, style_dim, h', w']`
    /// - output: `[batch, channels, h, w]`
    ///
    /// # Panics
    /// On a channel or batch mismatch.
    pub fn forward(&self, x: Tensor<4>, style: &Style) -> Tensor<4> {
        check_channels(
            "GeneratorModulation",
            "x",
            &x.dims(),
            self.scale.out_features(),
        );
        check_channels(
            "GeneratorModulation",
            "style",
            &style.dims(),
            self.scale.in_features(),
        );
        check_batch("GeneratorModulation", &x.dims(), &style.dims());
        let [_, _, h, w] = x.dims();
        x * style.project(&self.scale, [h, w]) + style.project(&self.bias, [h, w])
    }
}
