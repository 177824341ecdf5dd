//! The networks' dense convolutions as backend operations: forward, input gradient (the
//! transposed convolution) and weight gradient, each an operation of its own.
//!
//! On Flex all three run our kernels ([`crate::conv_kernels`]: forward and backward together in
//! 0.25–0.8 of the time of Flex's own at the networks' shapes, `examples/bench_conv.rs` and
//! `docs/performance.md`); every other backend runs Burn's
//! `conv2d`, `conv_transpose2d` and `conv2d_weight_backward`, exactly as before. The autodiff
//! wrappers make the forward and the transposed convolution differentiable in both inputs, with
//! backward passes that are again these operations, so R1's input-VJPs (a transposed
//! convolution differentiated once more) run our kernels too.
//!
//! Only square kernels with one stride and one padding on both axes, no dilation and no groups
//! come here: every `EqualConv2d`, `EqualLinear::forward_spatial` and `ModulatedConv2d` of the
//! networks. FIR filters have their own operation (`fir_op`).

// The ndarray backend is deprecated upstream but still ours for the parity tests; the extension
// must route it like every compiled-in backend.
#![allow(deprecated)]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, binary};
use burn::backend::{
    Autodiff, Backend, Dispatch, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::Tensor;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};

fn options(stride: usize, pad: usize) -> ConvOptions<2> {
    ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1)
}

/// `(o − 1)·s − 2p + k` rows come out of a transposed convolution; the output padding adds
/// the rest of `len` (what a strided forward rounded down).
fn output_padding(len: usize, out_len: usize, k: usize, stride: usize, pad: usize) -> usize {
    len + 2 * pad - ((out_len - 1) * stride + k)
}

/// `scale · weight` (the weight itself for 1): the other backends' way to the scaled weight.
fn scaled<B: Backend>(weight: FloatTensor<B>, scale: f32) -> FloatTensor<B> {
    if scale == 1.0 {
        weight
    } else {
        B::float_mul_scalar(weight, scale.into())
    }
}

/// Burn's transposed convolution as the input gradient of `conv2d(x [.., h, w], weight)`.
fn burn_input_grad<B: Backend>(
    grad: FloatTensor<B>,
    weight: FloatTensor<B>,
    stride: usize,
    pad: usize,
    [h, w]: [usize; 2],
) -> FloatTensor<B> {
    let [_, _, ho, wo] = grad.shape().dims();
    let k = weight.shape()[2];
    let out_pad = [
        output_padding(h, ho, k, stride, pad),
        output_padding(w, wo, k, stride, pad),
    ];
    B::conv_transpose2d(
        grad,
        weight,
        None,
        ConvTransposeOptions::new([stride, stride], [pad, pad], out_pad, [1, 1], 1),
    )
}

/// Backend operations: a dense convolution and its two gradients.
///
/// Each takes the weight and a `scale` by which the convolution multiplies it (the equalised
/// learning rate's `1/√(in·k²)`): on Flex the GEMMs apply it for free, where `weight · scale`
/// as a tensor operation was a pass over the weight and a new buffer per call (and another for
/// the weight gradient): 5 % of a batch-1 church-256 swap and of a 128-px training step
/// (`docs/performance.md`, eighth round).
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "vulkan", feature = "cuda")),
    Autodiff
)]
pub trait ConvBackend: Backend {
    /// `conv2d(x, scale · weight, stride, pad)` without bias.
    fn sae_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        pad: usize,
        scale: f32,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, scaled::<Self>(weight, scale), None, options(stride, pad))
    }

    /// The input gradient of `conv2d(x [.., h, w], scale · weight, stride, pad)` for the
    /// output gradient `grad`: `conv_transpose2d(grad, scale · weight)` with the output
    /// padding that gives `h × w`.
    #[allow(clippy::too_many_arguments)]
    fn sae_conv_input_grad(
        grad: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        pad: usize,
        h: usize,
        w: usize,
        scale: f32,
    ) -> FloatTensor<Self> {
        burn_input_grad::<Self>(grad, scaled::<Self>(weight, scale), stride, pad, [h, w])
    }

    /// The gradient with respect to `weight` of `conv2d(x, scale · weight, stride, pad)` for
    /// the output gradient `grad` (`weight` gives the shape only).
    fn sae_conv_weight_grad(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        pad: usize,
        scale: f32,
    ) -> FloatTensor<Self> {
        scaled::<Self>(
            Self::conv2d_weight_backward(x, weight, grad, options(stride, pad)),
            scale,
        )
    }
}

