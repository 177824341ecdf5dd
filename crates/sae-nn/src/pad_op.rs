//! Reflection padding of the last two axes (the encoder's, PyTorch's `ReflectionPad2d`) as one
//! backend operation with its own backward pass.
//!
//! Burn's `pad(.., PadMode::Reflect)` builds the result one axis at a time from a zeroed
//! buffer, a copy of the input and slices of it, flipped and assigned: four passes over the data
//! and two fresh buffers forward, as many again in the backward pass its autodiff derives. In
//! a batch-1 church-256 swap that was 4–5 % of the time (`docs/performance.md`, eighth round).
//! On Flex the forward pass and its adjoint are each one pass per plane here; other backends
//! run Burn's `pad` forward, and the adjoint below from Burn's slices, flips and sums.

// The ndarray backend is deprecated upstream but still ours for the parity tests; the extension
// must route it like every compiled-in backend.
#![allow(deprecated)]

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::{
    Autodiff, Backend, Dispatch, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::Slice;
use burn::tensor::Tensor;
use burn::tensor::ops::PadMode;

use crate::linear_op::linear_unary;

/// The slices that take `range` along axis `dim` of a 4-D tensor and all of the other axes.
fn axis_slices(dim: usize, range: std::ops::Range<usize>) -> Vec<Slice> {
    (0..4)
        .map(|d| {
            if d == dim {
                Slice::from(range.clone())
            } else {
                Slice::from(..)
            }
        })
        .collect()
}

/// `range` along axis `dim` of a 4-D tensor (rows: `dim` 2, columns: `dim` 3).
pub(crate) fn narrow<B: Backend>(
    t: &FloatTensor<B>,
    dim: usize,
    range: std::ops::Range<usize>,
) -> FloatTensor<B> {
    B::float_slice(t.clone(), &axis_slices(dim, range))
}

/// `t` with `add` added onto `range` along axis `dim`.
fn add_onto<B: Backend>(
    t: FloatTensor<B>,
    dim: usize,
    range: std::ops::Range<usize>,
    add: FloatTensor<B>,
) -> FloatTensor<B> {
    let sum = B::float_add(narrow::<B>(&t, dim, range.clone()), add);
    B::float_slice_assign(t, &axis_slices(dim, range), sum)
}

/// The adjoint of reflection padding along axis `dim` by `(p0, p1)`: the inner part, with the
/// padded rows (or columns) added back onto the ones they mirror. Padded index `t < p0` mirrors
/// `p0 − t`; `p0 + n + t` mirrors `n − 2 − t`.
fn reflect_adjoint_axis<B: Backend>(
    g: FloatTensor<B>,
    dim: usize,
    [p0, p1]: [usize; 2],
) -> FloatTensor<B> {
    let n = g.shape()[dim] - p0 - p1;
    let mut inner = narrow::<B>(&g, dim, p0..p0 + n);
    if p0 > 0 {
        let before = B::float_flip(narrow::<B>(&g, dim, 0..p0), &[dim]);
        inner = add_onto::<B>(inner, dim, 1..p0 + 1, before);
    }
    if p1 > 0 {
        let after = B::float_flip(narrow::<B>(&g, dim, p0 + n..p0 + n + p1), &[dim]);
        inner = add_onto::<B>(inner, dim, n - 1 - p1..n - 1, after);
    }
    inner
}

/// Burn's reflection pad of the last two axes by `(p0, p1)`.
fn default_pad<B: Backend>(x: FloatTensor<B>, p0: usize, p1: usize) -> FloatTensor<B> {
    B::float_pad(x, &[(0, 0), (0, 0), (p0, p1), (p0, p1)], PadMode::Reflect)
}

/// The adjoint of [`default_pad`] from Burn's slices, flips and sums, one axis at a time.
fn default_pad_adjoint<B: Backend>(g: FloatTensor<B>, p0: usize, p1: usize) -> FloatTensor<B> {
    let g = reflect_adjoint_axis::<B>(g, 3, [p0, p1]);
    reflect_adjoint_axis::<B>(g, 2, [p0, p1])
}

/// Backend operations: reflection padding of the last two axes and its adjoint.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "vulkan", feature = "cuda")),
    Autodiff
)]
pub trait PadBackend: Backend {
    /// `[b, c, h, w]` → `[b, c, p0 + h + p1, p0 + w + p1]`, each plane padded by reflection
    /// (the edge row and column not repeated): `p0` before and `p1` after on both axes, each
    /// below the side it pads.
    fn sae_reflect_pad(x: FloatTensor<Self>, p0: usize, p1: usize) -> FloatTensor<Self> {
        default_pad::<Self>(x, p0, p1)
    }

