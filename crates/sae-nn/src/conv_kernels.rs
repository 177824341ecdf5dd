//! Dense 2-D convolution kernels on plain `f32` slices (NCHW, contiguous): the forward pass,
//! the input gradient (= the transposed convolution) and the weight gradient.
//!
//! Why our own: Flex lowers a convolution to an NHWC copy plus im2col into `[pixels, C·k·k]`
//! tiles and one GEMM per 512-pixel tile with the output channels as M; its input gradient is a
//! transposed convolution (GEMM + col2im per image), and Burn derives the weight gradient as a
//! convolution of the input with the output gradient as a `Ho×Wo` kernel, which Flex runs as a
//! GEMM with N = k·k = 9. At the 16–64 channels of these networks that ran at 12–60 GFLOP/s
//! where PyTorch's kernels reach 70–100 on the same two cores (`docs/performance.md`).
//!
//! Here every pass is one layout: the im2col tile is `[C·k·k, pixels]` (row-major, built from
//! NCHW rows with contiguous copies), so
//! - forward: `y_b[:, tile] = W[Co, Ci·k·k] · col[Ci·k·k, tile]` straight into the NCHW output;
//! - weight gradient: `dW += g_b[:, tile] · colᵀ` (M = Co, N = Ci·k·k, K = pixels), summed in
//!   fixed chunks of tiles and then over the chunks in order (the same sums on every run);
//! - input gradient: for stride 1 the forward pass with the flipped, transposed kernel; for
//!   other strides `dcol = Wᵀ · g_b[:, tile]` and col2im, one image per task.
//!
//! Tiles are whole output rows, at least 256 pixels of them where the plane has them (all but
//! an image's last tile; each tile streams the whole weight matrix) and more while the column
//! buffer stays in L2; the tasks run on rayon's pool (the pool Flex uses), each GEMM
//! single-threaded, except where there are fewer tiles (forward) or images (col2im input
//! gradient) than threads: then the tiles run one after another, each GEMM on the whole pool,
//! and their im2col / col2im split by channel over the pool.

use rayon::prelude::*;

/// The fewest output pixels (GEMM columns) per tile where the plane has them. Every tile
/// streams the whole weight matrix through the GEMM (9.4 MB at 512 channels, 3×3): with tiles
/// of one output row, a 32-px plane gave 32 columns per pass and a 16-px plane 16, and those
/// GEMMs ran at half the speed of wide ones (`bench_conv`, `docs/performance.md`).
const MIN_TILE_PIXELS: usize = 256;

/// A convolution's geometry: square kernel, equal stride and padding on both axes, no dilation,
/// no groups (the only convolutions of the networks that are not FIR filters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvGeom {
    /// Batch.
    pub b: usize,
    /// Input channels.
    pub ci: usize,
    /// Input height and width.
    pub h: usize,
    pub w: usize,
    /// Output channels.
    pub co: usize,
    /// Kernel side.
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    /// Output height and width, `(h + 2·pad − k) / stride + 1`.
    pub ho: usize,
    pub wo: usize,
}