#[cfg(feature = "flex")]
mod flex {
    //! Flex: our kernels for contiguous-able f32 tensors whose geometry fits; Burn's ops for
    //! anything else (other dtypes).
    use super::*;
    use crate::conv_kernels::{self, ConvGeom};
    use crate::flex_data::{contiguous_f32, from_values, values};
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::backend::ops::ModuleOps;

    /// A contiguous `f32` copy-or-view of a 4-D tensor and its dims.
    fn data(t: &FlexTensor) -> Option<(FlexTensor, [usize; 4])> {
        let dims: [usize; 4] = t.shape().dims();
        contiguous_f32(t).map(|t| (t, dims))
    }

    impl ConvBackend for Flex {
        fn sae_conv(
            x: FlexTensor,
            weight: FlexTensor,
            stride: usize,
            pad: usize,
            scale: f32,
        ) -> FlexTensor {
            if let (Some((xc, xd)), Some((wc, [co, ci, k, k2]))) = (data(&x), data(&weight))
                && ci == xd[1]
                && k == k2
                && let Some(g) = ConvGeom::new(xd, co, k, stride, pad)
            {
                crate::op_timer!(conv "fwd", &g);
                let y = conv_kernels::conv_forward(values(&xc), values(&wc), &g, scale);
                return from_values(y, [g.b, g.co, g.ho, g.wo]);
            }
            Self::conv2d(x, scaled::<Self>(weight, scale), None, options(stride, pad))
        }

        fn sae_conv_input_grad(
            grad: FlexTensor,
            weight: FlexTensor,
            stride: usize,
            pad: usize,
            h: usize,
            w: usize,
            scale: f32,
        ) -> FlexTensor {
            if let (Some((gc, [b, co, ho, wo])), Some((wc, [co2, ci, k, k2]))) =
                (data(&grad), data(&weight))
                && co == co2
                && k == k2
                && let Some(g) = ConvGeom::new([b, ci, h, w], co, k, stride, pad)
                && (g.ho, g.wo) == (ho, wo)
            {
                crate::op_timer!(conv "dx", &g);
                let dx = conv_kernels::conv_input_grad(values(&gc), values(&wc), &g, scale);
                return from_values(dx, [b, ci, h, w]);
            }
            burn_input_grad::<Self>(grad, scaled::<Self>(weight, scale), stride, pad, [h, w])
        }

        fn sae_conv_weight_grad(
            x: FlexTensor,
            grad: FlexTensor,
            weight: FlexTensor,
            stride: usize,
            pad: usize,
            scale: f32,
        ) -> FlexTensor {
            let [co, ci, k, k2] = weight.shape().dims();
            if let (Some((xc, xd)), Some((gc, gd))) = (data(&x), data(&grad))
                && ci == xd[1]
                && k == k2
                && let Some(g) = ConvGeom::new(xd, co, k, stride, pad)
                && gd == [g.b, co, g.ho, g.wo]
            {
                crate::op_timer!(conv "dw", &g);
                let dw = conv_kernels::conv_weight_grad(values(&xc), values(&gc), &g, scale);
                return from_values(dw, [co, ci, k, k]);
            }
            scaled::<Self>(
                Self::conv2d_weight_backward(x, weight, grad, options(stride, pad)),
                scale,
            )
        }
    }
}

crate::composition_on_other_backends!(ConvBackend);