    /// The adjoint of [`PadBackend::sae_reflect_pad`]: `[b, c, H, W]` → `[b, c, H − p0 − p1,
    /// W − p0 − p1]`.
    fn sae_reflect_pad_adjoint(g: FloatTensor<Self>, p0: usize, p1: usize) -> FloatTensor<Self> {
        default_pad_adjoint::<Self>(g, p0, p1)
    }
}

#[cfg(feature = "flex")]
mod flex {
    //! One pass per plane over contiguous `f32` data; anything else takes the trait's
    //! composition.
    use super::*;
    use crate::flex_data::{contiguous_f32, from_values, planes_per_task, values};
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use rayon::prelude::*;

    /// The source index of padded index `i` along an axis of `n` padded by `p0` before.
    fn mirror(i: usize, p0: usize, n: usize) -> usize {
        if i < p0 {
            p0 - i
        } else if i - p0 < n {
            i - p0
        } else {
            2 * (n - 1) - (i - p0)
        }
    }

    impl PadBackend for Flex {
        fn sae_reflect_pad(x: FlexTensor, p0: usize, p1: usize) -> FlexTensor {
            crate::op_timer!("reflect_pad {:?} {p0},{p1}", x.shape());
            let [b, c, h, w]: [usize; 4] = x.shape().dims();
            // Burn's pad names a pad that reaches past the mirrored side (it panics).
            let fits = p0.max(p1) < h.min(w);
            let Some(xc) = contiguous_f32(&x).filter(|_| fits) else {
                return default_pad::<Flex>(x, p0, p1);
            };
            let xs = values(&xc);
            let (hp, wp) = (p0 + h + p1, p0 + w + p1);
            let (plane_in, plane_out) = (h * w, hp * wp);
            let per = planes_per_task(plane_out);
            let len = b * c * plane_out;
            let mut out = Vec::with_capacity(len);
            out.spare_capacity_mut()[..len]
                .par_chunks_mut(per * plane_out)
                .zip(xs.par_chunks(per * plane_in))
                .for_each(|(out, xs)| {
                    for (out, x) in out.chunks_mut(plane_out).zip(xs.chunks(plane_in)) {
                        for (i, o) in out.chunks_mut(wp).enumerate() {
                            let src = &x[mirror(i, p0, h) * w..][..w];
                            let (before, rest) = o.split_at_mut(p0);
                            let (inner, after) = rest.split_at_mut(w);
                            for (t, o) in before.iter_mut().enumerate() {
                                o.write(src[p0 - t]);
                            }
                            for (o, &v) in inner.iter_mut().zip(src) {
                                o.write(v);
                            }
                            for (t, o) in after.iter_mut().enumerate() {
                                o.write(src[w - 2 - t]);
                            }
                        }
                    }
                });
            // SAFETY: the chunks cover all `len` elements (whole output planes), each written
            // above.
            unsafe { out.set_len(len) };
            from_values(out, [b, c, hp, wp])
        }

        fn sae_reflect_pad_adjoint(g: FlexTensor, p0: usize, p1: usize) -> FlexTensor {
            crate::op_timer!("reflect_pad_adjoint {:?} {p0},{p1}", g.shape());
            let [b, c, hp, wp]: [usize; 4] = g.shape().dims();
            let (h, w) = (hp.saturating_sub(p0 + p1), wp.saturating_sub(p0 + p1));
            let fits = p0.max(p1) < h.min(w);
            let Some(gc) = contiguous_f32(&g).filter(|_| fits) else {
                return default_pad_adjoint::<Flex>(g, p0, p1);
            };
            let gs = values(&gc);
            let (plane_in, plane_out) = (h * w, hp * wp);
            let per = planes_per_task(plane_out);
            let mut out = vec![0.0f32; b * c * plane_in];
            out.par_chunks_mut(per * plane_in)
                .zip(gs.par_chunks(per * plane_out))
                .for_each(|(dx, gs)| {
                    for (dx, g) in dx.chunks_mut(plane_in).zip(gs.chunks(plane_out)) {
                        // Padded rows in order onto the rows they mirror, and within a row the
                        // columns before, the inner ones, then the ones after: the same sums on
                        // every run.
                        for (i, g) in g.chunks(wp).enumerate() {
                            let row = &mut dx[mirror(i, p0, h) * w..][..w];
                            let (before, rest) = g.split_at(p0);
                            let (inner, after) = rest.split_at(w);
                            for (t, &v) in before.iter().enumerate() {
                                row[p0 - t] += v;
                            }
                            for (d, &v) in row.iter_mut().zip(inner) {
                                *d += v;
                            }
                            for (t, &v) in after.iter().enumerate() {
                                row[w - 2 - t] += v;
                            }
                        }
                    }
                });
            from_values(out, [b, c, h, w])
        }
    }
}

