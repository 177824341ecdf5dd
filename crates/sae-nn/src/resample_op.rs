//! Bilinear ×2 upsampling (`align_corners=False`) as one backend operation with its own
//! backward pass.
//!
//! Built from Burn's ops it is an edge pad and a depthwise transposed convolution (see
//! [`crate::bilinear_up2`]), which Flex runs at about 6 ns per output element: 50 ms for one
//! 128-channel 256-px skip path of the church-256 generator, about 3 % of a swap
//! (`docs/performance.md`). On Flex the forward pass and its adjoint are each one separable pass
//! per plane here; other backends run the same composition of Burn ops as before, forward and
//! backward (the backward as Burn's autodiff derived it: a strided depthwise convolution and the
//! edge pad's adjoint).
//!
//! The Flex forward pass computes PyTorch's expression, `a₀·(b₀·x₀₀ + b₁·x₀₁) + a₁·(b₀·x₁₀ +
//! b₁·x₁₁)` with PyTorch's weights (the rows' outer, the columns' inner), from the same taps as
//! [`crate::resample::bilinear_matrix`].

// The ndarray backend is deprecated upstream but still ours for the parity tests; the extension
// must route it like every compiled-in backend.
#![allow(deprecated)]

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::{
    Autodiff, Backend, Dispatch, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Shape, Tensor, TensorData};

use crate::linear_op::linear_unary;
use crate::pad_op::narrow;

/// `x` with its first and last rows (`dim` 2) or columns (`dim` 3) repeated once more.
fn edge_pad<B: Backend>(x: FloatTensor<B>, dim: usize) -> FloatTensor<B> {
    let n = x.shape()[dim];
    let (first, last) = (narrow::<B>(&x, dim, 0..1), narrow::<B>(&x, dim, n - 1..n));
    B::float_cat(vec![first, x, last], dim)
}

/// The composition's depthwise `[1, 3, 3, 1]/4` kernel for `c` channels.
fn up2_kernel<B: Backend>(c: usize, device: &B::Device) -> FloatTensor<B> {
    let taps = [0.25f32, 0.75, 0.75, 0.25];
    let k: Vec<f32> = taps
        .iter()
        .flat_map(|a| taps.iter().map(move |b| a * b))
        .collect();
    let weight = B::float_from_data(TensorData::new(k, [1, 1, 4, 4]), device);
    B::float_expand(weight, Shape::from(vec![c, 1, 4, 4]))
}

/// The composition of Burn ops that [`ResampleBackend::sae_bilinear_up2`] replaces: an edge pad
/// and a depthwise stride-2 transposed convolution with the separable `[1, 3, 3, 1]/4` kernel,
/// cropped by 3 (`y[2i] = ¼x[i−1] + ¾x[i]`, `y[2i+1] = ¾x[i] + ¼x[i+1]`).
fn default_up2<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let c = x.shape()[1];
    let weight = up2_kernel::<B>(c, &x.device());
    let x = edge_pad::<B>(edge_pad::<B>(x, 2), 3);
    B::conv_transpose2d(
        x,
        weight,
        None,
        ConvTransposeOptions::new([2, 2], [3, 3], [0, 0], [1, 1], c),
    )
}

/// The adjoint of [`edge_pad`]: the two outer rows (or columns) added onto the edges.
fn edge_pad_adjoint<B: Backend>(g: FloatTensor<B>, dim: usize) -> FloatTensor<B> {
    let n = g.shape()[dim] - 2;
    let pick = |range| narrow::<B>(&g, dim, range);
    if n == 1 {
        return B::float_add(B::float_add(pick(0..1), pick(1..2)), pick(2..3));
    }
    let first = B::float_add(pick(0..1), pick(1..2));
    let last = B::float_add(pick(n..n + 1), pick(n + 1..n + 2));
    if n == 2 {
        return B::float_cat(vec![first, last], dim);
    }
    B::float_cat(vec![first, pick(2..n), last], dim)
}

/// [`ResampleBackend::sae_bilinear_up2_adjoint`] from Burn ops: the adjoint of the composition,
/// i.e. the stride-2 depthwise convolution with the same kernel (the transposed convolution's
/// adjoint), then the edge pad's adjoint; the backward Burn's autodiff derived before.
fn default_up2_adjoint<B: Backend>(g: FloatTensor<B>) -> FloatTensor<B> {
    let c = g.shape()[1];
    let weight = up2_kernel::<B>(c, &g.device());
    let g = B::conv2d(g, weight, None, ConvOptions::new([2, 2], [3, 3], [1, 1], c));
    edge_pad_adjoint::<B>(edge_pad_adjoint::<B>(g, 3), 2)
}