impl ConvGeom {
    /// The geometry of `conv2d(x [b, ci, h, w], weight [co, ci, k, k], stride, pad)`; `None`
    /// where the kernel does not fit the padded input or a size is zero.
    pub fn new(
        [b, ci, h, w]: [usize; 4],
        co: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Option<Self> {
        if [b, ci, h, w, co, k, stride].contains(&0) || h + 2 * pad < k || w + 2 * pad < k {
            return None;
        }
        Some(Self {
            b,
            ci,
            h,
            w,
            co,
            k,
            stride,
            pad,
            ho: (h + 2 * pad - k) / stride + 1,
            wo: (w + 2 * pad - k) / stride + 1,
        })
    }

    /// Rows of the column matrix, `ci·k·k`.
    fn kk(&self) -> usize {
        self.ci * self.k * self.k
    }

    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// Output rows per tile: enough for [`MIN_TILE_PIXELS`] columns (or the whole plane; an
    /// image's last tile may be shorter), more while the column tile stays within about
    /// 256 KiB (L2).
    fn rows_per_tile(&self) -> usize {
        const TILE_FLOATS: usize = 64 * 1024;
        (TILE_FLOATS / (self.kk() * self.wo).max(1))
            .max(MIN_TILE_PIXELS.div_ceil(self.wo))
            .clamp(1, self.ho)
    }

    /// Every (image, first row, end row) the passes iterate over.
    fn tiles(&self) -> Vec<(usize, usize, usize)> {
        let r = self.rows_per_tile();
        (0..self.b)
            .flat_map(|b| {
                (0..self.ho)
                    .step_by(r)
                    .map(move |y0| (b, y0, (y0 + r).min(self.ho)))
            })
            .collect()
    }

    /// The `[lo, hi)` output columns whose input column `ox·s + kw − pad` lies inside the
    /// image.
    fn valid_cols(&self, kw: usize) -> (usize, usize) {
        valid_range(self.w, self.wo, self.stride, self.pad, kw)
    }
}

/// Output positions `o < out_len` with `o·s + kt − pad` in `[0, in_len)`, as a `[lo, hi)`
/// range (possibly empty).
fn valid_range(in_len: usize, out_len: usize, s: usize, pad: usize, kt: usize) -> (usize, usize) {
    let lo = if kt >= pad { 0 } else { (pad - kt).div_ceil(s) };
    let hi = if in_len + pad > kt {
        ((in_len + pad - kt - 1) / s + 1).min(out_len)
    } else {
        0
    };
    (lo.min(out_len), hi.max(lo.min(out_len)))
}

/// A raw pointer that may cross threads; every use writes a region no other task writes.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the tasks that share it write disjoint regions (see each use).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Through a method, so closures capture the wrapper (which is `Send`), not the field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

std::thread_local! {
    /// Each pool thread's column buffer, kept between calls: no allocation and no zeroing per
    /// tile (every use overwrites the part it reads).
    static COLUMNS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f(columns, row_stride)` on the column matrix `[kk, (y1 − y0)·wo]` of rows
/// `[y0, y1)` of one image `xb`: the image itself for a pointwise convolution (its rows of
/// pixels, stride `ho·wo`), else this thread's buffer filled by [`im2col`]. `f` must not run
/// pool work (its GEMM runs on the calling thread).
fn with_tile<R>(
    xb: &[f32],
    g: &ConvGeom,
    rows: (usize, usize),
    f: impl FnOnce(*const f32, usize) -> R,
) -> R {
    COLUMNS.with(|cell| with_tile_in(xb, g, rows, &mut cell.borrow_mut(), false, f))
}

/// [`with_tile`] with a buffer of the caller's instead of the thread's: for a caller whose
/// GEMM runs on the whole pool (a thread waiting in it may run other pool work that takes the
/// thread's buffer), which then also fills the columns on the pool (`parallel`).
fn with_tile_in<R>(
    xb: &[f32],
    g: &ConvGeom,
    (y0, y1): (usize, usize),
    col: &mut Vec<f32>,
    parallel: bool,
    f: impl FnOnce(*const f32, usize) -> R,
) -> R {
    if g.is_pointwise() {
        return f(xb[y0 * g.wo..].as_ptr(), g.ho * g.wo);
    }
    let t = (y1 - y0) * g.wo;
    if col.len() < g.kk() * t {
        col.resize(g.kk() * t, 0.0);
    }
    im2col(xb, g, y0, y1, &mut col[..g.kk() * t], parallel);
    f(col.as_ptr(), t)
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]`, all strided; on rayon's pool when `parallel`, else on
/// the calling thread.
///
/// # Safety
/// Every pointer must be valid for the strides and sizes given.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    [dst_rs, dst_cs]: [isize; 2],
    accumulate: bool,
    lhs: *const f32,
    [lhs_rs, lhs_cs]: [isize; 2],
    rhs: *const f32,
    [rhs_rs, rhs_cs]: [isize; 2],
    parallel: bool,
) {
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// The column matrix of output rows `[y0, y1)` of one image `x [ci, h, w]`: row
/// `(c·k + kh)·k + kw`, column `(oy − y0)·wo + ox`, holding `x[c, oy·s + kh − p, ox·s + kw − p]`
/// (zero outside the image).
///
/// With `parallel`, the channels are split over rayon's pool (each writes its own `k·k` rows):
/// for the tiles that run one after another with the GEMM on the whole pool, whose im2col
/// would otherwise leave the other threads idle.
fn im2col(x: &[f32], g: &ConvGeom, y0: usize, y1: usize, col: &mut [f32], parallel: bool) {
    let rows = g.k * g.k * (y1 - y0) * g.wo;
    let fill = if g.stride == 1 && g.wo == g.w {
        im2col_same
    } else {
        im2col_plane
    };
    per_channel(col, rows, x, g.h * g.w, parallel, |col, plane| {
        fill(plane, g, y0, y1, col)
    });
}

/// `f(dst, src)` on each channel's pair of chunks (`dst_len` and `src_len` elements), on
/// rayon's pool when `parallel`: the one loop of [`im2col`] and [`col2im_add`], whose channels
/// write disjoint chunks.
fn per_channel(
    dst: &mut [f32],
    dst_len: usize,
    src: &[f32],
    src_len: usize,
    parallel: bool,
    f: impl Fn(&mut [f32], &[f32]) + Sync + Send,
) {
    if parallel {
        dst.par_chunks_mut(dst_len)
            .zip(src.par_chunks(src_len))
            .for_each(|(d, s)| f(d, s));
    } else {
        dst.chunks_mut(dst_len)
            .zip(src.chunks(src_len))
            .for_each(|(d, s)| f(d, s));
    }
}

/// [`im2col`] of one channel: `plane [h, w]` into its `k·k` column rows.
fn im2col_plane(plane: &[f32], g: &ConvGeom, y0: usize, y1: usize, col: &mut [f32]) {
    let (k, s, wo) = (g.k, g.stride, g.wo);
    let t = (y1 - y0) * wo;
    for kh in 0..k {
        let (ylo, yhi) = valid_range(g.h, g.ho, s, g.pad, kh);
        for kw in 0..k {
            let (lo, hi) = g.valid_cols(kw);
            let row = &mut col[(kh * k + kw) * t..][..t];
            for (r, oy) in (y0..y1).enumerate() {
                let dst = &mut row[r * wo..(r + 1) * wo];
                if oy < ylo || oy >= yhi {
                    dst.fill(0.0);
                    continue;
                }
                let src = &plane[(oy * s + kh - g.pad) * g.w..][..g.w];
                dst[..lo].fill(0.0);
                dst[hi..].fill(0.0);
                if lo == hi {
                    // No output column of this tap reads the image (a kernel wider than
                    // the padded row reaches past it).
                    continue;
                }
                if s == 1 {
                    let start = lo + kw - g.pad;
                    dst[lo..hi].copy_from_slice(&src[start..start + hi - lo]);
                } else {
                    let taps = src[lo * s + kw - g.pad..].iter().step_by(s);
                    for (d, v) in dst[lo..hi].iter_mut().zip(taps) {
                        *d = *v;
                    }
                }
            }
        }
    }
}

/// [`im2col_plane`] for a stride-1 "same" convolution (`2·pad = k − 1`, so `wo = w`): the source
/// and column rows share the row stride `w`, so each kernel tap's column row is one contiguous
/// copy of the plane shifted by `(kh − p)·w + (kw − p)`, after which the columns that wrapped
/// around a row edge are zeroed. At the 4–32-px planes of the small models this replaces a
/// copy per output row by one per tap.
fn im2col_same(plane: &[f32], g: &ConvGeom, y0: usize, y1: usize, col: &mut [f32]) {
    let (k, p, w) = (g.k, g.pad, g.w);
    let plane_len = g.h * w;
    let t = (y1 - y0) * w;
    for kh in 0..k {
        let (ylo, yhi) = valid_range(g.h, g.ho, 1, p, kh);
        let (a, b) = (ylo.clamp(y0, y1), yhi.clamp(y0, y1).max(ylo.clamp(y0, y1)));
        for kw in 0..k {
            let row = &mut col[(kh * k + kw) * t..][..t];
            // Rows above and below the image.
            row[..(a - y0) * w].fill(0.0);
            row[(b - y0) * w..].fill(0.0);
            if a == b {
                continue;
            }
            // Output (oy, ox) reads plane[(oy + kh − p)·w + ox + kw − p]: one shifted span,
            // clipped to the plane at its two ends (those elements are wrapped columns).
            let (d0, d1) = ((a - y0) * w, (b - y0) * w);
            let shift = ((a + kh - p) * w) as isize + kw as isize - p as isize;
            // (Both clips matter only for planes narrower than the padding.)
            let skip = ((-shift).max(0) as usize).min(d1 - d0);
            let src0 = (shift.max(0) as usize).min(plane_len);
            let n = (d1 - d0 - skip).min(plane_len - src0);
            row[d0..d0 + skip].fill(0.0);
            row[d0 + skip..d0 + skip + n].copy_from_slice(&plane[src0..src0 + n]);
            row[d0 + skip + n..d1].fill(0.0);
            // Columns whose source wrapped into the neighbouring row.
            let (lo, hi) = g.valid_cols(kw);
            if (lo, hi) == (0, w) {
                continue;
            }
            for r in (a - y0)..(b - y0) {
                row[r * w..r * w + lo].fill(0.0);
                row[r * w + hi..(r + 1) * w].fill(0.0);
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds the column matrix of rows `[y0, y1)` into `x [ci, h, w]`;
/// with `parallel`, the channels split over rayon's pool as in [`im2col`].
fn col2im_add(col: &[f32], g: &ConvGeom, y0: usize, y1: usize, x: &mut [f32], parallel: bool) {
    let rows = g.k * g.k * (y1 - y0) * g.wo;
    per_channel(x, g.h * g.w, col, rows, parallel, |plane, col| {
        col2im_add_plane(col, g, y0, y1, plane)
    });
}

/// [`col2im_add`] of one channel: its `k·k` column rows into `plane [h, w]`.
fn col2im_add_plane(col: &[f32], g: &ConvGeom, y0: usize, y1: usize, plane: &mut [f32]) {
    let (k, s, wo) = (g.k, g.stride, g.wo);
    let t = (y1 - y0) * wo;
    for kh in 0..k {
        let (ylo, yhi) = valid_range(g.h, g.ho, s, g.pad, kh);
        for kw in 0..k {
            let (lo, hi) = g.valid_cols(kw);
            if lo == hi {
                continue;
            }
            let row = &col[(kh * k + kw) * t..][..t];
            for (r, oy) in (y0..y1)
                .enumerate()
                .filter(|(_, oy)| *oy >= ylo && *oy < yhi)
            {
                let src = &row[r * wo..(r + 1) * wo];
                let dst = &mut plane[(oy * s + kh - g.pad) * g.w..][..g.w];
                if s == 1 {
                    let start = lo + kw - g.pad;
                    for (d, v) in dst[start..start + hi - lo].iter_mut().zip(&src[lo..hi]) {
                        *d += v;
                    }
                } else {
                    for (ox, v) in src[lo..hi].iter().enumerate() {
                        dst[(ox + lo) * s + kw - g.pad] += v;
                    }
                }
            }
        }
    }
}

/// `conv2d(x, weight)` without bias.
///
/// # Shapes
/// - `x`: `[b, ci, h, w]`; `weight`: `[co, ci, k, k]`; output: `[b, co, ho, wo]`
pub(crate) fn conv_forward(x: &[f32], weight: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (kk, plane_in, plane_out) = (g.kk(), g.ci * g.h * g.w, g.ho * g.wo);
    debug_assert_eq!(x.len(), g.b * plane_in);
    debug_assert_eq!(weight.len(), g.co * kk);
    let len = g.b * g.co * plane_out;
    // Not zeroed: the tiles cover every output element once and the GEMM does not read `dst`
    // (its length is set after they all ran).
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = SendPtr(out.as_mut_ptr());
    let tiles = g.tiles();
    // SAFETY (of `run`'s GEMM): the task of a tile alone writes columns [y0·wo, y1·wo) of
    // image b's output rows; the sizes match the buffers (debug-asserted above).
    let run = |(b, y0, y1): (usize, usize, usize), parallel: bool| {
        let t = (y1 - y0) * g.wo;
        move |rhs: *const f32, rhs_rs: usize| unsafe {
            gemm(
                [g.co, t, kk],
                dst.get().add(b * g.co * plane_out + y0 * g.wo),
                [plane_out as isize, 1],
                false,
                weight.as_ptr(),
                [kk as isize, 1],
                rhs,
                [rhs_rs as isize, 1],
                parallel,
            )
        }
    };
    let image = |b: usize| &x[b * plane_in..(b + 1) * plane_in];
    if tiles.len() < rayon::current_num_threads() {
        // Fewer tiles than threads (a small plane at batch 1): the tiles one after another,
        // each im2col and GEMM on the whole pool.
        let mut col = Vec::new();
        for &(b, y0, y1) in &tiles {
            with_tile_in(
                image(b),
                g,
                (y0, y1),
                &mut col,
                true,
                run((b, y0, y1), true),
            );
        }
    } else {
        tiles.par_iter().for_each(|&(b, y0, y1)| {
            with_tile(image(b), g, (y0, y1), run((b, y0, y1), false));
        });
    }
    // SAFETY: every element of `out` was written above (the tiles cover each image's rows).
    unsafe { out.set_len(len) };
    out
}

/// The gradient of `conv2d(x, weight)` with respect to `weight`, i.e. `Σ_b g_b · im2col(x_b)ᵀ`.
///
/// # Shapes
/// - `x`: `[b, ci, h, w]`; `grad`: `[b, co, ho, wo]`; output: `[co, ci, k, k]`
pub(crate) fn conv_weight_grad(x: &[f32], grad: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (kk, plane_in, plane_out) = (g.kk(), g.ci * g.h * g.w, g.ho * g.wo);
    debug_assert_eq!(x.len(), g.b * plane_in);
    debug_assert_eq!(grad.len(), g.b * g.co * plane_out);
    // The pixels are this GEMM's inner dimension (at least MIN_TILE_PIXELS per call).
    let tiles = g.tiles();
    // Fixed chunks, each summed in order into its own buffer, then the buffers in order: the
    // same float sums on every run whatever the thread count or scheduling (a resumed run
    // must equal an uninterrupted one bit for bit). At most 16 chunks and 64 MiB of buffers.
    let size = g.co * kk;
    let chunks = tiles.len().min(16).min((16 << 20) / size).max(1);
    let per_chunk = tiles.len().div_ceil(chunks);
    let partial: Vec<Vec<f32>> = tiles
        .par_chunks(per_chunk)
        .map(|chunk| {
            let mut acc = vec![0.0f32; size];
            for &(b, y0, y1) in chunk {
                let t = (y1 - y0) * g.wo;
                let xb = &x[b * plane_in..(b + 1) * plane_in];
                // colᵀ [t, kk]: element (p, r) at r·rhs_cs + p.
                // SAFETY: acc is [co, kk]; the output-gradient tile is [co, t] with row stride
                // plane_out; colᵀ as above.
                let run = |rhs: *const f32, rhs_cs: usize| unsafe {
                    gemm(
                        [g.co, kk, t],
                        acc.as_mut_ptr(),
                        [kk as isize, 1],
                        true,
                        grad[b * g.co * plane_out + y0 * g.wo..].as_ptr(),
                        [plane_out as isize, 1],
                        rhs,
                        [1, rhs_cs as isize],
                        false,
                    )
                };
                with_tile(xb, g, (y0, y1), run);
            }
            acc
        })
        .collect();
    let mut partial = partial.into_iter();
    let mut sum = partial.next().unwrap_or_else(|| vec![0.0; size]);
    for p in partial {
        sum.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    sum
}

/// The gradient of `conv2d(x, weight)` with respect to `x` (= `conv_transpose2d(grad, weight)`
/// with the output padding that gives back `h × w`).
///
/// # Shapes
/// - `grad`: `[b, co, ho, wo]`; `weight`: `[co, ci, k, k]`; output: `[b, ci, h, w]`
pub(crate) fn conv_input_grad(grad: &[f32], weight: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (kk, plane_in, plane_out) = (g.kk(), g.ci * g.h * g.w, g.ho * g.wo);
    debug_assert_eq!(grad.len(), g.b * g.co * plane_out);
    debug_assert_eq!(weight.len(), g.co * kk);
    let k = g.k;
    if g.stride == 1 && g.pad < k {
        // A stride-1 convolution's adjoint is the convolution with the kernel flipped in space,
        // input and output channels swapped, and padding k − 1 − p: one fast forward pass.
        let mut flipped = vec![0.0f32; weight.len()];
        for o in 0..g.co {
            for c in 0..g.ci {
                for t in 0..k * k {
                    flipped[((c * g.co + o) * k * k) + (k * k - 1 - t)] =
                        weight[(o * g.ci + c) * k * k + t];
                }
            }
        }
        let adjoint = ConvGeom {
            b: g.b,
            ci: g.co,
            h: g.ho,
            w: g.wo,
            co: g.ci,
            k,
            stride: 1,
            pad: k - 1 - g.pad,
            ho: g.h,
            wo: g.w,
        };
        return conv_forward(grad, &flipped, &adjoint);
    }
    let mut out = vec![0.0f32; g.b * plane_in];
    let r = g.rows_per_tile();
    // One image: dcol = Wᵀ · g_b[:, tile], then col2im into that image's gradient.
    let image = |b: usize, xb: &mut [f32], col: &mut Vec<f32>, parallel: bool| {
        for y0 in (0..g.ho).step_by(r) {
            let y1 = (y0 + r).min(g.ho);
            let t = (y1 - y0) * g.wo;
            if col.len() < kk * t {
                col.resize(kk * t, 0.0);
            }
            // SAFETY: col holds [kk, t]; Wᵀ [kk, co] reads weight [co, kk] transposed; the
            // output-gradient tile is [co, t] with row stride plane_out.
            unsafe {
                gemm(
                    [kk, t, g.co],
                    col.as_mut_ptr(),
                    [t as isize, 1],
                    false,
                    weight.as_ptr(),
                    [1, kk as isize],
                    grad[b * g.co * plane_out + y0 * g.wo..].as_ptr(),
                    [plane_out as isize, 1],
                    parallel,
                )
            }
            col2im_add(&col[..kk * t], g, y0, y1, xb, parallel);
        }
    };
    if g.b < rayon::current_num_threads() {
        // Fewer images than threads (the generator's upsampling at batch 1): the images one
        // after another, each GEMM and col2im on the whole pool. (No thread-local buffer
        // here: a thread waiting in the GEMM may run other pool work.)
        let mut col = Vec::new();
        for (b, xb) in out.chunks_mut(plane_in).enumerate() {
            image(b, xb, &mut col, true);
        }
    } else {
        out.par_chunks_mut(plane_in)
            .enumerate()
            .for_each_init(Vec::new, |col, (b, xb)| image(b, xb, col, false));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one output at a time.
    fn naive_forward(x: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f32> {
        let mut out = vec![0.0f32; g.b * g.co * g.ho * g.wo];
        for b in 0..g.b {
            for o in 0..g.co {
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let mut acc = 0.0f64;
                        for c in 0..g.ci {
                            for kh in 0..g.k {
                                for kw in 0..g.k {
                                    let iy = (oy * g.stride + kh) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + kw) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    acc += x
                                        [((b * g.ci + c) * g.h + iy as usize) * g.w + ix as usize]
                                        as f64
                                        * w[((o * g.ci + c) * g.k + kh) * g.k + kw] as f64;
                                }
                            }
                        }
                        out[((b * g.co + o) * g.ho + oy) * g.wo + ox] = acc as f32;
                    }
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // A small LCG: deterministic, no dependency.
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(a, b)| *a as f64 * *b as f64).sum()
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: length");
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in a.iter().zip(b).enumerate() {
            // f32 sums of at most a few hundred products of values in [-0.5, 0.5].
            assert!((a - b).abs() <= 1e-5 * scale, "{what}[{i}]: {a} vs {b}");
        }
    }

    /// Forward against the definition; the two gradients by the adjoint identities
    /// `<conv(x, w), g> = <x, dx(g, w)> = <w, dw(x, g)>` for every geometry the networks use
    /// (3×3 pad 1, strided 3×3 pad 0 after a blur, 1×1, stride-2 transposed shapes) and odd
    /// sizes, with several tiles per image and a shorter last one; on one thread and on more
    /// threads than tiles, so that both forward paths (tiles in parallel, tiles one after
    /// another with the GEMM on the pool) run on any machine.
    #[test]
    fn kernels_match_the_definition_and_are_adjoint() {
        // The first three geometries below are there for their tiling.
        let tiles = |shape, co, k, s, p| ConvGeom::new(shape, co, k, s, p).unwrap().tiles();
        let rows = |t: Vec<(usize, usize, usize)>| -> Vec<usize> {
            t.iter().filter(|t| t.0 == 0).map(|t| t.2 - t.1).collect()
        };
        assert_eq!(rows(tiles([2, 40, 40, 17], 4, 3, 1, 1)), [16, 16, 8]);
        assert_eq!(rows(tiles([1, 256, 40, 17], 3, 1, 1, 0)), [16, 16, 8]);
        assert_eq!(rows(tiles([1, 40, 81, 81], 3, 3, 2, 1)), [7, 7, 7, 7, 7, 6]);
        for threads in [1, 64] {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(check_every_geometry);
        }
    }

    fn check_every_geometry() {
        for &(shape, co, k, s, p) in &[
            // Several tiles per image (MIN_TILE_PIXELS): 16, 16 and 8 rows; the same for a
            // pointwise convolution; 7-row tiles and a last one of 6 through col2im.
            ([2, 40, 40, 17], 4, 3, 1, 1),
            ([1, 256, 40, 17], 3, 1, 1, 0),
            ([1, 40, 81, 81], 3, 3, 2, 1),
            ([2, 3, 7, 5], 4, 3, 1, 1),
            ([3, 5, 9, 9], 2, 3, 2, 0),
            ([1, 4, 8, 6], 3, 1, 1, 0),
            ([2, 4, 8, 8], 3, 1, 2, 0),
            ([2, 2, 9, 11], 3, 3, 2, 1),
            ([1, 3, 6, 6], 2, 4, 2, 1),
            ([2, 40, 70, 3], 5, 3, 1, 1),
            ([1, 2, 5, 5], 2, 3, 1, 2),
            ([2, 3, 6, 7], 2, 5, 1, 2),
            ([1, 2, 2, 2], 3, 3, 1, 1),
            ([1, 1, 1, 1], 2, 3, 1, 1),
            ([3, 2, 1, 9], 2, 3, 1, 1),
            ([1, 1, 1, 1], 1, 5, 1, 2),
            ([2, 2, 1, 3], 3, 5, 1, 2),
            ([1, 2, 2, 1], 2, 7, 1, 3),
            // Kernels that reach past the padded image on some taps.
            ([1, 1, 2, 2], 1, 6, 1, 2),
            ([1, 1, 3, 1], 1, 1, 3, 1),
            ([2, 1, 5, 1], 2, 7, 2, 3),
            ([1, 2, 7, 2], 2, 6, 1, 2),
        ] {
            let g = ConvGeom::new(shape, co, k, s, p).unwrap();
            let x = values(g.b * g.ci * g.h * g.w, 1);
            let w = values(g.co * g.kk(), 2);
            let gr = values(g.b * g.co * g.ho * g.wo, 3);
            let y = conv_forward(&x, &w, &g);
            close(&y, &naive_forward(&x, &w, &g), &format!("forward {g:?}"));
            let dx = conv_input_grad(&gr, &w, &g);
            let dw = conv_weight_grad(&x, &gr, &g);
            let (yg, xdx, wdw) = (dot(&y, &gr), dot(&x, &dx), dot(&w, &dw));
            let tol = 1e-4 * yg.abs().max(1.0);
            assert!((yg - xdx).abs() < tol, "input grad {g:?}: {yg} vs {xdx}");
            assert!((yg - wdw).abs() < tol, "weight grad {g:?}: {yg} vs {wdw}");
        }
    }

    #[test]
    fn geometry_refuses_what_does_not_fit() {
        assert!(ConvGeom::new([1, 1, 2, 2], 1, 3, 1, 0).is_none());
        assert!(ConvGeom::new([0, 1, 4, 4], 1, 3, 1, 1).is_none());
        assert!(ConvGeom::new([1, 1, 4, 4], 1, 3, 0, 1).is_none());
        let g = ConvGeom::new([1, 1, 2, 2], 1, 3, 1, 1).unwrap();
        assert_eq!((g.ho, g.wo), (2, 2));
    }
}
