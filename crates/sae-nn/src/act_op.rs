//! `√2 · lrelu(x + bias[c], 0.2)` (the official `fused_leaky_relu`) as one backend operation
//! with its own backward pass.
//!
//! Built from Burn's ops it is an add, a comparison, a select and a scale forward and about as
//! many passes backward, plus a sum over batch and space for the bias gradient: at the small
//! models' sizes these element-wise passes were the largest cost after the convolutions
//! (`docs/performance.md`). On Flex the forward, the input gradient and the bias gradient are one
//! pass each; other backends run the same composition of Burn ops as before. The backward needs
//! only the output: its sign is the pre-activation's (`√2 > 0`, and the leaky ReLU keeps signs).

// The ndarray backend is deprecated upstream but still ours for the parity tests; the extension
// must route it like every compiled-in backend.
#![allow(deprecated)]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{
    Autodiff, Backend, Dispatch, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::{Shape, Tensor};

use crate::act::{LRELU_GAIN, LRELU_SLOPE};

/// The composition of Burn ops that [`ActBackend::sae_bias_lrelu`] replaces.
fn default_bias_lrelu<B: Backend>(x: FloatTensor<B>, bias: FloatTensor<B>) -> FloatTensor<B> {
    let rank = x.shape().num_dims();
    let mut shape = vec![1; rank];
    shape[1] = bias.shape()[0];
    let bias = B::float_reshape(bias, Shape::from(shape));
    let v = B::leaky_relu(B::float_add(x, bias), LRELU_SLOPE.into());
    B::float_mul_scalar(v, LRELU_GAIN.into())
}

/// [`ActBackend::sae_lrelu_grad`] from Burn ops.
fn default_lrelu_grad<B: Backend>(y: FloatTensor<B>, g: FloatTensor<B>) -> FloatTensor<B> {
    // g·0.2√2 everywhere plus g·0.8√2 where y > 0 (relu_backward keeps g where y > 0).
    let all = B::float_mul_scalar(g.clone(), (LRELU_SLOPE * LRELU_GAIN).into());
    let positive = B::relu_backward(y, g);
    let positive = B::float_mul_scalar(positive, ((1.0 - LRELU_SLOPE) * LRELU_GAIN).into());
    B::float_add(all, positive)
}

/// [`ActBackend::sae_channel_sum`] from Burn ops.
fn default_channel_sum<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    let dims = t.shape();
    let c = dims[1];
    let others: Vec<usize> = (0..dims.num_dims()).filter(|&d| d != 1).collect();
    B::float_reshape(B::float_sum_dims(t, &others), Shape::from(vec![c]))
}

/// Backend operations: the biased, scaled leaky ReLU and the two halves of its backward pass.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "vulkan", feature = "cuda")),
    Autodiff
)]
pub trait ActBackend: Backend {
    /// `√2 · lrelu(x + bias[c], 0.2)` with `x: [batch, C, ...]`, `bias: [C]`.
    fn sae_bias_lrelu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        default_bias_lrelu::<Self>(x, bias)
    }

    /// The input gradient of [`ActBackend::sae_bias_lrelu`] from its output `y`:
    /// `g · √2 · (1 where y > 0, else 0.2)`.
    fn sae_lrelu_grad(y: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        default_lrelu_grad::<Self>(y, g)
    }

    /// `Σ` over every dimension but 1: `[batch, C, ...]` → `[C]` (the bias gradient).
    fn sae_channel_sum(t: FloatTensor<Self>) -> FloatTensor<Self> {
        default_channel_sum::<Self>(t)
    }
}

#[cfg(feature = "flex")]
mod flex {
    //! One pass each over contiguous `f32` data; anything else takes the trait's composition.
    use super::*;
    use crate::flex_data::{CHUNK, contiguous_f32, from_values, planes_per_task, values};
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use rayon::prelude::*;

    const POS: f32 = LRELU_GAIN as f32;
    const SLOPE: f32 = LRELU_SLOPE as f32;

    /// `(planes per task, elements per plane)` for a `[batch, C, ...]` tensor.
    fn planes(shape: &Shape) -> (usize, usize) {
        let plane: usize = shape.iter().skip(2).product();
        (planes_per_task(plane), plane)
    }