/// Backend operations: bilinear ×2 upsampling and its adjoint.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "vulkan", feature = "cuda")),
    Autodiff
)]
pub trait ResampleBackend: Backend {
    /// Bilinear ×2 upsampling, `align_corners=False`: `[b, c, h, w]` → `[b, c, 2h, 2w]`.
    fn sae_bilinear_up2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        default_up2::<Self>(x)
    }

    /// The adjoint of [`ResampleBackend::sae_bilinear_up2`]: `[b, c, 2h, 2w]` → `[b, c, h, w]`.
    fn sae_bilinear_up2_adjoint(g: FloatTensor<Self>) -> FloatTensor<Self> {
        default_up2_adjoint::<Self>(g)
    }
}

#[cfg(feature = "flex")]
mod flex {
    //! One separable pass per plane over contiguous `f32` data; anything else takes the
    //! trait's composition.
    use super::*;
    use crate::flex_data::{contiguous_f32, from_values, planes_per_task, values};
    use crate::resample::linear_taps;
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use rayon::prelude::*;

    impl ResampleBackend for Flex {
        fn sae_bilinear_up2(x: FlexTensor) -> FlexTensor {
            crate::op_timer!("bilinear_up2 {:?}", x.shape());
            let [b, c, h, w]: [usize; 4] = x.shape().dims();
            let Some(xc) = contiguous_f32(&x) else {
                return default_up2::<Flex>(x);
            };
            let xs = values(&xc);
            let (th, tw) = (linear_taps(h, 2 * h), linear_taps(w, 2 * w));
            let (plane_in, plane_out) = (h * w, 4 * h * w);
            let per = planes_per_task(plane_out);
            let len = b * c * plane_out;
            let mut out = Vec::with_capacity(len);
            out.spare_capacity_mut()[..len]
                .par_chunks_mut(per * plane_out)
                .zip(xs.par_chunks(per * plane_in))
                .for_each_init(Vec::new, |rows, (out, xs)| {
                    rows.resize(h * 2 * w, 0.0f32);
                    for (out, x) in out.chunks_mut(plane_out).zip(xs.chunks(plane_in)) {
                        // Each input row interpolated along the width once ...
                        for (row, x) in rows.chunks_mut(2 * w).zip(x.chunks(w)) {
                            for (r, &(c0, c1, b0, b1)) in row.iter_mut().zip(&tw) {
                                *r = b0 * x[c0] + b1 * x[c1];
                            }
                        }
                        // ... then pairs of those rows along the height.
                        for (o, &(r0, r1, a0, a1)) in out.chunks_mut(2 * w).zip(&th) {
                            let (u, v) =
                                (&rows[r0 * 2 * w..][..2 * w], &rows[r1 * 2 * w..][..2 * w]);
                            for ((o, &u), &v) in o.iter_mut().zip(u).zip(v) {
                                o.write(a0 * u + a1 * v);
                            }
                        }
                    }
                });
            // SAFETY: the chunks cover all `len` elements (whole output planes), each written
            // above.
            unsafe { out.set_len(len) };
            from_values(out, [b, c, 2 * h, 2 * w])
        }

        fn sae_bilinear_up2_adjoint(g: FlexTensor) -> FlexTensor {
            crate::op_timer!("bilinear_up2_adjoint {:?}", g.shape());
            let [b, c, h2, w2]: [usize; 4] = g.shape().dims();
            let Some(gc) = contiguous_f32(&g) else {
                return default_up2_adjoint::<Flex>(g);
            };
            let gs = values(&gc);
            let (h, w) = (h2 / 2, w2 / 2);
            let (th, tw) = (linear_taps(h, h2), linear_taps(w, w2));
            let (plane_in, plane_out) = (h * w, h2 * w2);
            let per = planes_per_task(plane_out);
            let mut out = vec![0.0f32; b * c * plane_in];
            out.par_chunks_mut(per * plane_in)
                .zip(gs.par_chunks(per * plane_out))
                .for_each_init(Vec::new, |rows, (out, gs)| {
                    for (dx, g) in out.chunks_mut(plane_in).zip(gs.chunks(plane_out)) {
                        // Transposed height pass: each output row back onto its two input rows
                        // (in output order, so the sums are the same on every run) ...
                        rows.clear();
                        rows.resize(h * w2, 0.0f32);
                        for (g, &(r0, r1, a0, a1)) in g.chunks(w2).zip(&th) {
                            for (d, &v) in rows[r0 * w2..][..w2].iter_mut().zip(g) {
                                *d += a0 * v;
                            }
                            for (d, &v) in rows[r1 * w2..][..w2].iter_mut().zip(g) {
                                *d += a1 * v;
                            }
                        }
                        // ... then the transposed width pass.
                        for (dx, row) in dx.chunks_mut(w).zip(rows.chunks(w2)) {
                            for (&v, &(c0, c1, b0, b1)) in row.iter().zip(&tw) {
                                dx[c0] += b0 * v;
                                dx[c1] += b1 * v;
                            }
                        }
                    }
                });
            from_values(out, [b, c, h, w])
        }
    }
}

crate::composition_on_other_backends!(ResampleBackend);

