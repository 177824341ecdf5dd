//! StyleGAN2 building blocks of the Swapping Autoencoder (Park et al., NeurIPS 2020), as the
//! official PyTorch implementation computes them, on Burn 0.22.
//!
//! Every layer follows Burn's conventions: a `#[derive(Config)]` per layer with `init(&Device)`,
//! parameters as [`burn::module::Param`]s whose paths mirror the official `state_dict` keys
//! (with the official upper-case `Conv`/`Act`/`Blur` sub-module names folded to lower case), and
//! `forward` methods documented with their shapes. Model code has no backend type parameter: the
//! [`burn::tensor::Device`] a layer is initialised on picks the backend.
//!
//! Everything that training differentiates (and, for the discriminators, differentiates twice
//! through hand-written input-VJPs) is built from ops that have a backward on every backend:
//! convolutions, transposed convolutions, padding, matmul, elementwise ops. Burn's fused
//! `linear`, `interpolate` and `avg_pool2d` are deliberately not used: `interpolate` has no
//! bilinear backward on ndarray/WGPU/CUDA and none of the three can be differentiated twice.
//!
//! The layer map (official `models/networks/stylegan2_layers.py` and `stylegan2_op/`):
//!
//! | official | here |
//! |---|---|
//! | `make_kernel`, `upfirdn2d` | [`fir::FirKernel`], [`fir::upfirdn2d`] |
//! | `Blur`, `Upsample` | [`fir::Blur`], [`fir::Upsample`] |
//! | `EqualConv2d`, `EqualLinear` | [`equal::EqualConv2d`], [`equal::EqualLinear`] |
//! | `FusedLeakyReLU`, `ScaledLeakyReLU`, `util.normalize` | [`act::FusedLeakyReLU`], [`act::scaled_leaky_relu`], [`act::normalize`] |
//! | `ConvLayer`, `ResBlock` | [`conv::ConvLayer`], [`conv::ResBlock`] |
//! | `ModulatedConv2d`, `StyledConv`, `ToRGB`, `GeneratorModulation` | [`modulated`] |
//! | `NoiseInjection` | [`noise::NoiseInjection`] with [`noise::Noise`] |
//! | `F.interpolate(bilinear, align_corners=False)`, nearest | [`resample`] |
//! | `util.apply_random_crop` | [`crop::PatchSampler`] |

/// The default methods of one of our backend-extension traits (each a composition of Burn's
/// ops) on the backends that have no kernels of ours: ndarray and the CubeCL GPU backends. For
/// the `*_op` modules here and in `sae-train`; the invoking crate needs the same feature names.
#[doc(hidden)]
#[macro_export]
macro_rules! composition_on_other_backends {
    ($trait:ident) => {
        #[cfg(feature = "ndarray")]
        impl $trait for burn::backend::NdArray {}
        #[cfg(any(feature = "wgpu", feature = "vulkan", feature = "cuda"))]
        impl $trait for burn::backend::Cube {}
    };
}

/// Inputs and devices shared by the operations' unit tests.
#[cfg(test)]
mod test_support {
    /// `len` values in [−2, 2) from a linear congruential generator started at `seed`:
    /// deterministic inputs, so every run tests the same values.
    pub(crate) fn lcg(seed: u32, len: usize) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 8) as f32 / (1u32 << 22) as f32 - 2.0
            })
            .collect()
    }

    /// Every CPU backend compiled in: Flex runs our kernels, ndarray the trait's compositions.
    /// Explicit devices, because `Device::default()` is the GPU backend when one is compiled in.
    // ndarray is deprecated upstream but still ours for the parity tests; one push per backend
    // compiled in.
    #[cfg(any(feature = "flex", feature = "ndarray"))]
    #[allow(deprecated, clippy::vec_init_then_push)]
    pub(crate) fn cpu_devices() -> Vec<burn::tensor::Device> {
        use burn::tensor::Device;
        let mut devices = Vec::new();
        #[cfg(feature = "flex")]
        devices.push(Device::flex());
        #[cfg(feature = "ndarray")]
        devices.push(Device::ndarray());
        devices
    }
}

/// Times the rest of the enclosing block as one call in [`op_profile`]'s table, under the
/// row the format arguments name (`conv KIND, &geometry` for a convolution, credited with its
/// floating-point work); nothing at all without the feature `op-profile`. Only the Flex
/// kernels carry timers.
#[cfg(feature = "flex")]
macro_rules! op_timer {
    (conv $kind:literal, $g:expr) => {
        #[cfg(feature = "op-profile")]
        let _op_timer = {
            let g = $g;
            crate::op_profile::Timer::new(
                || {
                    format!(
                        "{} b{} ci{} co{} {}x{} k{} s{} p{}",
                        $kind, g.b, g.ci, g.co, g.h, g.w, g.k, g.stride, g.pad
                    )
                },
                2.0 * (g.b * g.co * g.ho * g.wo * g.ci * g.k * g.k) as f64,
            )
        };
    };
    ($($fmt:tt)*) => {
        #[cfg(feature = "op-profile")]
        let _op_timer = crate::op_profile::Timer::new(|| format!($($fmt)*), 0.0);
    };
}
#[cfg(feature = "flex")]
pub(crate) use op_timer;

pub mod act;
mod act_op;
pub mod conv;
#[cfg(feature = "flex")]
mod conv_kernels;
mod conv_op;
pub mod crop;
pub mod equal;
pub mod fir;
mod fir_op;
#[cfg(feature = "flex")]
#[doc(hidden)]
pub mod flex_data;
mod linear_op;
pub mod modulated;
pub mod noise;
#[cfg(feature = "op-profile")]
pub mod op_profile;
mod pad_op;
pub mod params;
pub mod resample;
mod resample_op;
pub mod shape;

pub use act::{
    FusedLeakyReLU, FusedLeakyReLUConfig, add_channel_bias, fused_leaky_relu, leaky_relu_vjp,
    normalize, scaled_leaky_relu,
};
pub use conv::{ConvLayer, ConvLayerConfig, ConvLayerTape, ResBlock, ResBlockConfig, ResBlockTape};
pub use crop::{CropDraws, CropError, PatchSampler, PatchSamplerConfig};
pub use equal::{EqualConv2d, EqualConv2dConfig, EqualLinear, EqualLinearConfig};
pub use fir::{Blur, BlurConfig, FirKernel, Upsample, UpsampleConfig, upfirdn2d};
pub use modulated::{
    GeneratorModulation, GeneratorModulationConfig, ModulatedConv2d, ModulatedConv2dConfig, Style,
    StyledConv, StyledConvConfig, ToRgb, ToRgbConfig,
};
pub use noise::{Noise, NoiseInjection, NoiseInjectionConfig, NoiseRng};
pub use params::{NamedParam, ParamError, collect_params, load_params, param_shapes};
pub use resample::{bilinear_resize, bilinear_up2, nearest_resize};