    impl ActBackend for Flex {
        fn sae_bias_lrelu(x: FlexTensor, bias: FlexTensor) -> FlexTensor {
            crate::op_timer!("bias_lrelu {:?}", x.shape());
            let shape = x.shape();
            let (Some(xc), Some(bc)) = (contiguous_f32(&x), contiguous_f32(&bias)) else {
                return default_bias_lrelu::<Flex>(x, bias);
            };
            let (c, (per_task, plane)) = (shape[1], planes(&shape));
            let (xs, bs) = (values(&xc), values(&bc));
            if xs.is_empty() {
                return from_values(Vec::new(), shape);
            }
            // Written in place of zeroing first: every element is written once below.
            let mut out = Vec::with_capacity(xs.len());
            out.spare_capacity_mut()[..xs.len()]
                .par_chunks_mut(per_task * plane)
                .zip(xs.par_chunks(per_task * plane))
                .enumerate()
                .for_each(|(task, (out, xs))| {
                    for (j, (o, x)) in out.chunks_mut(plane).zip(xs.chunks(plane)).enumerate() {
                        let b = bs[(task * per_task + j) % c];
                        for (o, x) in o.iter_mut().zip(x) {
                            // The composition's roundings: (v·0.2)·√2 below zero, v·√2 above.
                            let v = x + b;
                            o.write(if v < 0.0 { v * SLOPE * POS } else { v * POS });
                        }
                    }
                });
            // SAFETY: the chunks cover all xs.len() elements, each written above.
            unsafe { out.set_len(xs.len()) };
            from_values(out, shape)
        }

        fn sae_lrelu_grad(y: FlexTensor, g: FlexTensor) -> FlexTensor {
            crate::op_timer!("lrelu_grad {:?}", g.shape());
            let shape = g.shape();
            let (Some(yc), Some(gc)) = (contiguous_f32(&y), contiguous_f32(&g)) else {
                return default_lrelu_grad::<Flex>(y, g);
            };
            let (ys, gs) = (values(&yc), values(&gc));
            if ys.len() != gs.len() {
                return default_lrelu_grad::<Flex>(y, g);
            }
            let mut out = Vec::with_capacity(gs.len());
            out.spare_capacity_mut()[..gs.len()]
                .par_chunks_mut(CHUNK)
                .zip(ys.par_chunks(CHUNK).zip(gs.par_chunks(CHUNK)))
                .for_each(|(out, (ys, gs))| {
                    for ((o, y), g) in out.iter_mut().zip(ys).zip(gs) {
                        let s = g * POS;
                        o.write(if *y > 0.0 { s } else { s * SLOPE });
                    }
                });
            // SAFETY: the chunks cover all gs.len() elements, each written above.
            unsafe { out.set_len(gs.len()) };
            from_values(out, shape)
        }

        fn sae_channel_sum(t: FlexTensor) -> FlexTensor {
            crate::op_timer!("channel_sum {:?}", t.shape());
            let shape = t.shape();
            let Some(tc) = contiguous_f32(&t) else {
                return default_channel_sum::<Flex>(t);
            };
            let (b, c, plane) = (shape[0], shape[1], shape.iter().skip(2).product::<usize>());
            let ts = values(&tc);
            // Per channel: 8-lane f32 partial sums per plane, planes added in f64, in a fixed
            // order (the same result on every run).
            let sums: Vec<f32> = (0..c)
                .into_par_iter()
                .map(|ch| {
                    let mut acc = 0.0f64;
                    for n in 0..b {
                        let p = &ts[(n * c + ch) * plane..][..plane];
                        let mut lanes = [0.0f32; 8];
                        let mut it = p.chunks_exact(8);
                        for chunk in &mut it {
                            for (l, v) in lanes.iter_mut().zip(chunk) {
                                *l += v;
                            }
                        }
                        let tail: f32 = it.remainder().iter().sum();
                        acc += lanes.iter().map(|&l| l as f64).sum::<f64>() + tail as f64;
                    }
                    acc as f32
                })
                .collect();
            from_values(sums, Shape::from(vec![c]))
        }
    }
}

crate::composition_on_other_backends!(ActBackend);

impl<B: ActBackend, C: CheckpointStrategy> ActBackend for Autodiff<B, C> {
    fn sae_bias_lrelu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        /// dv = lrelu'(y)·dy; dx = dv, dbias = Σ dv over batch and space.
        #[derive(Debug)]
        struct BiasLreluBackward;