impl<B: ResampleBackend, C: CheckpointStrategy> ResampleBackend for Autodiff<B, C> {
    fn sae_bilinear_up2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        linear_unary::<B, C, _>(
            x,
            (),
            |x, ()| B::sae_bilinear_up2(x),
            |g, ()| B::sae_bilinear_up2_adjoint(g),
        )
    }
}

/// Bilinear ×2 upsampling, `align_corners=False`, differentiable in `x` (once).
///
/// # Shapes
/// - `x`: `[batch, channels, h, w]`; output: `[batch, channels, 2h, 2w]`
///
/// The caller checks that `x` is not empty.
pub(crate) fn bilinear_up2(x: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as ResampleBackend>::sae_bilinear_up2(
        x.into_dispatch(),
    ))
}

// The test needs a CPU backend that runs each path: Flex its kernels, ndarray the compositions.
#[cfg(all(test, any(feature = "flex", feature = "ndarray")))]
mod tests {
    use super::*;
    use crate::resample::bilinear_matrix;
    use crate::test_support::{cpu_devices, lcg};
    use burn::tensor::module::conv_transpose2d;
    use burn::tensor::ops::PadMode;

    /// The Tensor-level composition this operation replaced (edge pad, depthwise transposed
    /// convolution), differentiated by Burn's autodiff.
    fn composition(x: Tensor<4>) -> Tensor<4> {
        let c = x.dims()[1];
        let taps = [0.25f32, 0.75, 0.75, 0.25];
        let k: Vec<f32> = taps
            .iter()
            .flat_map(|a| taps.iter().map(move |b| a * b))
            .collect();
        let weight = Tensor::<4>::from_data(TensorData::new(k, [1, 1, 4, 4]), &x.device())
            .expand([c, 1, 4, 4]);
        conv_transpose2d(
            x.pad((1, 1, 1, 1), PadMode::Edge),
            weight,
            None,
            ConvTransposeOptions::new([2, 2], [3, 3], [0, 0], [1, 1], c),
        )
    }

    /// Values against `A_h · x · A_wᵀ` in f64 (PyTorch's definition, edges included), and
    /// values and input gradients against the composition it replaced, on every CPU backend
    /// compiled in (Flex runs its own kernels, ndarray the trait's compositions), at sizes with
    /// sides of 1 and 2 (the edge pad's special cases) and odd sides.
    #[test]
    fn matches_the_definition_and_the_composition() {
        for base in cpu_devices() {
            let device = base.clone().autodiff();
            for [b, c, h, w] in [
                [2, 3, 5, 7],
                [1, 2, 1, 1],
                [1, 1, 1, 4],
                [1, 2, 2, 3],
                [2, 2, 16, 9],
            ] {
                let n = b * c * h * w;
                let xv = lcg(n as u32, n);
                let dyv = lcg(n as u32 + 1, 4 * n);
                let run = |fused: bool| {
                    let x =
                        Tensor::<4>::from_data(TensorData::new(xv.clone(), [b, c, h, w]), &device)
                            .require_grad();
                    let y = if fused {
                        bilinear_up2(x.clone())
                    } else {
                        composition(x.clone())
                    };
                    let dy = Tensor::<4>::from_data(
                        TensorData::new(dyv.clone(), [b, c, 2 * h, 2 * w]),
                        &device,
                    );
                    let grads = (y.clone() * dy).sum().backward();
                    let v = |t: Tensor<4>| t.into_data().to_vec::<f32>().unwrap();
                    (v(y), v(x.grad(&grads).unwrap()))
                };
                let (y1, dx1) = run(true);
                let (y0, dx0) = run(false);
                let (ah, aw) = (bilinear_matrix(h, 2 * h), bilinear_matrix(w, 2 * w));
                for p in 0..b * c {
                    for oy in 0..2 * h {
                        for ox in 0..2 * w {
                            let want: f64 = (0..h)
                                .flat_map(|i| (0..w).map(move |j| (i, j)))
                                .map(|(i, j)| {
                                    f64::from(ah[oy * h + i])
                                        * f64::from(aw[ox * w + j])
                                        * f64::from(xv[p * h * w + i * w + j])
                                })
                                .sum();
                            let got = y1[(p * 2 * h + oy) * 2 * w + ox];
                            // Two products and a sum of values below 2, in f32.
                            assert!(
                                (f64::from(got) - want).abs() < 1e-6,
                                "{base:?} [{b},{c},{h},{w}] y at {p},{oy},{ox}: {got} vs {want}"
                            );
                        }
                    }
                }
                // The composition rounds the edge (¼x + ¾x) and sums in another order: a few
                // roundings of values below 2 (y), of sums of up to 16 terms below 4 (dx).
                for (what, got, want, tol) in [("y", &y1, &y0, 1e-6), ("dx", &dx1, &dx0, 4e-6)] {
                    for (i, (a, e)) in got.iter().zip(want).enumerate() {
                        assert!(
                            (a - e).abs() <= tol * e.abs().max(1.0),
                            "{base:?} [{b},{c},{h},{w}] {what}[{i}]: {a} vs {e}"
                        );
                    }
                }
            }
        }
    }
}
