//! The stride-1 depthwise FIR filter as one backend operation with its own backward pass.
//!
//! Every blur of the networks is a depthwise convolution with a fixed kernel. Its forward pass
//! is cheap on every backend (Flex has a direct depthwise kernel), but Burn derives the input
//! gradient of any convolution as a transposed convolution, which Flex runs as one small GEMM
//! plus col2im per channel: measured at about 10× the forward on a 64-channel blur
//! (`docs/performance.md`). The adjoint of a stride-1 FIR filter is the same filter reversed
//! with the complementary padding (see [`crate::Blur::input_vjp`]), i.e. again a cheap
//! depthwise convolution, so this operation registers exactly that as its backward pass.
//!
//! The forward pass is Burn's own `conv2d` on every backend; only the autodiff backward differs,
//! and it computes the same numbers (a convolution of the output gradient with the reversed
//! taps), up to the order of float summation.

// The ndarray backend is deprecated upstream but still ours for the parity tests; the extension
// must route it like every compiled-in backend.
#![allow(deprecated)]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::{
    Autodiff, Backend, Dispatch, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::Tensor;
use burn::tensor::ops::ConvOptions;

fn depthwise_options(channels: usize, pad: [usize; 2]) -> ConvOptions<2> {
    let p = (pad[0], pad[1]);
    ConvOptions::new_with_padding([1, 1], [p, p], [1, 1], channels)
}

/// Backend operation: a stride-1 depthwise convolution with a constant kernel whose autodiff
/// backward is the reversed-kernel convolution.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "vulkan", feature = "cuda")),
    Autodiff
)]
pub trait FirBackend: Backend {
    /// `conv2d(x, weight, groups = channels, padding (pad0, pad1) on both axes)`; `reversed` is
    /// `weight` flipped on both spatial axes (used by the backward pass only).
    fn fir_depthwise(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        reversed: FloatTensor<Self>,
        pad0: usize,
        pad1: usize,
    ) -> FloatTensor<Self> {
        let _ = reversed;
        let channels = weight.shape()[0];
        Self::conv2d(x, weight, None, depthwise_options(channels, [pad0, pad1]))
    }
}

#[cfg(feature = "flex")]
impl FirBackend for burn::backend::Flex {}
crate::composition_on_other_backends!(FirBackend);

impl<B: FirBackend, C: CheckpointStrategy> FirBackend for Autodiff<B, C> {
    fn fir_depthwise(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        reversed: FloatTensor<Self>,
        pad0: usize,
        pad1: usize,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FirBackward;

        impl<B: Backend> Backward<B, 1> for FirBackward {
            /// The reversed kernel and the adjoint's padding.
            type State = (FloatTensor<B>, [usize; 2]);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let (reversed, pad) = ops.state;
                let channels = reversed.shape()[0];
                unary::<B, _>(ops.parents, ops.node, grads, |g| {
                    B::conv2d(g, reversed, None, depthwise_options(channels, pad))
                });
            }
        }

        let k = weight.primitive().shape()[2];
        let weight = weight.into_primitive();
        let reversed = reversed.into_primitive();
        let (x, node) = x.into_parts();
        let forward = |x| B::fir_depthwise(x, weight, reversed.clone(), pad0, pad1);
        match FirBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                // The caller guarantees pad ≤ k − 1, so the adjoint's padding is non-negative.
                let state = (reversed.clone(), [k - 1 - pad0, k - 1 - pad1]);
                prep.finish(state, forward(x))
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x)),
        }
    }
}

/// The stride-1 depthwise FIR filter `conv2d(x, weight, groups = channels, padding (p0, p1))`
/// with a cheap backward pass (see the module docs).
///
/// # Shapes
/// - `x`: `[batch, channels, h, w]`
/// - `weight`, `reversed`: `[channels, 1, k, k]`
/// - output: `[batch, channels, h + p0 + p1 − k + 1, w + p0 + p1 − k + 1]`
///
/// # Panics
/// If a pad exceeds `k − 1` (the callers fall back to `conv2d` there).
pub(crate) fn fir_depthwise(
    x: Tensor<4>,
    weight: Tensor<4>,
    reversed: Tensor<4>,
    pad: [usize; 2],
) -> Tensor<4> {
    let k = weight.dims()[2];
    assert!(
        pad[0] < k && pad[1] < k,
        "fir_depthwise: pad {pad:?} must be at most k − 1 = {}",
        k - 1
    );
    Tensor::from_dispatch(<Dispatch as FirBackend>::fir_depthwise(
        x.into_dispatch(),
        weight.into_dispatch(),
        reversed.into_dispatch(),
        pad[0],
        pad[1],
    ))
}