crate::composition_on_other_backends!(PadBackend);

impl<B: PadBackend, C: CheckpointStrategy> PadBackend for Autodiff<B, C> {
    fn sae_reflect_pad(x: FloatTensor<Self>, p0: usize, p1: usize) -> FloatTensor<Self> {
        linear_unary::<B, C, _>(
            x,
            [p0, p1],
            |x, [p0, p1]| B::sae_reflect_pad(x, p0, p1),
            |g, [p0, p1]| B::sae_reflect_pad_adjoint(g, p0, p1),
        )
    }
}

/// Reflection padding of the last two axes, `p0` before and `p1` after on both, differentiable
/// in `x` (once).
///
/// # Shapes
/// - `x`: `[batch, channels, h, w]`; output: `[batch, channels, p0 + h + p1, p0 + w + p1]`
///
/// The caller checks that `p0` and `p1` are below `h` and `w`.
pub(crate) fn reflect_pad(x: Tensor<4>, [p0, p1]: [usize; 2]) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as PadBackend>::sae_reflect_pad(
        x.into_dispatch(),
        p0,
        p1,
    ))
}

// The test needs a CPU backend that runs each path: Flex its kernels, ndarray the compositions.
#[cfg(all(test, any(feature = "flex", feature = "ndarray")))]
mod tests {
    use super::*;
    use crate::test_support::{cpu_devices, lcg};
    use burn::tensor::TensorData;

    /// Values and input gradients against Burn's `pad(.., Reflect)` differentiated by Burn's
    /// autodiff, on every CPU backend compiled in (Flex runs its own kernels, ndarray the
    /// trait's compositions): symmetric and one-sided pads, pads of side − 1 (the largest
    /// allowed), sides of 2, non-square planes, and both pads mirroring onto one index. Both
    /// paths only move and add values: the values must be equal, the gradients equal up to
    /// the order of their additions.
    #[test]
    fn matches_burns_reflection_pad() {
        for base in cpu_devices() {
            let device = base.clone().autodiff();
            for ([b, c, h, w], [p0, p1]) in [
                ([2, 3, 5, 7], [1, 1]),
                ([1, 2, 4, 4], [2, 1]),
                ([1, 1, 6, 3], [0, 2]),
                ([2, 1, 3, 5], [2, 0]),
                ([1, 2, 2, 2], [1, 1]),
                ([1, 1, 9, 8], [3, 3]),
                ([1, 1, 4, 5], [0, 0]),
                ([1, 1, 3, 3], [2, 1]),
            ] {
                let n = b * c * h * w;
                let (hp, wp) = (p0 + h + p1, p0 + w + p1);
                let xv = lcg(n as u32, n);
                let dyv = lcg(n as u32 + 7, b * c * hp * wp);
                let run = |ours: bool| {
                    let x =
                        Tensor::<4>::from_data(TensorData::new(xv.clone(), [b, c, h, w]), &device)
                            .require_grad();
                    let y = if ours {
                        reflect_pad(x.clone(), [p0, p1])
                    } else {
                        x.clone().pad((p0, p1, p0, p1), PadMode::Reflect)
                    };
                    let dy = Tensor::<4>::from_data(
                        TensorData::new(dyv.clone(), [b, c, hp, wp]),
                        &device,
                    );
                    let grads = (y.clone() * dy).sum().backward();
                    let v = |t: Tensor<4>| t.into_data().to_vec::<f32>().unwrap();
                    (v(y), v(x.grad(&grads).unwrap()))
                };
                let ((y1, dx1), (y0, dx0)) = (run(true), run(false));
                assert_eq!(y1, y0, "{base:?} {:?} pads {p0},{p1}", [b, c, h, w]);
                for (i, (a, e)) in dx1.iter().zip(&dx0).enumerate() {
                    // A gradient sums at most 9 terms below 2 (3 per axis where both pads
                    // mirror onto one index): the two orders of summation differ by at most
                    // 8 roundings of values below 18.
                    assert!(
                        (a - e).abs() <= 8.0 * f32::EPSILON * 18.0,
                        "{base:?} {:?} pads {p0},{p1} dx[{i}]: {a} vs {e}",
                        [b, c, h, w]
                    );
                }
            }
        }
    }
}