        impl<B: ActBackend> Backward<B, 2> for BiasLreluBackward {
            /// The output.
            type State = FloatTensor<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let dy = grads.consume::<B>(&ops.node);
                let dv = B::sae_lrelu_grad(ops.state, dy);
                let [node_x, node_bias] = ops.parents;
                if let Some(node) = node_bias {
                    grads.register::<B>(node.id, B::sae_channel_sum(dv.clone()));
                }
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, dv);
                }
            }
        }

        let (x, x_node) = x.into_parts();
        let (bias, bias_node) = bias.into_parts();
        let y = B::sae_bias_lrelu(x, bias);
        match BiasLreluBackward
            .prepare::<C>([x_node, bias_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(y.clone(), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

/// `√2 · lrelu(x + bias[c], 0.2)`: the official `fused_leaky_relu` as one operation,
/// differentiable in `x` and `bias`.
///
/// # Shapes
/// - `x`: `[batch, channels, ...]`; `bias`: `[channels]`; output: as `x`
///
/// The caller checks that `bias` has one entry per channel.
pub(crate) fn bias_lrelu<const D: usize>(x: Tensor<D>, bias: Tensor<1>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as ActBackend>::sae_bias_lrelu(
        x.into_dispatch(),
        bias.into_dispatch(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::{add_channel_bias, scaled_leaky_relu};
    use crate::test_support::lcg;
    use burn::tensor::{Device, TensorData};

    /// The operation, or the composition of Burn ops it replaces.
    fn apply<const D: usize>(x: Tensor<D>, bias: &Tensor<1>, fused: bool) -> Tensor<D> {
        if fused {
            bias_lrelu(x, bias.clone())
        } else {
            scaled_leaky_relu(add_channel_bias(x, Some(bias.clone())))
        }
    }

    /// The operation against the composition of Burn ops it replaces: values, input gradient
    /// and bias gradient, on ranks 2 to 4. At an exactly zero pre-activation the slope is 0.2,
    /// as in PyTorch's `leaky_relu` backward (`x > 0 ? g : 0.2·g`) and our R1 VJP; Burn's
    /// composition takes 1 there, so that case is checked against the formula instead.
    #[test]
    fn matches_the_composition_with_gradients() {
        // Flex, where the kernels are (`Device::default()` is the GPU backend when one is
        // compiled in, and runs the composition on both sides).
        #[cfg(feature = "flex")]
        let device = Device::flex().autodiff();
        #[cfg(not(feature = "flex"))]
        let device = Device::default().autodiff();
        for shape in [
            vec![3, 5],
            vec![2, 4, 7],
            vec![2, 3, 5, 6],
            vec![1, 2, 130, 131],
        ] {
            let n: usize = shape.iter().product();
            let c = shape[1];
            let mut xv = lcg(n as u32, n);
            let bv = lcg(c as u32 + 7, c);
            let bias = Tensor::<1>::from_data(TensorData::new(bv.clone(), [c]), &device);
            // Some pre-activations exactly zero: x = −bias there.
            let plane: usize = shape[2..].iter().product();
            for (i, v) in xv.iter_mut().enumerate().step_by(7) {
                *v = -bv[(i / plane) % c];
            }
            let dy_v: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let run = |fused: bool, xv: &[f32]| {
                let x = Tensor::<1>::from_data(TensorData::new(xv.to_vec(), [n]), &device)
                    .require_grad();
                let b = bias.clone().detach().require_grad();
                let dy = Tensor::<1>::from_data(TensorData::new(dy_v.clone(), [n]), &device);
                let y = match *shape.as_slice() {
                    [n0, n1] => apply(x.clone().reshape([n0, n1]), &b, fused).reshape([n]),
                    [n0, n1, n2] => apply(x.clone().reshape([n0, n1, n2]), &b, fused).reshape([n]),
                    [n0, n1, n2, n3] => {
                        apply(x.clone().reshape([n0, n1, n2, n3]), &b, fused).reshape([n])
                    }
                    _ => unreachable!("ranks 2 to 4"),
                };
                let grads = (y.clone() * dy).sum().backward();
                let v = |t: Tensor<1>| t.into_data().to_vec::<f32>().unwrap();
                (v(y), v(x.grad(&grads).unwrap()), v(b.grad(&grads).unwrap()))
            };
            let (_, dx_zero, _) = run(true, &xv);
            for i in (0..n).step_by(7) {
                let want = dy_v[i] * LRELU_GAIN as f32 * LRELU_SLOPE as f32;
                // The slope choice is a factor of 5; the tolerance is a rounding.
                assert!(
                    (dx_zero[i] - want).abs() <= 1e-6 * want.abs(),
                    "dx at a zero pre-activation, {shape:?}: {} vs {want}",
                    dx_zero[i]
                );
            }
            // Away from exact zeros (nudged off them), against the composition.
            for i in (0..n).step_by(7) {
                xv[i] += 0.25;
            }
            let (y1, dx1, db1) = run(true, &xv);
            let (y0, dx0, db0) = run(false, &xv);
            let close = |a: &[f32], b: &[f32], tol: f32, what: &str| {
                for (i, (a, b)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (a - b).abs() <= tol * b.abs().max(1.0),
                        "{what}[{i}] {shape:?}: {a} vs {b}"
                    );
                }
            };
            // Values and input gradients: the same products, at most a rounding apart.
            close(&y1, &y0, 1e-6, "y");
            close(&dx1, &dx0, 1e-6, "dx");
            // Bias gradients: against an f64 sum of the (checked) input gradient per channel,
            // within f32 rounding of a sum of 17k terms: 1e-6 of the sum of their magnitudes.
            let plane: usize = shape[2..].iter().product();
            for (ch, got) in db1.iter().enumerate() {
                let terms = dx0
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| (i / plane) % c == ch)
                    .map(|(_, v)| *v as f64);
                let (sum, mag) = terms.fold((0.0, 0.0), |(s, m), v| (s + v, m + v.abs()));
                assert!(
                    (*got as f64 - sum).abs() <= 1e-6 * mag.max(1.0),
                    "dbias[{ch}] {shape:?}: {got} vs {sum}"
                );
            }
            // Burn's own f32 sum is coarser; the composition agrees to 1e-4.
            close(&db1, &db0, 1e-4, "dbias");
        }
    }
}
