//! The stride-1 depthwise FIR filter as one backend operation with its own backward pass, and on
//! Flex our own kernel for it.
//!
//! Every blur of the networks is a depthwise convolution with a fixed kernel. Burn derives the
//! input gradient of any convolution as a transposed convolution, which Flex runs as one small
//! GEMM plus col2im per channel: measured at about 10× the forward on a 64-channel blur
//! (`docs/performance.md`). The adjoint of a stride-1 FIR filter is the same filter reversed
//! with the complementary padding (see [`crate::Blur::input_vjp`]), i.e. again a depthwise
//! convolution, so this operation registers exactly that as its backward pass.
//!
//! The forward pass is Burn's own `conv2d` on every backend but Flex, where it is the kernel of
//! the `flex` module below; the autodiff backward is the same operation with the reversed taps.
//! Both compute the convolution's numbers up to the order of float summation.

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

/// The depthwise convolution through Burn's `conv2d` (every backend but Flex, and Flex's
/// fallback for what its kernel does not take).
fn default_fir_depthwise<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    pad: [usize; 2],
) -> FloatTensor<B> {
    let channels = weight.shape()[0];
    B::conv2d(x, weight, None, depthwise_options(channels, pad))
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
        default_fir_depthwise::<Self>(x, weight, [pad0, pad1])
    }
}

#[cfg(feature = "flex")]
mod flex {
    //! Our own stride-1 depthwise kernel on contiguous `f32` data, for separable kernels (every
    //! blur's: `outer(t, t)`, scaled). Flex runs a depthwise convolution through its general 3-D
    //! convolution routine (`conv3d_f32`): 11 % of a 128-px training step and 15 % of a
    //! `quickstart` step went there (`docs/performance.md`, seventh round). Here each plane is
    //! copied into a zero-bordered buffer and filtered by a row pass and a column pass, `2k`
    //! products per output instead of `k²`, with the planes split over the pool. Other kernels
    //! keep Flex's convolution.
    use super::*;
    use crate::conv_kernels::with_spare;
    use crate::flex_data::{contiguous_f32, from_values, planes_per_task, values};
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use rayon::prelude::*;

    impl FirBackend for Flex {
        fn fir_depthwise(
            x: FlexTensor,
            weight: FlexTensor,
            reversed: FlexTensor,
            pad0: usize,
            pad1: usize,
        ) -> FlexTensor {
            let (xs, ws) = (x.shape(), weight.shape());
            crate::op_timer!("fir {xs:?} k{} pad {pad0},{pad1}", ws[2]);
            let k = ws[2];
            // Anything else (another rank, an empty input, a pad past the kernel) takes
            // Flex's convolution, which reports it as Burn does.
            let fits = xs.num_dims() == 4
                && xs.iter().all(|&d| d > 0)
                && ws.num_dims() == 4
                && ws[0] == xs[1]
                && ws[1] == 1
                && ws[3] == k
                && pad0 < k
                && pad1 < k
                && xs[2] + pad0 + pad1 >= k
                && xs[3] + pad0 + pad1 >= k;
            let _ = reversed;
            let (true, Some(xc), Some(wc)) = (fits, contiguous_f32(&x), contiguous_f32(&weight))
            else {
                return default_fir_depthwise::<Flex>(x, weight, [pad0, pad1]);
            };
            let factors: Option<Vec<Separable>> = values(&wc)
                .chunks(k * k)
                .map(|taps| Separable::of(taps, k))
                .collect();
            let Some(factors) = factors else {
                return default_fir_depthwise::<Flex>(x, weight, [pad0, pad1]);
            };
            let [b, c, h, w] = [xs[0], xs[1], xs[2], xs[3]];
            let (ho, wo) = (h + pad0 + pad1 + 1 - k, w + pad0 + pad1 + 1 - k);
            let out = depthwise(values(&xc), &factors, [b, c, h, w], k, pad0, [ho, wo]);
            from_values(out, [b, c, ho, wo])
        }
    }