impl<B: ConvBackend, C: CheckpointStrategy> ConvBackend for Autodiff<B, C> {
    fn sae_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        pad: usize,
        scale: f32,
    ) -> FloatTensor<Self> {
        /// y = conv(x, cW): dx = convᵀ(dy, cW), dW = c · weight-grad(x, dy).
        #[derive(Debug)]
        struct ConvBackward;

        impl<B: ConvBackend> Backward<B, 2> for ConvBackward {
            /// x, W, stride, pad, scale.
            type State = (FloatTensor<B>, FloatTensor<B>, usize, usize, f32);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let (x, weight, s, p, c) = ops.state;
                let [_, _, h, w] = x.shape().dims();
                let w2 = weight.clone();
                binary::<B, _, _>(
                    ops.parents,
                    ops.node,
                    grads,
                    |g| B::sae_conv_input_grad(g, w2, s, p, h, w, c),
                    |g| B::sae_conv_weight_grad(x, g, weight, s, p, c),
                );
            }
        }

        let (x, x_node) = x.into_parts();
        let (weight, w_node) = weight.into_parts();
        match ConvBackward
            .prepare::<C>([x_node, w_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (x.clone(), weight.clone(), stride, pad, scale);
                prep.finish(state, B::sae_conv(x, weight, stride, pad, scale))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::sae_conv(x, weight, stride, pad, scale)),
        }
    }

    fn sae_conv_input_grad(
        grad: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        pad: usize,
        h: usize,
        w: usize,
        scale: f32,
    ) -> FloatTensor<Self> {
        /// y = convᵀ(g, cW) (the adjoint of conv(·, cW)): d g = conv(dy, cW),
        /// dW = c · weight-grad(dy, g) (dy plays the convolution's input).
        #[derive(Debug)]
        struct InputGradBackward;

        impl<B: ConvBackend> Backward<B, 2> for InputGradBackward {
            /// g, W, stride, pad, scale.
            type State = (FloatTensor<B>, FloatTensor<B>, usize, usize, f32);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let (g, weight, s, p, c) = ops.state;
                let w2 = weight.clone();
                binary::<B, _, _>(
                    ops.parents,
                    ops.node,
                    grads,
                    |dy| B::sae_conv(dy, w2, s, p, c),
                    |dy| B::sae_conv_weight_grad(dy, g, weight, s, p, c),
                );
            }
        }

        let (g, g_node) = grad.into_parts();
        let (weight, w_node) = weight.into_parts();
        match InputGradBackward
            .prepare::<C>([g_node, w_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (g.clone(), weight.clone(), stride, pad, scale);
                prep.finish(
                    state,
                    B::sae_conv_input_grad(g, weight, stride, pad, h, w, scale),
                )
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::sae_conv_input_grad(g, weight, stride, pad, h, w, scale))
            }
        }
    }
}

/// `conv2d(x, scale · weight, stride, pad)` without bias, differentiable in both inputs.
///
/// # Shapes
/// - `x`: `[batch, in, h, w]`; `weight`: `[out, in, k, k]`
/// - output: `[batch, out, (h + 2p − k)/s + 1, (w + 2p − k)/s + 1]`
///
/// The callers check that the channels agree and the kernel fits the padded input.
pub(crate) fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    stride: usize,
    pad: usize,
    scale: f32,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as ConvBackend>::sae_conv(
        x.into_dispatch(),
        weight.into_dispatch(),
        stride,
        pad,
        scale,
    ))
}

/// The input gradient of `conv2d(x [.., h, w], scale · weight, stride, pad)` for the output
/// gradient `g`, i.e. `conv_transpose2d(g, scale · weight)` with the output padding that gives
/// `h × w`; differentiable in both inputs.
///
/// # Shapes
/// - `g`: `[batch, out, ho, wo]` with `ho = (h + 2p − k)/s + 1` (likewise `wo`)
/// - `weight`: `[out, in, k, k]`
/// - output: `[batch, in, h, w]`
pub(crate) fn conv2d_input_grad(
    g: Tensor<4>,
    weight: Tensor<4>,
    stride: usize,
    pad: usize,
    [h, w]: [usize; 2],
    scale: f32,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as ConvBackend>::sae_conv_input_grad(
        g.into_dispatch(),
        weight.into_dispatch(),
        stride,
        pad,
        h,
        w,
        scale,
    ))
}
