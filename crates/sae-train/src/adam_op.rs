//! One Adam step of one parameter as one backend operation.
//!
//! Built from Burn's ops the step is thirteen element-wise passes, each allocating its output:
//! about 150 ms for the 20 M parameters of the 128-px benchmark's D and Dpatch on two cores,
//! 7 % of its D step (`docs/performance.md`). On Flex it is one pass that reads the parameter,
//! gradient and moments once and writes the three results; other backends run the same
//! composition of Burn ops as before. Both evaluate the same f32 expression in the same order
//! (see [`crate::adam`]).

// The ndarray backend is deprecated upstream but still ours for the parity tests; the extension
// must route it like every compiled-in backend.
#![allow(deprecated)]

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::{Autodiff, Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::tensor::Tensor;

/// The scalars of one step, as the composition uses them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdamScalars {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// `lr / (1 − β1ᵗ)`.
    pub step_size: f64,
    /// `√(1 − β2ᵗ)`.
    pub bias_correction2_sqrt: f64,
}

impl AdamScalars {
    /// The scalars in the order the backend operation takes them.
    fn new(beta1: f64, beta2: f64, eps: f64, step_size: f64, bias_correction2_sqrt: f64) -> Self {
        Self {
            beta1,
            beta2,
            eps,
            step_size,
            bias_correction2_sqrt,
        }
    }
}

/// The composition of Burn ops that [`AdamBackend::sae_adam_step`] replaces (and the order of
/// the floating-point operations both follow): `m' = m·β1 + g·(1 − β1)`,
/// `v' = v·β2 + (g·g)·(1 − β2)`, `p' = p − (m' / (√v' / √bc2 + eps))·step_size`.
#[allow(clippy::type_complexity)]
fn default_step<B: Backend>(
    p: FloatTensor<B>,
    g: FloatTensor<B>,
    m: FloatTensor<B>,
    v: FloatTensor<B>,
    s: AdamScalars,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let m = B::float_add(
        B::float_mul_scalar(m, s.beta1.into()),
        B::float_mul_scalar(g.clone(), (1.0 - s.beta1).into()),
    );
    let gg = B::float_mul(g.clone(), g);
    let v = B::float_add(
        B::float_mul_scalar(v, s.beta2.into()),
        B::float_mul_scalar(gg, (1.0 - s.beta2).into()),
    );
    let denom = B::float_add_scalar(
        B::float_div_scalar(B::float_sqrt(v.clone()), s.bias_correction2_sqrt.into()),
        s.eps.into(),
    );
    let update = B::float_mul_scalar(B::float_div(m.clone(), denom), s.step_size.into());
    (B::float_sub(p, update), m, v)
}

/// Backend operation: one Adam step of a flattened parameter.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "vulkan", feature = "cuda")),
    Autodiff
)]
pub trait AdamBackend: Backend {
    /// `(p', m', v')` from the parameter `p`, its gradient `g` and the moments `m`, `v` (all
    /// `[n]`) and the step's scalars.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn sae_adam_step(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        beta1: f64,
        beta2: f64,
        eps: f64,
        step_size: f64,
        bias_correction2_sqrt: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let s = AdamScalars::new(beta1, beta2, eps, step_size, bias_correction2_sqrt);
        default_step::<Self>(p, g, m, v, s)
    }
}

#[cfg(feature = "flex")]
mod flex {
    //! One pass over contiguous `f32` data; anything else takes the trait's composition.
    use super::*;
    use burn::backend::flex::FlexTensor;
    use burn::backend::{Flex, TensorMetadata};
    use rayon::prelude::*;
    use sae_nn::flex_data::{CHUNK, contiguous_f32, from_values, values};

    impl AdamBackend for Flex {
        fn sae_adam_step(
            p: FlexTensor,
            g: FlexTensor,
            m: FlexTensor,
            v: FlexTensor,
            beta1: f64,
            beta2: f64,
            eps: f64,
            step_size: f64,
            bias_correction2_sqrt: f64,
        ) -> (FlexTensor, FlexTensor, FlexTensor) {
            let s = AdamScalars::new(beta1, beta2, eps, step_size, bias_correction2_sqrt);
            let shape = p.shape();
            let n = shape.num_elements();
            let all = [&p, &g, &m, &v].map(|t| contiguous_f32(t).filter(|c| values(c).len() == n));
            let [Some(pc), Some(gc), Some(mc), Some(vc)] = all else {
                return default_step::<Flex>(p, g, m, v, s);
            };
            // The scalars as Burn's scalar ops convert them (f64 → f32 once).
            let (b1, c1) = (s.beta1 as f32, (1.0 - s.beta1) as f32);
            let (b2, c2) = (s.beta2 as f32, (1.0 - s.beta2) as f32);
            let (bc2, eps, step) = (
                s.bias_correction2_sqrt as f32,
                s.eps as f32,
                s.step_size as f32,
            );
            let (ps, gs, ms, vs) = (values(&pc), values(&gc), values(&mc), values(&vc));
            let (mut p2, mut m2, mut v2) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            p2.spare_capacity_mut()[..n]
                .par_chunks_mut(CHUNK)
                .zip(m2.spare_capacity_mut()[..n].par_chunks_mut(CHUNK))
                .zip(v2.spare_capacity_mut()[..n].par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(task, ((po, mo), vo))| {
                    let at = task * CHUNK;
                    for i in 0..po.len() {
                        let (p, g, m, v) = (ps[at + i], gs[at + i], ms[at + i], vs[at + i]);
                        let m = m * b1 + g * c1;
                        let v = v * b2 + (g * g) * c2;
                        let denom = v.sqrt() / bc2 + eps;
                        po[i].write(p - (m / denom) * step);
                        mo[i].write(m);
                        vo[i].write(v);
                    }
                });
            // SAFETY: the three outputs' chunks cover all n elements, each written above.
            unsafe {
                p2.set_len(n);
                m2.set_len(n);
                v2.set_len(n);
            }
            (
                from_values(p2, shape.clone()),
                from_values(m2, shape.clone()),
                from_values(v2, shape),
            )
        }
    }
}

sae_nn::composition_on_other_backends!(AdamBackend);
impl<B: AdamBackend, C: CheckpointStrategy> AdamBackend for Autodiff<B, C> {}

/// One Adam step of a flattened parameter: `(p', m', v')`. All four tensors are `[n]` on one
/// device.
pub(crate) fn adam_step(
    p: Tensor<1>,
    g: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    s: AdamScalars,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let (p, m, v) = <Dispatch as AdamBackend>::sae_adam_step(
        p.into_dispatch(),
        g.into_dispatch(),
        m.into_dispatch(),
        v.into_dispatch(),
        s.beta1,
        s.beta2,
        s.eps,
        s.step_size,
        s.bias_correction2_sqrt,
    );
    (
        Tensor::from_dispatch(p),
        Tensor::from_dispatch(m),
        Tensor::from_dispatch(v),
    )
}