    /// `out[n, ch, oy, ox] = Σ_{i, j < k} col[i] · row[j] · x[n, ch, oy + i − p0, ox + j − p0]`
    /// with channel `ch`'s factors, zero outside the input (Burn's cross-correlation with
    /// padding `p0` before; the output size carries the padding after). Each output is one
    /// fixed sum (a row pass, then a column pass, taps in order), the same on every run and
    /// thread count.
    pub(super) fn depthwise(
        x: &[f32],
        factors: &[Separable],
        [b, c, h, w]: [usize; 4],
        k: usize,
        p0: usize,
        [ho, wo]: [usize; 2],
    ) -> Vec<f32> {
        let len = b * c * ho * wo;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        if len == 0 {
            return out;
        }
        // Each plane is copied into a zero-bordered buffer first, so that the inner loops have
        // no bounds: `ho + k − 1` rows of `wo + k − 1`.
        let (ph, pw) = (ho + k - 1, wo + k - 1);
        let planes_per_task = planes_per_task(ho * wo);
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(planes_per_task * ho * wo)
            .enumerate()
            .for_each(|(task, chunk)| {
                // A kept buffer of this thread's (a fresh one per task cost page faults at
                // 257-px planes); its border is zeroed once, the planes overwrite the inside.
                with_spare([ph * pw, ph * wo], |[padded, rows]| {
                    let padded = &mut padded[..ph * pw];
                    padded.fill(0.0);
                    for (j, plane) in chunk.chunks_mut(ho * wo).enumerate() {
                        let p = task * planes_per_task + j;
                        let src = &x[p * h * w..][..h * w];
                        for (row, line) in padded[p0 * pw..].chunks_mut(pw).zip(src.chunks(w)) {
                            row[p0..p0 + w].copy_from_slice(line);
                        }
                        factors[p % c].filter(padded, pw, &mut rows[..ph * wo], plane, wo);
                    }
                });
            });
        // SAFETY: the tasks cover all len elements, each written above.
        unsafe { out.set_len(len) };
        out
    }

    /// A kernel `w[i, j] = col[i] · row[j]`: every blur's (`outer(t, t)`, scaled).
    pub(super) struct Separable {
        col: Vec<f32>,
        row: Vec<f32>,
    }

    impl Separable {
        /// The factors of `taps` (`[k, k]`) where their products give back every tap to within
        /// 2⁻²¹ of the largest (f32 rounding of the division below; the blurs' taps factor
        /// exactly or within one rounding), else `None`.
        pub(super) fn of(taps: &[f32], k: usize) -> Option<Self> {
            let (big, &pivot) = taps
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))?;
            if pivot == 0.0 || !pivot.is_finite() {
                return None;
            }
            let (bi, bj) = (big / k, big % k);
            let col: Vec<f32> = (0..k).map(|i| taps[i * k + bj]).collect();
            let row: Vec<f32> = (0..k).map(|j| taps[bi * k + j] / pivot).collect();
            let tol = pivot.abs() * f32::EPSILON * 4.0;
            let exact = (0..k * k).all(|t| (col[t / k] * row[t % k] - taps[t]).abs() <= tol);
            exact.then_some(Self { col, row })
        }

        /// One plane: the row pass into `rows` (`[ph, wo]`), then the column pass into `out`.
        fn filter(
            &self,
            padded: &[f32],
            pw: usize,
            rows: &mut [f32],
            out: &mut [std::mem::MaybeUninit<f32>],
            wo: usize,
        ) {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                /// The same passes compiled 8-wide (the crate builds for baseline x86-64,
                /// 4-wide): the same bits, as there are no fused multiply-adds either way.
                #[target_feature(enable = "avx2")]
                fn wide(
                    s: &Separable,
                    padded: &[f32],
                    pw: usize,
                    rows: &mut [f32],
                    out: &mut [std::mem::MaybeUninit<f32>],
                    wo: usize,
                ) {
                    s.passes(padded, pw, rows, out, wo)
                }
                // SAFETY: the CPU has AVX2.
                return unsafe { wide(self, padded, pw, rows, out, wo) };
            }
            self.passes(padded, pw, rows, out, wo)
        }

        #[inline(always)]
        fn passes(
            &self,
            padded: &[f32],
            pw: usize,
            rows: &mut [f32],
            out: &mut [std::mem::MaybeUninit<f32>],
            wo: usize,
        ) {
            // The blurs' two sides (the encoder's [1, 2, 1], StyleGAN2's [1, 3, 3, 1]) unrolled;
            // the generic loop below ran the 3-tap one at 2.5× the 4-tap one's time per output
            // (`docs/performance.md`, twelfth round).
            match self.row.len() {
                3 => return separable_passes::<3>(self, padded, pw, rows, out, wo),
                4 => return separable_passes::<4>(self, padded, pw, rows, out, wo),
                _ => {}
            }
            for (line, h) in padded.chunks(pw).zip(rows.chunks_mut(wo)) {
                for (ox, h) in h.iter_mut().enumerate() {
                    let mut acc = 0.0f32;
                    for (t, v) in self.row.iter().zip(&line[ox..]) {
                        acc += t * v;
                    }
                    *h = acc;
                }
            }
            for (oy, o) in out.chunks_mut(wo).enumerate() {
                for (ox, o) in o.iter_mut().enumerate() {
                    let mut acc = 0.0f32;
                    for (i, t) in self.col.iter().enumerate() {
                        acc += t * rows[(oy + i) * wo + ox];
                    }
                    o.write(acc);
                }
            }
        }
    }

    /// [`Separable::passes`] for a constant side `K`: each pass over contiguous outputs in
    /// blocks of [`LANES`] with the taps unrolled, then the row's last few one at a time. Written
    /// as plain loops over each output, the column pass compiled to scalar code and took most of
    /// the filter's time on the small models' 16–33-px planes (`perf annotate`;
    /// `docs/performance.md`, twelfth round). Each output is the same sum in the same order
    /// either way.
    #[inline(always)]
    fn separable_passes<const K: usize>(
        s: &Separable,
        padded: &[f32],
        pw: usize,
        rows: &mut [f32],
        out: &mut [std::mem::MaybeUninit<f32>],
        wo: usize,
    ) {
        let row: [f32; K] = std::array::from_fn(|j| s.row[j]);
        let col: [f32; K] = std::array::from_fn(|i| s.col[i]);
        let blocks = wo / LANES * LANES;
        for (line, h) in padded.chunks(pw).zip(rows.chunks_mut(wo)) {
            let line = &line[..wo + K - 1];
            for ox in (0..blocks).step_by(LANES) {
                let acc = taps_block(&row, |j| &line[ox + j..][..LANES]);
                h[ox..ox + LANES].copy_from_slice(&acc);
            }
            for ox in blocks..wo {
                h[ox] = taps_one(&row, |j| line[ox + j]);
            }
        }
        for (oy, o) in out.chunks_mut(wo).enumerate() {
            let src: [&[f32]; K] = std::array::from_fn(|i| &rows[(oy + i) * wo..][..wo]);
            for ox in (0..blocks).step_by(LANES) {
                let acc = taps_block(&col, |i| &src[i][ox..ox + LANES]);
                for (o, a) in o[ox..ox + LANES].iter_mut().zip(acc) {
                    o.write(a);
                }
            }
            for ox in blocks..wo {
                o[ox].write(taps_one(&col, |i| src[i][ox]));
            }
        }
    }

    /// `Σ_t taps[t] · at(t)[l]` for the [`LANES`] outputs of a block, summed from tap 0 up
    /// (the order of [`taps_one`], so a block and a single output round alike).
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    fn taps_block<'a, const K: usize>(
        taps: &[f32; K],
        at: impl Fn(usize) -> &'a [f32],
    ) -> [f32; LANES] {
        let v: [&[f32; LANES]; K] =
            std::array::from_fn(|t| at(t).try_into().expect("each tap's slice holds one block"));
        let mut acc = [0.0f32; LANES];
        for l in 0..LANES {
            acc[l] = taps[0] * v[0][l];
        }
        for t in 1..K {
            for l in 0..LANES {
                acc[l] += taps[t] * v[t][l];
            }
        }
        acc
    }

    /// `Σ_t taps[t] · at(t)` for one output, summed from tap 0 up.
    #[inline(always)]
    fn taps_one<const K: usize>(taps: &[f32; K], at: impl Fn(usize) -> f32) -> f32 {
        let mut acc = taps[0] * at(0);
        for (t, &w) in taps.iter().enumerate().skip(1) {
            acc += w * at(t);
        }
        acc
    }

    /// Outputs per block of [`separable_passes`]: one AVX2 vector.
    const LANES: usize = 8;
}
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

        impl<B: FirBackend> Backward<B, 1> for FirBackward {
            /// The reversed kernel and the adjoint's padding.
            type State = (FloatTensor<B>, [usize; 2]);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                // The adjoint is the same operation with the reversed kernel (whose own
                // reverse, the third argument, no backward pass of this one reads).
                let (reversed, pad) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |g| {
                    B::fir_depthwise(g, reversed.clone(), reversed, pad[0], pad[1])
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

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::flex::{Separable, depthwise};

    /// The definition, one output at a time, in f64.
    fn naive(
        x: &[f32],
        wt: &[f32],
        [b, c, h, w]: [usize; 4],
        k: usize,
        p0: usize,
        [ho, wo]: [usize; 2],
    ) -> Vec<f64> {
        let mut out = vec![0.0f64; b * c * ho * wo];
        for p in 0..b * c {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = 0.0f64;
                    for i in 0..k {
                        for j in 0..k {
                            let (iy, ix) = (
                                (oy + i) as isize - p0 as isize,
                                (ox + j) as isize - p0 as isize,
                            );
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                acc += f64::from(wt[(p % c) * k * k + i * k + j])
                                    * f64::from(x[p * h * w + iy as usize * w + ix as usize]);
                            }
                        }
                    }
                    out[(p * ho + oy) * wo + ox] = acc;
                }
            }
        }
        out
    }

    /// Every kernel side the networks use and others (the run-time side path), pads from 0 to
    /// k − 1 before and after, planes narrower than a vector and with ragged ends, several planes
    /// per task and one; per channel a separable kernel with random factors or the blurs' own:
    /// each output within f32 rounding of the f64 definition (1e-6 of the largest sum of
    /// absolute products, k²: inputs and taps lie in [−1, 1]; f32 sums of 2k ≤ 10 terms round by
    /// far less). Kernels that are not separable are refused (they keep Flex's convolution).
    #[test]
    fn depthwise_matches_the_definition() {
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for &(b, c, h, w, k, p0, p1) in &[
            (2, 3, 5, 7, 4, 2, 1),
            (1, 2, 9, 17, 4, 1, 1),
            (3, 1, 4, 4, 4, 2, 2),
            (1, 4, 8, 8, 3, 1, 1),
            (2, 2, 6, 11, 3, 0, 2),
            (1, 3, 7, 10, 5, 4, 0),
            (1, 2, 3, 3, 1, 0, 0),
            (2, 130, 140, 131, 4, 1, 2),
        ] {
            let x: Vec<f32> = (0..b * c * h * w).map(|_| next()).collect();
            let wt: Vec<f32> = (0..c)
                .flat_map(|ch| {
                    if ch % 2 == 0 {
                        let (a, b): (Vec<f32>, Vec<f32>) = (0..k).map(|_| (next(), next())).unzip();
                        (0..k * k)
                            .map(|t| a[t / k] * b[t % k])
                            .collect::<Vec<f32>>()
                    } else {
                        let taps: Vec<f32> = (0..k).map(|i| [1.0, 3.0, 3.0, 1.0, 2.0][i]).collect();
                        crate::FirKernel::new(&taps).with_gain(4.0).values()
                    }
                })
                .collect();
            let factors: Vec<Separable> = wt
                .chunks(k * k)
                .map(|t| Separable::of(t, k).expect("a separable kernel"))
                .collect();
            if k > 1 {
                let random: Vec<f32> = (0..k * k).map(|_| next()).collect();
                assert!(Separable::of(&random, k).is_none(), "random {k}x{k} taps");
            }
            let (ho, wo) = (h + p0 + p1 + 1 - k, w + p0 + p1 + 1 - k);
            let got = depthwise(&x, &factors, [b, c, h, w], k, p0, [ho, wo]);
            let want = naive(&x, &wt, [b, c, h, w], k, p0, [ho, wo]);
            assert_eq!(got.len(), want.len());
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(*g) - e).abs() <= 1e-6 * (k * k) as f64,
                    "{b}x{c}x{h}x{w}, k {k}, pad ({p0}, {p1}): output {i} is {g}, want {e}"
                );
            }
        }
    }
}
