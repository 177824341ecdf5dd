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
//! buffer stays in L2. Where a whole plane has fewer than 256 pixels and the weight is large
//! (the discriminator's 4–16-px layers at 512 channels), a tile holds several images side by
//! side instead, their output-gradient planes gathered and their outputs scattered by copies.
//! The tasks run on rayon's pool (the pool Flex uses), each GEMM single-threaded, except where
//! there are fewer tiles (forward), tasks (col2im input gradient) or partial sums (weight
//! gradient) than threads: then the tiles run one after another, each GEMM on the whole pool,
//! and their im2col / col2im split by channel over the pool. Stride-2 im2col and col2im go
//! through each input row's even and odd columns, so that every tap is a contiguous copy or
//! add rather than a gather or scatter of every other element.
//!
//! Large stride-1 3×3 convolutions (forward, input gradient, weight gradient) and large
//! transposed 3×3 stride-2 ones (the generator's upsampling) run as Winograd's minimal
//! filtering algorithms instead: F(2×2, 3×3), 16 products per 2×2 output tile and channel pair
//! where the direct GEMM does 36, and for the transposed convolution F(2, 2) on each output
//! phase's two-tap axes, 25 products per 4×4 output pixels instead of 36. Their transforms
//! have factors 0, ±1 and ½ only, so they differ from the direct path by f32 summation order
//! (below 1e-6 of the output's largest value at full size in the tests below).
//!
//! Convolutions whose output planes have at most 4 pixels (the patch discriminator's last
//! layers) run over whole planes as one GEMM with the convolution's dense matrix
//! ([`dense_plane_matrix`]), which has no im2col and one GEMM for the whole batch. It also
//! differs from the direct path by summation order only.
//!
//! `SAE_WINOGRAD=0` (or `off`) turns both off: every convolution then runs as the direct GEMM.

use rayon::prelude::*;

// Elements per task of the element-wise passes (`sum_in_order`, `zeros_on_pool`), as in the
// other kernels on Flex tensors.
use crate::flex_data::CHUNK;

/// The fewest output pixels (GEMM columns) per tile where the plane has them. Every tile
/// streams the whole weight matrix through the GEMM (9.4 MB at 512 channels, 3×3): with tiles
/// of one output row, a 32-px plane gave 32 columns per pass and a 16-px plane 16, and those
/// GEMMs ran at half the speed of wide ones (`bench_conv`, `docs/performance.md`).
const MIN_TILE_PIXELS: usize = 256;

/// Weight elements (1 MiB of floats) from which [`conv_weight_grad`] sums into one buffer and
/// tiles of small planes hold several images ([`ConvGeom::images_per_tile`]).
const LARGE_WEIGHT: usize = 1 << 18;

/// [`LARGE_WEIGHT`], or the limit a test set for its thread.
fn large_weight() -> usize {
    #[cfg(test)]
    if let Some(limit) = tests::WEIGHT_LIMIT.get() {
        return limit;
    }
    LARGE_WEIGHT
}

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

    /// Images per tile where a whole output plane has fewer than [`MIN_TILE_PIXELS`] pixels
    /// and the weight is large ([`LARGE_WEIGHT`]): enough planes side by side for that many
    /// GEMM columns. Every tile streams the whole weight through the GEMM, so at 4–16-px planes
    /// and 512 channels one image per tile ran the weight gradient at 18–110 GFLOP/s
    /// (`docs/performance.md`, ninth round). A small weight stays in cache, and there the
    /// copies that put the planes side by side cost more than they save (the `tiny` and
    /// `quickstart` steps ran 3–10 % slower with them).
    fn images_per_tile(&self) -> usize {
        if self.co * self.kk() < large_weight() {
            return 1;
        }
        MIN_TILE_PIXELS.div_ceil(self.ho * self.wo).clamp(1, self.b)
    }

    /// Every tile the passes iterate over: rows of one image, or (on planes smaller than
    /// [`MIN_TILE_PIXELS`]) several whole images, the batch split as evenly as
    /// [`Self::images_per_tile`] allows. Only the geometry decides them, never the thread
    /// count: the weight gradient's sums follow them.
    fn tiles(&self) -> Vec<Tile> {
        let per = self.images_per_tile();
        if per > 1 {
            let groups = self.b.div_ceil(per);
            return (0..groups)
                .map(|i| {
                    let (b0, b1) = (i * self.b / groups, (i + 1) * self.b / groups);
                    Tile {
                        b: b0,
                        nb: b1 - b0,
                        y0: 0,
                        y1: self.ho,
                    }
                })
                .collect();
        }
        let r = self.rows_per_tile();
        (0..self.b)
            .flat_map(|b| {
                (0..self.ho).step_by(r).map(move |y0| Tile {
                    b,
                    nb: 1,
                    y0,
                    y1: (y0 + r).min(self.ho),
                })
            })
            .collect()
    }

    /// The `[lo, hi)` output columns whose input column `ox·s + kw − pad` lies inside the
    /// image.
    fn valid_cols(&self, kw: usize) -> (usize, usize) {
        valid_range(self.w, self.wo, self.stride, self.pad, kw)
    }
}

/// A tile of output pixels: rows `[y0, y1)` of images `[b, b + nb)` (several images only with
/// whole planes). Its column matrix holds the images side by side: `nb` blocks of
/// `(y1 − y0)·wo` columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tile {
    b: usize,
    nb: usize,
    y0: usize,
    y1: usize,
}

impl Tile {
    /// Columns per image.
    fn image_cols(&self, g: &ConvGeom) -> usize {
        (self.y1 - self.y0) * g.wo
    }

    /// GEMM columns, all images.
    fn cols(&self, g: &ConvGeom) -> usize {
        self.nb * self.image_cols(g)
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
    /// This thread's work buffers, lent by [`with_spare`].
    static SPARE: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The most buffers a thread keeps between calls (nested calls may lend more for a while).
const MAX_SPARE: usize = 4;

/// Runs `f` with `N` buffers of at least the given lengths, lent by this thread and kept for
/// its next call. Allocating them per call cost a zeroing pass and, for buffers of megabytes
/// (the Winograd blocks), fresh pages and their faults every time: 4 % of a 128-px training
/// step (`docs/performance.md`, sixth round). The contents are whatever an earlier call left:
/// every caller writes what it reads. Re-entrant: a thread that waits for pool work runs other
/// tasks, and a nested call there gets other buffers (new ones when none are spare).
pub(crate) fn with_spare<const N: usize, R>(
    lens: [usize; N],
    f: impl FnOnce(&mut [Vec<f32>; N]) -> R,
) -> R {
    let mut bufs: [Vec<f32>; N] = SPARE.with(|s| {
        let mut s = s.borrow_mut();
        std::array::from_fn(|_| s.pop().unwrap_or_default())
    });
    for (b, &n) in bufs.iter_mut().zip(&lens) {
        if b.len() < n {
            b.resize(n, 0.0);
        }
    }
    let r = f(&mut bufs);
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        // Reversed, so that the next call's first buffer is this call's first (same role, no
        // growth from roles trading places).
        s.extend(bufs.into_iter().rev());
        let extra = s.len().saturating_sub(MAX_SPARE);
        s.drain(..extra);
    });
    r
}

/// Runs `f(columns, row_stride)` on the column matrix `[kk, tile.cols()]` of `tile` of the
/// batch `x`: the image itself for a pointwise convolution of one image's rows (its rows of
/// pixels, stride `ho·wo`), else `col` filled by [`im2col`], on the pool with `parallel` (for a
/// caller whose GEMM then runs on the whole pool too), else on the calling thread.
fn with_tile_in<R>(
    x: &[f32],
    g: &ConvGeom,
    tile: Tile,
    col: &mut Vec<f32>,
    parallel: bool,
    f: impl FnOnce(*const f32, usize) -> R,
) -> R {
    let plane_in = g.ci * g.h * g.w;
    if g.is_pointwise() && tile.nb == 1 {
        return f(
            x[tile.b * plane_in + tile.y0 * g.wo..].as_ptr(),
            g.ho * g.wo,
        );
    }
    let (ti, t) = (tile.image_cols(g), tile.cols(g));
    if col.len() < g.kk() * t {
        col.resize(g.kk() * t, 0.0);
    }
    for j in 0..tile.nb {
        let xb = &x[(tile.b + j) * plane_in..][..plane_in];
        let dst = &mut col[j * ti..g.kk() * t];
        im2col(xb, g, (tile.y0, tile.y1), dst, t, parallel);
    }
    f(col.as_ptr(), t)
}

/// `dst [rows, nb·n]` ← `src`'s `nb` blocks of `[rows, n]` (block stride `block`, row stride
/// `n`) side by side: the GEMM operand of a tile of several images, whose planes are not one
/// strided matrix in NCHW.
fn gather_images(src: &[f32], dst: &mut [f32], [nb, rows, n]: [usize; 3], block: usize) {
    for j in 0..nb {
        for r in 0..rows {
            dst[r * nb * n + j * n..][..n].copy_from_slice(&src[j * block + r * n..][..n]);
        }
    }
}

/// The output-gradient tile `[co, tile.cols()]` of `grad [b, co, ho, wo]` as (pointer, row
/// stride): in place for one image's rows (row stride `ho·wo`), else its images' planes
/// gathered side by side into `buf`.
fn grad_tile(grad: &[f32], g: &ConvGeom, tile: Tile, buf: &mut Vec<f32>) -> (*const f32, usize) {
    let (plane, t) = (g.ho * g.wo, tile.cols(g));
    if tile.nb == 1 {
        return (
            grad[tile.b * g.co * plane + tile.y0 * g.wo..].as_ptr(),
            plane,
        );
    }
    if buf.len() < g.co * t {
        buf.resize(g.co * t, 0.0);
    }
    let block = g.co * plane;
    gather_images(
        &grad[tile.b * block..][..tile.nb * block],
        &mut buf[..g.co * t],
        [tile.nb, g.co, plane],
        block,
    );
    (buf.as_ptr(), t)
}

/// The inverse of [`gather_images`]: a tile's GEMM result back into its images' planes.
fn scatter_images(src: &[f32], dst: &mut [f32], [nb, rows, n]: [usize; 3], block: usize) {
    for j in 0..nb {
        for r in 0..rows {
            dst[j * block + r * n..][..n].copy_from_slice(&src[r * nb * n + j * n..][..n]);
        }
    }
}

/// `dst[m×n] (+)= scale · lhs[m×k] · rhs[k×n]`, all strided; on rayon's pool when `parallel`,
/// else on the calling thread. `scale` is the GEMM's own product factor (free): how the
/// equalised learning rate's weight scale reaches the convolutions without a scaled copy of
/// the weight.
///
/// # Safety
/// Every pointer must be valid for the strides and sizes given.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    [dst_rs, dst_cs]: [isize; 2],
    accumulate: bool,
    scale: f32,
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
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// The column matrix of output rows `[y0, y1)` of one image `x [ci, h, w]`: row
/// `(c·k + kh)·k + kw` (at `ld` floats from the previous one), column `(oy − y0)·wo + ox`,
/// holding `x[c, oy·s + kh − p, ox·s + kw − p]` (zero outside the image). `ld` is wider than
/// the image's columns where other images' columns sit beside them (a [`Tile`] of several).
///
/// With `parallel`, the channels are split over rayon's pool (each writes its own `k·k` rows):
/// for the tiles that run one after another with the GEMM on the whole pool, whose im2col
/// would otherwise leave the other threads idle.
fn im2col(
    x: &[f32],
    g: &ConvGeom,
    rows: (usize, usize),
    col: &mut [f32],
    ld: usize,
    parallel: bool,
) {
    let fill = if g.stride == 1 && g.wo == g.w {
        im2col_same
    } else {
        im2col_plane
    };
    per_channel(col, g.k * g.k * ld, x, g.h * g.w, parallel, |col, plane| {
        fill(plane, g, rows, col, ld)
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

std::thread_local! {
    /// The stride-2 paths' input rows split by column parity ([`im2col_plane`],
    /// [`col2im_add_plane`]), kept between calls.
    static PHASES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The input rows `[iy0, iy1)` that output rows `[y0, y1)` read through a `k`-tap kernel.
fn input_rows(g: &ConvGeom, (y0, y1): (usize, usize)) -> (usize, usize) {
    let iy0 = (y0 * g.stride).saturating_sub(g.pad).min(g.h);
    let iy1 = ((y1 - 1) * g.stride + g.k)
        .saturating_sub(g.pad)
        .clamp(iy0, g.h);
    (iy0, iy1)
}

/// For stride 2: where input column `2·ox + kw − pad` sits in its row's phases
/// (`[parity][half]`): the phase of `kw − pad`'s parity, at `ox + m` for `m = ⌊(kw − pad)/2⌋`.
fn phase_of(kw: usize, pad: usize) -> (usize, isize) {
    let q = kw as isize - pad as isize;
    (q.rem_euclid(2) as usize, q.div_euclid(2))
}

/// [`im2col`] of one channel: `plane [h, w]` into its `k·k` column rows.
fn im2col_plane(plane: &[f32], g: &ConvGeom, (y0, y1): (usize, usize), col: &mut [f32], ld: usize) {
    let (k, s, wo, w) = (g.k, g.stride, g.wo, g.w);
    let t = (y1 - y0) * wo;
    // Stride 2: the input rows the tile reads, each split once into its even and odd columns
    // (`[row][parity][half]`), so that every tap's column row is a contiguous copy instead of
    // a gather of every other element (which was 6 % of a 128-px training step).
    let half = w.div_ceil(2);
    let (iy0, iy1) = input_rows(g, (y0, y1));
    PHASES.with_borrow_mut(|phases| {
        if s == 2 {
            phases.resize((iy1 - iy0) * 2 * half, 0.0);
            for (split, src) in phases
                .chunks_exact_mut(2 * half)
                .zip(plane[iy0 * w..iy1 * w].chunks_exact(w))
            {
                let (even, odd) = split.split_at_mut(half);
                for (pair, (e, o)) in src.chunks_exact(2).zip(even.iter_mut().zip(odd.iter_mut())) {
                    *e = pair[0];
                    *o = pair[1];
                }
                if w % 2 == 1 {
                    even[half - 1] = src[w - 1];
                }
            }
        }
        for kh in 0..k {
            let (ylo, yhi) = valid_range(g.h, g.ho, s, g.pad, kh);
            for kw in 0..k {
                let (lo, hi) = g.valid_cols(kw);
                let row = &mut col[(kh * k + kw) * ld..][..t];
                for (r, oy) in (y0..y1).enumerate() {
                    let dst = &mut row[r * wo..(r + 1) * wo];
                    if oy < ylo || oy >= yhi {
                        dst.fill(0.0);
                        continue;
                    }
                    let iy = oy * s + kh - g.pad;
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    if lo == hi {
                        // No output column of this tap reads the image (a kernel wider than
                        // the padded row reaches past it).
                        continue;
                    }
                    if s == 1 {
                        let start = lo + kw - g.pad;
                        dst[lo..hi].copy_from_slice(&plane[iy * w + start..][..hi - lo]);
                    } else if s == 2 {
                        let (parity, m) = phase_of(kw, g.pad);
                        let phase = &phases[((iy - iy0) * 2 + parity) * half..][..half];
                        let start = (lo as isize + m) as usize;
                        dst[lo..hi].copy_from_slice(&phase[start..start + hi - lo]);
                    } else {
                        let taps = plane[iy * w + lo * s + kw - g.pad..].iter().step_by(s);
                        for (d, v) in dst[lo..hi].iter_mut().zip(taps) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    });
}

/// [`im2col_plane`] for a stride-1 "same" convolution (`2·pad = k − 1`, so `wo = w`): the source
/// and column rows share the row stride `w`, so each kernel tap's column row is one contiguous
/// copy of the plane shifted by `(kh − p)·w + (kw − p)`, after which the columns that wrapped
/// around a row edge are zeroed. At the 4–32-px planes of the small models this replaces a
/// copy per output row by one per tap.
fn im2col_same(plane: &[f32], g: &ConvGeom, (y0, y1): (usize, usize), col: &mut [f32], ld: usize) {
    let (k, p, w) = (g.k, g.pad, g.w);
    let plane_len = g.h * w;
    let t = (y1 - y0) * w;
    for kh in 0..k {
        let (ylo, yhi) = valid_range(g.h, g.ho, 1, p, kh);
        let (a, b) = (ylo.clamp(y0, y1), yhi.clamp(y0, y1).max(ylo.clamp(y0, y1)));
        for kw in 0..k {
            let row = &mut col[(kh * k + kw) * ld..][..t];
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

/// The adjoint of [`im2col`]: adds the column matrix of rows `[y0, y1)` (rows `ld` floats
/// apart) into `x [ci, h, w]`; with `parallel`, the channels split over rayon's pool as in
/// [`im2col`].
fn col2im_add(
    col: &[f32],
    g: &ConvGeom,
    rows: (usize, usize),
    ld: usize,
    x: &mut [f32],
    parallel: bool,
) {
    per_channel(x, g.h * g.w, col, g.k * g.k * ld, parallel, |plane, col| {
        col2im_add_plane(col, g, rows, ld, plane)
    });
}

/// [`col2im_add`] of one channel: its `k·k` column rows into `plane [h, w]`.
fn col2im_add_plane(
    col: &[f32],
    g: &ConvGeom,
    (y0, y1): (usize, usize),
    ld: usize,
    plane: &mut [f32],
) {
    let (k, s, wo, w) = (g.k, g.stride, g.wo, g.w);
    let t = (y1 - y0) * wo;
    // Stride 2: the sums collect in the rows' even and odd phases (contiguous adds), which
    // are then added into the plane once, as im2col_plane reads them.
    let half = w.div_ceil(2);
    let (iy0, iy1) = input_rows(g, (y0, y1));
    PHASES.with_borrow_mut(|phases| {
        if s == 2 {
            phases.clear();
            phases.resize((iy1 - iy0) * 2 * half, 0.0);
        }
        for kh in 0..k {
            let (ylo, yhi) = valid_range(g.h, g.ho, s, g.pad, kh);
            for kw in 0..k {
                let (lo, hi) = g.valid_cols(kw);
                if lo == hi {
                    continue;
                }
                let row = &col[(kh * k + kw) * ld..][..t];
                for (r, oy) in (y0..y1)
                    .enumerate()
                    .filter(|(_, oy)| *oy >= ylo && *oy < yhi)
                {
                    let src = &row[r * wo..(r + 1) * wo];
                    let iy = oy * s + kh - g.pad;
                    let dst = if s == 2 {
                        let (parity, m) = phase_of(kw, g.pad);
                        let start = (lo as isize + m) as usize;
                        &mut phases[((iy - iy0) * 2 + parity) * half + start..][..hi - lo]
                    } else if s == 1 {
                        &mut plane[iy * w + lo + kw - g.pad..][..hi - lo]
                    } else {
                        let dst = &mut plane[iy * w..][..w];
                        for (ox, v) in src[lo..hi].iter().enumerate() {
                            dst[(ox + lo) * s + kw - g.pad] += v;
                        }
                        continue;
                    };
                    for (d, v) in dst.iter_mut().zip(&src[lo..hi]) {
                        *d += v;
                    }
                }
            }
        }
        if s == 2 {
            for (split, dst) in phases
                .chunks_exact(2 * half)
                .zip(plane[iy0 * w..iy1 * w].chunks_exact_mut(w))
            {
                let (even, odd) = split.split_at(half);
                for (pair, (e, o)) in dst.chunks_exact_mut(2).zip(even.iter().zip(odd)) {
                    pair[0] += e;
                    pair[1] += o;
                }
                if w % 2 == 1 {
                    dst[w - 1] += even[half - 1];
                }
            }
        }
    });
}

/// The fewest input and output channels for which a stride-1 3×3 convolution runs as
/// [`conv_forward_winograd`]: below them its 16 GEMMs (`M = co`, `K = ci`) are too thin to
/// outrun the direct GEMM (`K = 9·ci`).
const WINOGRAD_MIN_CHANNELS: usize = 32;

/// The least work for the Winograd path, as 2×2 output tiles (all images) times the smaller
/// channel count: below it the fixed costs (the weight transform, 16 GEMM calls, passes over
/// short tile rows) outweigh the products saved. Measured on two threads (`docs/performance.md`):
/// 64 tiles × 512 channels (a 16-px plane at batch 1) ran 1.3–1.5× the direct time, 512 × 32
/// 1.1–1.6×; from 256 × 512 (32 px) and 2048 × 32 the Winograd path was faster.
const WINOGRAD_MIN_WORK: usize = 1 << 16;

/// Output planes narrower than this take the Winograd path only with
/// [`WINOGRAD_NARROW_CHANNELS`] channels both ways: on 8–32-px planes with 32–128 channels its
/// transforms run over tile rows of 4–16 tiles and its 16 GEMMs have `K = ci` of 32–128, and
/// the direct path was 1.1–1.7× faster (`docs/performance.md`, thirteenth round); at 512
/// channels on 16 px it is the Winograd path that is 1.2× faster.
const WINOGRAD_NARROW: usize = 64;

/// See [`WINOGRAD_NARROW`].
const WINOGRAD_NARROW_CHANNELS: usize = 256;

/// Whether [`conv_forward`] takes the Winograd path for this geometry.
fn winograd_applies(g: &ConvGeom) -> bool {
    let tiles = g.b * g.ho.div_ceil(2) * g.wo.div_ceil(2);
    g.k == 3
        && g.stride == 1
        && g.pad <= 2
        && g.ci.min(g.co) >= WINOGRAD_MIN_CHANNELS
        && tiles >= 256
        && tiles * g.ci.min(g.co) >= WINOGRAD_MIN_WORK
        && (g.wo >= WINOGRAD_NARROW || g.ci.min(g.co) >= WINOGRAD_NARROW_CHANNELS)
}

/// `U[ξ][o][c] = (G · w[o, c] · Gᵀ)[ξ]` of Winograd's F(2×2, 3×3), `ξ = 4·i + j`, with
/// `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]` (every factor a power of two: exact).
fn winograd_weight(weight: &[f32], co: usize, ci: usize) -> Vec<f32> {
    let n = co * ci;
    let mut u = vec![0.0f32; 16 * n];
    let dst = SendPtr(u.as_mut_ptr());
    (0..co).into_par_iter().for_each(|o| {
        for c in 0..ci {
            let w = &weight[(o * ci + c) * 9..][..9];
            // G · w: 4 rows of 3.
            let mut gw = [[0.0f32; 3]; 4];
            for j in 0..3 {
                let (a, b, d) = (w[j], w[3 + j], w[6 + j]);
                gw[0][j] = a;
                gw[1][j] = 0.5 * (a + b + d);
                gw[2][j] = 0.5 * (a - b + d);
                gw[3][j] = d;
            }
            for (i, r) in gw.iter().enumerate() {
                let row = [
                    r[0],
                    0.5 * (r[0] + r[1] + r[2]),
                    0.5 * (r[0] - r[1] + r[2]),
                    r[2],
                ];
                for (j, v) in row.into_iter().enumerate() {
                    // SAFETY: task `o` alone writes the elements of output channel o.
                    unsafe { *dst.get().add((4 * i + j) * n + o * ci + c) = v };
                }
            }
        }
    });
    u
}

/// Where a Winograd block's tiles are: whole tile rows `[r0, r1)` of the batch (tile row `r` is
/// image `r / th`, output rows `2·(r % th)` and the one below), `tw` tiles each, so tile
/// `(r, tx)` is column `(r − r0)·tw + tx` of the block's matrices.
#[derive(Clone, Copy)]
struct WinoBlock {
    r0: usize,
    r1: usize,
}

impl WinoBlock {
    fn tiles(&self, tw: usize) -> usize {
        (self.r1 - self.r0) * tw
    }
}

/// The Winograd F(2×2, 3×3) input transform of channel `c` over a block's tiles: writes
/// `V[ξ]` of tile column `t` at `v[ξ·stride + t]`, `V = Bᵀ · d · B` of the tile's 4×4 input
/// patch `d` (zero outside the image), `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0],
/// [0, 1, 0, −1]]`.
///
/// Vectorised along a tile row: the patch columns of tile `tx` are padded input columns
/// `2·tx … 2·tx + 3`, i.e. `even[tx]`, `odd[tx]`, `even[tx + 1]`, `odd[tx + 1]` of the padded
/// row split by parity, so both transforms are element-wise passes over `tw` tiles.
///
/// # Safety
/// `v` must be valid for writes at `ξ·stride + t`, `ξ < 16`, `t <` the block's tiles, and no
/// other task may access those elements meanwhile.
unsafe fn winograd_input_channel(
    x: &[f32],
    g: &ConvGeom,
    c: usize,
    blk: WinoBlock,
    v: SendPtr,
    stride: usize,
    scratch: &mut Vec<f32>,
) {
    let (th, tw) = (g.ho.div_ceil(2), g.wo.div_ceil(2));
    let l = tw + 1;
    // One padded input row; four rows split by parity (`[dy][parity][l]`); the four rows of
    // Bᵀ · d split by parity (`[parity][k][l]`).
    scratch.resize(18 * l, 0.0);
    let (padded, rest) = scratch.split_at_mut(2 * l);
    let (rows, bd) = rest.split_at_mut(8 * l);
    // Padded column q holds input column q − pad (q < 2·l = 2·tw + 2 ≥ w + pad).
    let inside = g.w.min(2 * l - g.pad);
    padded[..g.pad].fill(0.0);
    padded[g.pad + inside..].fill(0.0);
    for r in blk.r0..blk.r1 {
        let (b, ty) = (r / th, r % th);
        let plane = &x[(b * g.ci + c) * g.h * g.w..][..g.h * g.w];
        for dy in 0..4 {
            let (ev, od) = rows[2 * dy * l..(2 * dy + 2) * l].split_at_mut(l);
            let iy = (2 * ty + dy) as isize - g.pad as isize;
            if iy < 0 || iy >= g.h as isize {
                ev.fill(0.0);
                od.fill(0.0);
                continue;
            }
            padded[g.pad..g.pad + inside].copy_from_slice(&plane[iy as usize * g.w..][..inside]);
            for ((e, d), pair) in ev.iter_mut().zip(od.iter_mut()).zip(padded.chunks_exact(2)) {
                *e = pair[0];
                *d = pair[1];
            }
        }
        // Bᵀ · d, on the even and the odd columns alike.
        for (par, out) in bd.chunks_exact_mut(4 * l).enumerate() {
            let d = |k: usize| &rows[(2 * k + par) * l..][..l];
            let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
            let (o0, rest) = out.split_at_mut(l);
            let (o1, rest) = rest.split_at_mut(l);
            let (o2, o3) = rest.split_at_mut(l);
            for i in 0..l {
                o0[i] = d0[i] - d2[i];
                o1[i] = d1[i] + d2[i];
                o2[i] = d2[i] - d1[i];
                o3[i] = d1[i] - d3[i];
            }
        }
        // · B along the row: 16 outputs per tile, each a pass over the tile row.
        let t0 = (r - blk.r0) * tw;
        for k in 0..4 {
            let (ev, od) = (&bd[k * l..][..l], &bd[(4 + k) * l..][..l]);
            // SAFETY: forwarded from the caller (tile columns t0 .. t0 + tw of V[4k .. 4k + 4]).
            let out = |j: usize| unsafe {
                std::slice::from_raw_parts_mut(v.get().add((4 * k + j) * stride + t0), tw)
            };
            let (a, b_, c_, d_) = (out(0), out(1), out(2), out(3));
            for i in 0..tw {
                a[i] = ev[i] - ev[i + 1];
                b_[i] = od[i] + ev[i + 1];
                c_[i] = ev[i + 1] - od[i];
                d_[i] = od[i] - od[i + 1];
            }
        }
    }
}

/// The inverse transform of output channel `o` over a block's tiles: `Y = Aᵀ · M · A`,
/// `Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]`, `M[ξ]` of tile column `t` read at
/// `m[ξ·stride + t]`, each tile's 2×2 result written into the output (clipped at odd edges).
/// Vectorised along a tile row like [`winograd_input_channel`].
///
/// # Safety
/// `out` must be valid for the whole output `[b, co, ho, wo]`, and no other task may write
/// these tiles' pixels of channel `o`.
#[allow(clippy::too_many_arguments)]
unsafe fn winograd_output_channel(
    m: &[f32],
    stride: usize,
    g: &ConvGeom,
    o: usize,
    blk: WinoBlock,
    out: SendPtr,
    scratch: &mut Vec<f32>,
) {
    let (th, tw) = (g.ho.div_ceil(2), g.wo.div_ceil(2));
    scratch.resize(10 * tw, 0.0);
    let (am, y) = scratch.split_at_mut(8 * tw);
    for r in blk.r0..blk.r1 {
        let (b, ty) = (r / th, r % th);
        let t0 = (r - blk.r0) * tw;
        let e = |xi: usize| &m[xi * stride + t0..][..tw];
        // Aᵀ · M: two rows of four.
        for j in 0..4 {
            let (m0, m1, m2, m3) = (e(j), e(4 + j), e(8 + j), e(12 + j));
            let (top, bottom) = am.split_at_mut(4 * tw);
            let (top, bottom) = (&mut top[j * tw..][..tw], &mut bottom[j * tw..][..tw]);
            for i in 0..tw {
                top[i] = m0[i] + m1[i] + m2[i];
                bottom[i] = m1[i] - m2[i] - m3[i];
            }
        }
        for dy in 0..2 {
            let oy = 2 * ty + dy;
            if oy >= g.ho {
                continue;
            }
            let a = |j: usize| &am[(4 * dy + j) * tw..][..tw];
            let (a0, a1, a2, a3) = (a(0), a(1), a(2), a(3));
            let (ev, od) = y.split_at_mut(tw);
            for i in 0..tw {
                ev[i] = a0[i] + a1[i] + a2[i];
                od[i] = a1[i] - a2[i] - a3[i];
            }
            // SAFETY: forwarded from the caller (row oy of channel o of image b).
            let row = unsafe {
                std::slice::from_raw_parts_mut(
                    out.get().add(((b * g.co + o) * g.ho + oy) * g.wo),
                    g.wo,
                )
            };
            let mut pairs = row.chunks_exact_mut(2);
            for (pair, (e, d)) in (&mut pairs).zip(ev.iter().zip(od.iter())) {
                pair[0] = *e;
                pair[1] = *d;
            }
            if let [last] = pairs.into_remainder() {
                *last = ev[tw - 1];
            }
        }
    }
}

/// [`conv_forward`] of a stride-1 3×3 convolution by Winograd's F(2×2, 3×3) (Lavin & Gray,
/// "Fast Algorithms for Convolutional Neural Networks", 2016): each 2×2 output tile costs 16
/// products per channel pair instead of 36. The transforms of input and weight are exact up to
/// f32 rounding of their sums (their factors are 0, ±1 and ½), so the result is the direct
/// convolution's up to the rounding of a different summation.
///
/// Tiles are processed in blocks of whole tile rows: transform a block's input
/// (`V [16][ci][n]`), 16 GEMMs `M[ξ] = U[ξ] [co, ci] · V[ξ]`, inverse-transform
/// `M [16][co][n]` into the output. Blocks run in parallel, each on one thread, where there
/// are at least as many as threads; else one after another with the transforms split by
/// channel and the 16 GEMMs by `ξ` over the pool.
///
/// `block_tiles`: tiles per block (rounded down to whole tile rows, at least one).
fn conv_forward_winograd(
    x: &[f32],
    weight: &[f32],
    g: &ConvGeom,
    block_tiles: usize,
    scale: f32,
) -> Vec<f32> {
    let (th, tw) = (g.ho.div_ceil(2), g.wo.div_ceil(2));
    let u = winograd_weight(weight, g.co, g.ci);
    let (blocks, tb) = winograd_blocks(g.b * th, tw, block_tiles);
    let len = g.b * g.co * g.ho * g.wo;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = SendPtr(out.as_mut_ptr());
    let (ci, co) = (g.ci, g.co);
    winograd_run(
        &blocks,
        [tw, tb],
        [16, ci, co],
        // SAFETY: winograd_run hands each task its own channel's rows of V.
        |blk, c, v, scratch| unsafe { winograd_input_channel(x, g, c, blk, v, ci * tb, scratch) },
        // SAFETY: u[ξ] is [co, ci], V[ξ] [ci, n] and M[ξ] [co, n] with row stride tb.
        |xi, n, v, m| unsafe {
            gemm(
                [co, n, ci],
                m.add(xi * co * tb),
                [tb as isize, 1],
                false,
                scale,
                u[xi * co * ci..].as_ptr(),
                [ci as isize, 1],
                v.add(xi * ci * tb),
                [tb as isize, 1],
                false,
            )
        },
        // SAFETY: each task writes its own output channel of the block's tiles.
        |blk, o, m, scratch| unsafe {
            winograd_output_channel(m, co * tb, g, o, blk, dst, scratch)
        },
    );
    // SAFETY: the blocks cover every tile row, and their tiles every output pixel of every
    // channel.
    unsafe { out.set_len(len) };
    out
}

/// The three stages of a Winograd convolution over its blocks: per block, `input(block, k,
/// V at channel k's row, scratch)` for each of the `kc` input channels, `product(point, n,
/// V, M)` for each point, `output(block, m, M from channel m's row, scratch)` for each of the
/// `mc` output channels, with `V [points][kc][tb]` and `M [points][mc][tb]`. Blocks run in
/// parallel, each on one thread, where there are at least as many as threads; else one after
/// another with each stage split over the pool (by channel, by point).
#[allow(clippy::type_complexity)]
fn winograd_run(
    blocks: &[WinoBlock],
    [tw, tb]: [usize; 2],
    [points, kc, mc]: [usize; 3],
    input: impl Fn(WinoBlock, usize, SendPtr, &mut Vec<f32>) + Sync,
    product: impl Fn(usize, usize, *const f32, *mut f32) + Sync,
    output: impl Fn(WinoBlock, usize, &[f32], &mut Vec<f32>) + Sync,
) {
    let run_block = |blk: WinoBlock, v: &mut [f32], m: &mut [f32], parallel: bool| {
        let n = blk.tiles(tw);
        let (vp, mp) = (SendPtr(v.as_mut_ptr()), SendPtr(m.as_mut_ptr()));
        let input = |scratch: &mut Vec<f32>, k: usize| {
            // Channel k's rows [point][k][..n], each written by this call alone.
            input(blk, k, SendPtr(vp.get().wrapping_add(k * tb)), scratch)
        };
        let output = |scratch: &mut Vec<f32>, c: usize| {
            // SAFETY: M holds points·mc·tb elements; the products have all been written.
            let m = unsafe {
                std::slice::from_raw_parts(mp.get().add(c * tb), (points - 1) * mc * tb + tb)
            };
            output(blk, c, m, scratch)
        };
        if parallel {
            (0..kc).into_par_iter().for_each_init(Vec::new, input);
            (0..points)
                .into_par_iter()
                .for_each(|q| product(q, n, vp.get(), mp.get()));
            (0..mc).into_par_iter().for_each_init(Vec::new, output);
        } else {
            let mut scratch = Vec::new();
            (0..kc).for_each(|k| input(&mut scratch, k));
            (0..points).for_each(|q| product(q, n, vp.get(), mp.get()));
            (0..mc).for_each(|c| output(&mut scratch, c));
        }
    };
    let lens = [points * kc * tb, points * mc * tb];
    if blocks.len() >= rayon::current_num_threads() {
        blocks
            .par_iter()
            .for_each(|&blk| with_spare(lens, |[v, m]| run_block(blk, v, m, false)));
    } else {
        with_spare(lens, |[v, m]| {
            for &blk in blocks {
                run_block(blk, v, m, true);
            }
        });
    }
}

/// Blocks of whole tile rows covering `rows` tile rows of `tw` tiles, `block_tiles` tiles each
/// (rounded down to whole rows, at least one), and the tiles of the largest (the buffers' row
/// stride).
fn winograd_blocks(rows: usize, tw: usize, block_tiles: usize) -> (Vec<WinoBlock>, usize) {
    let per = (block_tiles / tw).max(1);
    let blocks = (0..rows)
        .step_by(per)
        .map(|r0| WinoBlock {
            r0,
            r1: (r0 + per).min(rows),
        })
        .collect();
    (blocks, per.min(rows) * tw)
}

/// The output-gradient transform of the Winograd weight gradient, for output channel `o` over
/// a block's tiles: `Ĝ = A · dY · Aᵀ` of each tile's 2×2 output gradient `dY` (zero past the
/// output's edge), `A = [[1, 0], [1, 1], [1, −1], [0, −1]]` (the adjoint of
/// [`winograd_output_channel`]), `Ĝ[ξ]` of tile column `t` written at `m[ξ·stride + t]`.
///
/// # Safety
/// As [`winograd_input_channel`]'s `v`.
unsafe fn winograd_grad_channel(
    grad: &[f32],
    g: &ConvGeom,
    o: usize,
    blk: WinoBlock,
    m: SendPtr,
    stride: usize,
    scratch: &mut Vec<f32>,
) {
    let (th, tw) = (g.ho.div_ceil(2), g.wo.div_ceil(2));
    // Two output-gradient rows split by parity, then the four rows of A · dY, by parity.
    scratch.resize(12 * tw, 0.0);
    let (rows, ad) = scratch.split_at_mut(4 * tw);
    for r in blk.r0..blk.r1 {
        let (b, ty) = (r / th, r % th);
        for dy in 0..2 {
            let (ev, od) = rows[2 * dy * tw..(2 * dy + 2) * tw].split_at_mut(tw);
            let oy = 2 * ty + dy;
            if oy >= g.ho {
                ev.fill(0.0);
                od.fill(0.0);
                continue;
            }
            let src = &grad[((b * g.co + o) * g.ho + oy) * g.wo..][..g.wo];
            let mut pairs = src.chunks_exact(2);
            for ((e, d), pair) in ev.iter_mut().zip(od.iter_mut()).zip(&mut pairs) {
                *e = pair[0];
                *d = pair[1];
            }
            if let [last] = pairs.remainder() {
                ev[tw - 1] = *last;
                od[tw - 1] = 0.0;
            }
        }
        for par in 0..2 {
            let (d0, d1) = (&rows[par * tw..][..tw], &rows[(2 + par) * tw..][..tw]);
            let (o0, rest) = ad.split_at_mut(2 * tw);
            let (o1, rest) = rest.split_at_mut(2 * tw);
            let (o2, o3) = rest.split_at_mut(2 * tw);
            let o = |a: &mut [f32]| -> *mut f32 { a[par * tw..].as_mut_ptr() };
            let (o0, o1, o2, o3) = (o(o0), o(o1), o(o2), o(o3));
            for i in 0..tw {
                // SAFETY: each of o0..o3 points at tw elements of its own row.
                unsafe {
                    *o0.add(i) = d0[i];
                    *o1.add(i) = d0[i] + d1[i];
                    *o2.add(i) = d0[i] - d1[i];
                    *o3.add(i) = -d1[i];
                }
            }
        }
        let t0 = (r - blk.r0) * tw;
        for k in 0..4 {
            let (ev, od) = ad[2 * k * tw..(2 * k + 2) * tw].split_at(tw);
            // SAFETY: forwarded from the caller (tile columns t0 .. t0 + tw of Ĝ[4k .. 4k + 4]).
            let out = |j: usize| unsafe {
                std::slice::from_raw_parts_mut(m.get().add((4 * k + j) * stride + t0), tw)
            };
            let (a, b_, c_, d_) = (out(0), out(1), out(2), out(3));
            for i in 0..tw {
                a[i] = ev[i];
                b_[i] = ev[i] + od[i];
                c_[i] = ev[i] - od[i];
                d_[i] = -od[i];
            }
        }
    }
}

/// [`conv_weight_grad`] of a stride-1 3×3 convolution by Winograd's F(2×2, 3×3): the adjoint
/// of [`conv_forward_winograd`] in the weight, `dW[o, c] = Gᵀ · (Σ_t Ĝ_t[o] ⊙ V_t[c]) · G` with
/// `V` the input transform and `Ĝ` [`winograd_grad_channel`]: 16 GEMMs `dU[ξ] += Ĝ[ξ] [co, n]
/// · V[ξ]ᵀ [n, ci]` per block, 16 products per tile and channel pair instead of 36.
///
/// Summed like [`conv_weight_grad`]: the blocks in fixed chunks (a function of the geometry
/// alone), each chunk in order into its own buffer, then the chunks in order, so the sums are
/// the same whatever the thread count. Chunks run in parallel where there are at least as many
/// as threads; else one after another, each block's transforms split by channel and its 16
/// GEMMs by `ξ` over the pool (each `ξ` accumulates into its own part of the buffer).
fn conv_weight_grad_winograd(
    x: &[f32],
    grad: &[f32],
    g: &ConvGeom,
    block_tiles: usize,
    scale: f32,
) -> Vec<f32> {
    let (th, tw) = (g.ho.div_ceil(2), g.wo.div_ceil(2));
    let (blocks, tb) = winograd_blocks(g.b * th, tw, block_tiles);
    let (ci, co) = (g.ci, g.co);
    let size = 16 * co * ci;
    let chunks = blocks.len().min(16).min((16 << 20) / size).max(1);
    let per_chunk = blocks.len().div_ceil(chunks);
    // SAFETY (of every GEMM): dU[ξ] is [co, ci] within `acc`, Ĝ[ξ] [co, n] and V[ξ] [ci, n]
    // with row stride tb within their buffers.
    let product = |xi: usize, n: usize, gm: *const f32, v: *const f32, acc: *mut f32| unsafe {
        gemm(
            [co, ci, n],
            acc.add(xi * co * ci),
            [ci as isize, 1],
            true,
            scale,
            gm.add(xi * co * tb),
            [tb as isize, 1],
            v.add(xi * ci * tb),
            [1, tb as isize],
            false,
        )
    };
    let transforms = |blk: WinoBlock, v: &mut [f32], gm: &mut [f32], parallel: bool| {
        let (vp, gp) = (SendPtr(v.as_mut_ptr()), SendPtr(gm.as_mut_ptr()));
        // SAFETY: channel c's rows [ξ][c][..n] lie within v (16·ci·tb), output channel o's
        // within gm (16·co·tb), each written by one task.
        let input = |scratch: &mut Vec<f32>, c: usize| unsafe {
            let at = SendPtr(vp.get().add(c * tb));
            winograd_input_channel(x, g, c, blk, at, ci * tb, scratch)
        };
        let output = |scratch: &mut Vec<f32>, o: usize| unsafe {
            let at = SendPtr(gp.get().add(o * tb));
            winograd_grad_channel(grad, g, o, blk, at, co * tb, scratch)
        };
        if parallel {
            (0..ci).into_par_iter().for_each_init(Vec::new, input);
            (0..co).into_par_iter().for_each_init(Vec::new, output);
        } else {
            let mut scratch = Vec::new();
            (0..ci).for_each(|c| input(&mut scratch, c));
            (0..co).for_each(|o| output(&mut scratch, o));
        }
    };
    let partial: Vec<Vec<f32>> = if chunks >= rayon::current_num_threads() {
        blocks
            .par_chunks(per_chunk)
            .map(|chunk| {
                let mut acc = vec![0.0f32; size];
                with_spare([16 * ci * tb, 16 * co * tb], |[v, gm]| {
                    for &blk in chunk {
                        transforms(blk, v, gm, false);
                        for xi in 0..16 {
                            product(xi, blk.tiles(tw), gm.as_ptr(), v.as_ptr(), acc.as_mut_ptr());
                        }
                    }
                });
                acc
            })
            .collect()
    } else {
        with_spare([16 * ci * tb, 16 * co * tb], |[v, gm]| {
            blocks
                .chunks(per_chunk)
                .map(|chunk| {
                    let mut acc = vec![0.0f32; size];
                    for &blk in chunk {
                        transforms(blk, v, gm, true);
                        let (vp, gp, ap) = (
                            SendPtr(v.as_mut_ptr()),
                            SendPtr(gm.as_mut_ptr()),
                            SendPtr(acc.as_mut_ptr()),
                        );
                        (0..16).into_par_iter().for_each(|xi| {
                            product(xi, blk.tiles(tw), gp.get(), vp.get(), ap.get())
                        });
                    }
                    acc
                })
                .collect()
        })
    };
    let du = sum_in_order(partial, size);
    // dW = Gᵀ · dU · G, Gᵀ = [[1, ½, ½, 0], [0, ½, −½, 0], [0, ½, ½, 1]].
    let n = co * ci;
    let mut dw = vec![0.0f32; n * 9];
    dw.par_chunks_mut(9).enumerate().for_each(|(pair, out)| {
        let e = |xi: usize| du[xi * n + pair];
        // Gᵀ · dU, column j of dU at a time: gu[j] is column j of the 3×4 product.
        let gu: [[f32; 3]; 4] = std::array::from_fn(|j| {
            let (u0, u1, u2, u3) = (e(j), e(4 + j), e(8 + j), e(12 + j));
            [u0 + 0.5 * (u1 + u2), 0.5 * (u1 - u2), 0.5 * (u1 + u2) + u3]
        });
        for i in 0..3 {
            let r = gu.map(|col| col[i]);
            out[3 * i] = r[0] + 0.5 * (r[1] + r[2]);
            out[3 * i + 1] = 0.5 * (r[1] - r[2]);
            out[3 * i + 2] = 0.5 * (r[1] + r[2]) + r[3];
        }
    });
    dw
}

/// Whether [`conv_input_grad`] takes [`conv_transpose_winograd`]: the transposed 3×3
/// stride-2 convolutions (the generator's upsampling, the strided convolutions' input
/// gradients) with at least 1024 tiles and 128 channels both ways. Below that the direct path
/// (one GEMM with `M = 9·ci` and col2im) was as fast or faster on two threads: 289 and 648
/// tiles at 512 channels (the upsampling to 65 px at batch 1 and to 33 px at batch 8) ran
/// 1.00–1.04× its time, 1156 tiles at 64 → 128 channels 1.11×; the upsampling to 129 and 257
/// px at batch 1 ran 0.41–0.58× (`docs/performance.md`).
fn transpose_winograd_applies(g: &ConvGeom) -> bool {
    let tiles = g.b * (g.ho + 1).div_ceil(2) * (g.wo + 1).div_ceil(2);
    g.k == 3 && g.stride == 2 && g.pad <= 1 && g.ci.min(g.co) >= 128 && tiles >= 1024
}

/// `U[p][c][o]` of [`conv_transpose_winograd`] (16 points per channel pair, `[ci, co]` each,
/// the GEMMs' left factor): the kernel taps of each output phase in F(2, 2)'s transform
/// `G = [[1, 0], [1, 1], [0, 1]]` (a 3-point transform per phase axis with two taps).
fn transpose_winograd_weight(weight: &[f32], co: usize, ci: usize) -> Vec<f32> {
    let n = co * ci;
    let mut u = vec![0.0f32; 16 * n];
    let dst = SendPtr(u.as_mut_ptr());
    let g3 = |a: f32, b: f32| [a, a + b, b];
    (0..ci).into_par_iter().for_each(|c| {
        for o in 0..co {
            let w = &weight[(o * ci + c) * 9..][..9];
            let tap = |kh: usize, kw: usize| w[3 * kh + kw];
            let put = |p: usize, v: f32| {
                // SAFETY: task `c` alone writes row c of every point.
                unsafe { *dst.get().add(p * n + c * co + o) = v }
            };
            // Even rows and columns: taps (2 − 2a, 2 − 2b) of the correlation's (a, b).
            let cols = [g3(tap(2, 2), tap(2, 0)), g3(tap(0, 2), tap(0, 0))];
            for (v, (a, b)) in cols[0].into_iter().zip(cols[1]).enumerate() {
                for (u_, e) in g3(a, b).into_iter().enumerate() {
                    put(3 * u_ + v, e);
                }
            }
            // Even rows, odd columns (kw = 1); odd rows, even columns (kh = 1); both odd.
            for (i, e) in g3(tap(2, 1), tap(0, 1)).into_iter().enumerate() {
                put(9 + i, e);
            }
            for (i, e) in g3(tap(1, 2), tap(1, 0)).into_iter().enumerate() {
                put(12 + i, e);
            }
            put(15, tap(1, 1));
        }
    });
    u
}

/// The 25 transformed inputs of [`conv_transpose_winograd`] for input channel `o` over a
/// block's tiles, `V[q]` of tile column `t` written at `v[q·stride + t]`. Tile `(ti, tj)`
/// reads rows `2·ti − 1 … 2·ti + 1` and columns `2·tj − 1 … 2·tj + 1` of the plane (zero
/// outside it); F(2, 2)'s input transform is `Bᵀ = [[1, −1, 0], [0, 1, 0], [0, −1, 1]]`.
/// Points: `q = 3u + v` (even/even phase, `Bᵀ` on rows and columns), `9 + 2u + dj` (even rows:
/// `Bᵀ` on rows, columns `2·tj + dj`), `15 + 2v + di` (odd rows: row `2·ti + di`, `Bᵀ` on
/// columns), `21 + 2·di + dj` (the plain inputs).
///
/// # Safety
/// As [`winograd_input_channel`]'s `v` (25 points).
unsafe fn transpose_input_channel(
    x: &[f32],
    g: &ConvGeom,
    o: usize,
    blk: WinoBlock,
    v: SendPtr,
    stride: usize,
    scratch: &mut Vec<f32>,
) {
    let (th, tw) = ((g.ho + 1).div_ceil(2), (g.wo + 1).div_ceil(2));
    let l = tw + 1;
    // One padded row (column q holds input column q − 1); per row (−1, 0, +1) its padded
    // columns split by parity, `ev` (l) and `od` (tw): columns 2t − 1, 2t, 2t + 1 of tile t are
    // ev[t], od[t], ev[t + 1]; then Bᵀ's first and last output along the row (its middle one
    // is od itself).
    scratch.resize(2 * l + 3 * (l + tw) + 6 * tw, 0.0);
    let (padded, rest) = scratch.split_at_mut(2 * l);
    let (cols, hor) = rest.split_at_mut(3 * (l + tw));
    let inside = g.wo.min(2 * l - 1);
    padded[0] = 0.0;
    padded[1 + inside..].fill(0.0);
    for r in blk.r0..blk.r1 {
        let (b, ti) = (r / th, r % th);
        let plane = &x[(b * g.co + o) * g.ho * g.wo..][..g.ho * g.wo];
        for dr in 0..3 {
            let (ev, od) = cols[dr * (l + tw)..(dr + 1) * (l + tw)].split_at_mut(l);
            match (2 * ti + dr).checked_sub(1).filter(|&y| y < g.ho) {
                None => {
                    ev.fill(0.0);
                    od.fill(0.0);
                }
                Some(y) => {
                    padded[1..1 + inside].copy_from_slice(&plane[y * g.wo..][..inside]);
                    for ((e, d), pair) in
                        ev.iter_mut().zip(od.iter_mut()).zip(padded.chunks_exact(2))
                    {
                        *e = pair[0];
                        *d = pair[1];
                    }
                    ev[tw] = padded[2 * tw];
                }
            }
            let (ev, od) = cols[dr * (l + tw)..(dr + 1) * (l + tw)].split_at(l);
            let (h0, h2) = hor[2 * dr * tw..(2 * dr + 2) * tw].split_at_mut(tw);
            for t in 0..tw {
                h0[t] = ev[t] - od[t];
                h2[t] = ev[t + 1] - od[t];
            }
        }
        // Row dr's column 2t + dj (dj = 0: od, 1: ev shifted) and Bᵀ's output v along it.
        let col = |dr: usize, dj: usize| -> &[f32] {
            let base = dr * (l + tw);
            if dj == 0 {
                &cols[base + l..][..tw]
            } else {
                &cols[base + 1..][..tw]
            }
        };
        let hv = |dr: usize, v: usize| -> &[f32] {
            match v {
                0 => &hor[2 * dr * tw..][..tw],
                1 => col(dr, 0),
                _ => &hor[(2 * dr + 1) * tw..][..tw],
            }
        };
        let t0 = (r - blk.r0) * tw;
        // SAFETY: forwarded from the caller (tile columns t0 .. t0 + tw of point q).
        let out =
            |q: usize| unsafe { std::slice::from_raw_parts_mut(v.get().add(q * stride + t0), tw) };
        // Bᵀ down the three rows: points q0, q0 + step, q0 + 2·step.
        let down = |r0: &[f32], r1: &[f32], r2: &[f32], q0: usize, step: usize| {
            let (a, b_, c_) = (out(q0), out(q0 + step), out(q0 + 2 * step));
            for t in 0..tw {
                a[t] = r0[t] - r1[t];
                b_[t] = r1[t];
                c_[t] = r2[t] - r1[t];
            }
        };
        for v_ in 0..3 {
            down(hv(0, v_), hv(1, v_), hv(2, v_), v_, 3);
        }
        for dj in 0..2 {
            down(col(0, dj), col(1, dj), col(2, dj), 9 + dj, 2);
        }
        // Odd rows: row 2·ti + di is row dr = di + 1.
        for di in 0..2 {
            for v_ in 0..3 {
                out(15 + 2 * v_ + di).copy_from_slice(hv(di + 1, v_));
            }
            for dj in 0..2 {
                out(21 + 2 * di + dj).copy_from_slice(col(di + 1, dj));
            }
        }
    }
}

/// The inverse transforms of [`conv_transpose_winograd`] for output channel `c` over a
/// block's tiles (`M[q]` of tile column `t` at `m[q·stride + t]`, points as in
/// [`transpose_input_channel`], `Aᵀ = [[1, 1, 0], [0, 1, 1]]`): tile `(ti, tj)` gives padded
/// rows `4·ti … 4·ti + 3` and columns `4·tj … 4·tj + 3` of the output, i.e. output pixel
/// `(4·ti + 2·di + a − pad, 4·tj + 2·dj + b − pad)` from phase `(a, b)`'s `(di, dj)`.
///
/// # Safety
/// As [`winograd_output_channel`].
#[allow(clippy::too_many_arguments)]
unsafe fn transpose_output_channel(
    m: &[f32],
    stride: usize,
    g: &ConvGeom,
    c: usize,
    blk: WinoBlock,
    out: SendPtr,
    scratch: &mut Vec<f32>,
) {
    let (th, tw) = ((g.ho + 1).div_ceil(2), (g.wo + 1).div_ceil(2));
    // 16 result vectors ([padded row 0..4][padded column offset 0..4]) and one interleaved
    // padded row.
    scratch.resize(20 * tw, 0.0);
    let (res, line) = scratch.split_at_mut(16 * tw);
    let e = |q: usize, t0: usize| &m[q * stride + t0..][..tw];
    for r in blk.r0..blk.r1 {
        let (b, ti) = (r / th, r % th);
        let t0 = (r - blk.r0) * tw;
        // Even/even, written out plainly: Z00[di][dj] = Σ_u Σ_v A[di][u]·A[dj][v]·M[3u + v].
        for di in 0..2 {
            for dj in 0..2 {
                let us = if di == 0 { [0, 1] } else { [1, 2] };
                let vs = if dj == 0 { [0, 1] } else { [1, 2] };
                let (a, b_, c_, d_) = (
                    e(3 * us[0] + vs[0], t0),
                    e(3 * us[0] + vs[1], t0),
                    e(3 * us[1] + vs[0], t0),
                    e(3 * us[1] + vs[1], t0),
                );
                let dst = &mut res[(4 * (2 * di) + 2 * dj) * tw..][..tw];
                for t in 0..tw {
                    dst[t] = (a[t] + b_[t]) + (c_[t] + d_[t]);
                }
            }
        }
        // Even rows, odd columns: Z01[di][dj] = Σ_u A[di][u]·M[9 + 2u + dj].
        for di in 0..2 {
            let us = if di == 0 { [0, 1] } else { [1, 2] };
            for dj in 0..2 {
                let (a, b_) = (e(9 + 2 * us[0] + dj, t0), e(9 + 2 * us[1] + dj, t0));
                let dst = &mut res[(4 * (2 * di) + 2 * dj + 1) * tw..][..tw];
                for t in 0..tw {
                    dst[t] = a[t] + b_[t];
                }
            }
        }
        // Odd rows, even columns: Z10[di][dj] = Σ_v A[dj][v]·M[15 + 2v + di].
        for di in 0..2 {
            for dj in 0..2 {
                let vs = if dj == 0 { [0, 1] } else { [1, 2] };
                let (a, b_) = (e(15 + 2 * vs[0] + di, t0), e(15 + 2 * vs[1] + di, t0));
                let dst = &mut res[(4 * (2 * di + 1) + 2 * dj) * tw..][..tw];
                for t in 0..tw {
                    dst[t] = a[t] + b_[t];
                }
            }
        }
        // Both odd.
        for di in 0..2 {
            for dj in 0..2 {
                res[(4 * (2 * di + 1) + 2 * dj + 1) * tw..][..tw]
                    .copy_from_slice(e(21 + 2 * di + dj, t0));
            }
        }
        // Interleave each padded row and write its part inside the output.
        for pr in 0..4 {
            let Some(y) = (4 * ti + pr).checked_sub(g.pad).filter(|&y| y < g.h) else {
                continue;
            };
            let r = |q: usize| &res[(4 * pr + q) * tw..][..tw];
            let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
            for (t, quad) in line.chunks_exact_mut(4).enumerate() {
                quad.copy_from_slice(&[r0[t], r1[t], r2[t], r3[t]]);
            }
            let n = g.w.min(4 * tw - g.pad);
            // SAFETY: forwarded from the caller (row y of channel c of image b).
            let dst = unsafe {
                std::slice::from_raw_parts_mut(out.get().add(((b * g.ci + c) * g.h + y) * g.w), g.w)
            };
            dst[..n].copy_from_slice(&line[g.pad..g.pad + n]);
        }
    }
}

/// [`conv_input_grad`] of a 3×3 stride-2 convolution (pad ≤ 1), i.e. the transposed
/// convolution, by output phase: each parity of output row and column is a stride-1
/// correlation of the input with 2×2, 2×1, 1×2 or 1×1 of the kernel's taps, and the
/// two-tap axes run as Winograd's F(2, 2) (3 products for 2 outputs). Per 2×2 tile of phase
/// positions (4×4 output pixels) that is 9 + 6 + 6 + 4 = 25 products per channel pair instead
/// of 36; the transforms are additions only. Blocks and parallelism as in
/// [`conv_forward_winograd`], with 25 GEMMs `M[q] = U[p(q)] [ci, co] · V[q] [co, n]`.
fn conv_transpose_winograd(
    grad: &[f32],
    weight: &[f32],
    g: &ConvGeom,
    block_tiles: usize,
    scale: f32,
) -> Vec<f32> {
    let (th, tw) = ((g.ho + 1).div_ceil(2), (g.wo + 1).div_ceil(2));
    let u = transpose_winograd_weight(weight, g.co, g.ci);
    let (blocks, tb) = winograd_blocks(g.b * th, tw, block_tiles);
    // Zeroed: output pixels past the last tile's padded rows and columns are never written (a
    // pad-1 geometry's last row and column when the input size is even).
    let mut out = zeros_on_pool(g.b * g.ci * g.h * g.w);
    let dst = SendPtr(out.as_mut_ptr());
    let (ci, co) = (g.ci, g.co);
    // The kernel point of each of the 25 input points (transpose_input_channel).
    let point = |q: usize| match q {
        0..9 => q,
        9..15 => 9 + (q - 9) / 2,
        15..21 => 12 + (q - 15) / 2,
        _ => 15,
    };
    winograd_run(
        &blocks,
        [tw, tb],
        [25, co, ci],
        // SAFETY: winograd_run hands each task its own channel's rows of V.
        |blk, o, v, scratch| unsafe {
            transpose_input_channel(grad, g, o, blk, v, co * tb, scratch)
        },
        // SAFETY: u[p] is [ci, co], V[q] [co, n] and M[q] [ci, n] with row stride tb.
        |q, n, v, m| unsafe {
            gemm(
                [ci, n, co],
                m.add(q * ci * tb),
                [tb as isize, 1],
                false,
                scale,
                u[point(q) * ci * co..].as_ptr(),
                [co as isize, 1],
                v.add(q * co * tb),
                [tb as isize, 1],
                false,
            )
        },
        // SAFETY: each task writes its own output channel of the block's tiles.
        |blk, c, m, scratch| unsafe {
            transpose_output_channel(m, ci * tb, g, c, blk, dst, scratch)
        },
    );
    out
}

/// Tiles per Winograd block (whole tile rows, at least one): enough GEMM columns to reuse each
/// weight element, few enough that a block's transformed input stays near 1 MiB per thread.
fn winograd_block(g: &ConvGeom) -> usize {
    ((1usize << 16) / g.ci.max(g.co)).clamp(32, 1024)
}

/// Whether the Winograd paths are on: unless the environment sets `SAE_WINOGRAD` to `0`, `off`,
/// `false` or `no` (read once, [`winograd_setting`]), which runs every convolution as the
/// direct GEMM (for comparisons, or for results that are bit-identical to builds before them;
/// `docs/performance.md`).
fn winograd_enabled() -> bool {
    #[cfg(test)]
    if tests::DIRECT_ONLY.get() {
        return false;
    }
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| winograd_setting(std::env::var_os("SAE_WINOGRAD").as_deref()))
}

/// `SAE_WINOGRAD`'s meaning. A value it does not know leaves the paths on and says so once on
/// stderr, rather than being taken silently for either.
fn winograd_setting(value: Option<&std::ffi::OsStr>) -> bool {
    let Some(value) = value else { return true };
    match value.to_string_lossy().trim().to_ascii_lowercase().as_str() {
        "0" | "off" | "false" | "no" => false,
        "" | "1" | "on" | "true" | "yes" => true,
        other => {
            eprintln!(
                "warning: SAE_WINOGRAD={other:?} is not one of 0/off/false/no or 1/on/true/yes; \
                 the Winograd convolutions stay on"
            );
            true
        }
    }
}

/// The most floats of a [`dense_plane_matrix`] (4 MiB): it is built on every call.
const DENSE_PLANE_MAX: usize = 1 << 20;

/// The largest output plane (pixels) that runs as a dense GEMM: 2×2, the patch discriminator's
/// 3×3 convolution of a 4×4 plane without padding. At 4×4 outputs the direct path ran at
/// 70–95 GFLOP/s and the dense one no faster (its forward slower).
const DENSE_PLANE_MAX_OUTPUT: usize = 4;

/// The smallest batch that runs as a dense GEMM: the matrix is built on every call, and at a
/// batch of 8 building it took longer than the direct convolution (`docs/performance.md`,
/// thirteenth round).
const DENSE_PLANE_MIN_BATCH: usize = 32;

/// Whether a convolution runs as one GEMM with its dense matrix over whole planes
/// ([`dense_plane_matrix`]): output planes of at most [`DENSE_PLANE_MAX_OUTPUT`] pixels from
/// input planes with at most twice as many pixels as the kernel has taps (so the matrix's zeros
/// at most double the products), at batches from [`DENSE_PLANE_MIN_BATCH`] and with a small
/// matrix. There the direct path's tiles were one image of 4 output pixels, each GEMM 4 columns
/// wide and each im2col row a copy of 2 floats: the quickstart's patch discriminator's layers
/// from 4×4 to 2×2 ran at 14–20 GFLOP/s, and 50–70 this way (`docs/performance.md`,
/// thirteenth round).
fn dense_plane_applies(g: &ConvGeom) -> bool {
    let (pi, po) = (g.h * g.w, g.ho * g.wo);
    po <= DENSE_PLANE_MAX_OUTPUT
        && pi <= 2 * g.k * g.k
        && g.b >= DENSE_PLANE_MIN_BATCH
        && g.co * po * g.ci * pi <= DENSE_PLANE_MAX
}

/// The connections of one input channel to one output channel over whole planes: `(output
/// pixel, input pixel, tap)` for every tap `(kh, kw)` that reads an input pixel (not the
/// padding), in the order of output pixels, then taps.
fn plane_taps(g: &ConvGeom) -> Vec<(usize, usize, usize)> {
    let inside = |o: usize, kt: usize, len: usize| {
        (o * g.stride + kt).checked_sub(g.pad).filter(|&i| i < len)
    };
    let mut taps = Vec::new();
    for oy in 0..g.ho {
        for ox in 0..g.wo {
            for kh in 0..g.k {
                for kw in 0..g.k {
                    if let (Some(iy), Some(ix)) = (inside(oy, kh, g.h), inside(ox, kw, g.w)) {
                        taps.push((oy * g.wo + ox, iy * g.w + ix, kh * g.k + kw));
                    }
                }
            }
        }
    }
    taps
}

/// The convolution as a dense matrix over whole planes, `D [co·ho·wo, ci·h·w]` with
/// `D[(o, oy, ox), (c, iy, ix)] = w[o, c, iy + p − oy·s, ix + p − ox·s]` where that tap exists
/// and 0 elsewhere. An NCHW batch is a matrix of one row per image (`[b, ci·h·w]`), so the
/// convolution is `y = x · Dᵀ`, its input gradient `dx = g · D`, and its weight gradient the
/// fold of `gᵀ · x` onto the taps: each one GEMM over the whole batch, with no im2col.
fn dense_plane_matrix(weight: &[f32], g: &ConvGeom, taps: &[(usize, usize, usize)]) -> Vec<f32> {
    let (pi, po, k2) = (g.h * g.w, g.ho * g.wo, g.k * g.k);
    let cols = g.ci * pi;
    let mut d = vec![0.0f32; g.co * po * cols];
    d.par_chunks_mut(po * cols)
        .enumerate()
        .for_each(|(o, rows)| {
            for c in 0..g.ci {
                let w = &weight[(o * g.ci + c) * k2..][..k2];
                for &(q, p, t) in taps {
                    rows[q * cols + c * pi + p] = w[t];
                }
            }
        });
    d
}

/// Which product with [`dense_plane_matrix`] a pass is.
#[derive(Clone, Copy)]
enum DensePass {
    /// [`conv_forward`]: `y = scale · x · Dᵀ`, `x [b, ci·h·w]` → `[b, co·ho·wo]`.
    Forward,
    /// [`conv_input_grad`]: `dx = scale · g · D`, `g [b, co·ho·wo]` → `[b, ci·h·w]`.
    InputGrad,
}

/// The forward pass or the input gradient as one GEMM with the dense matrix `D`
/// ([`dense_plane_matrix`]) over the whole batch `a`.
///
/// The dense GEMMs (these two and [`dense_weight_grad`]'s) run on the calling thread: at these
/// sizes (a few tens of MFLOP, most of the time in packing the operands) the GEMM on the pool of
/// two threads took as long or longer (0.18–0.25 against 0.28–0.55 ms at batch 32 and 64;
/// `docs/performance.md`, thirteenth round).
fn dense_pass(a: &[f32], weight: &[f32], g: &ConvGeom, scale: f32, pass: DensePass) -> Vec<f32> {
    let (cols, rows) = (g.ci * g.h * g.w, g.co * g.ho * g.wo);
    let d = dense_plane_matrix(weight, g, &plane_taps(g));
    // `D [rows, cols]` is read transposed for the forward pass.
    let (inner, outer, d_strides) = match pass {
        DensePass::Forward => (cols, rows, [1, cols as isize]),
        DensePass::InputGrad => (rows, cols, [cols as isize, 1]),
    };
    let mut out = vec![0.0f32; g.b * outer];
    // SAFETY: out is [b, outer], a [b, inner] and op(D) [inner, outer] with the strides above.
    unsafe {
        gemm(
            [g.b, outer, inner],
            out.as_mut_ptr(),
            [outer as isize, 1],
            false,
            scale,
            a.as_ptr(),
            [inner as isize, 1],
            d.as_ptr(),
            d_strides,
            false,
        )
    }
    out
}

/// [`conv_weight_grad`] as the fold of `dD = scale · gᵀ · x` onto the taps: `dW[o, c, t]` is
/// the sum of `dD`'s entries that hold tap `t` (the transpose of [`dense_plane_matrix`]'s
/// scatter), in [`plane_taps`]' order.
fn dense_weight_grad(x: &[f32], grad: &[f32], g: &ConvGeom, scale: f32) -> Vec<f32> {
    let (pi, po, k2) = (g.h * g.w, g.ho * g.wo, g.k * g.k);
    let (cols, rows) = (g.ci * pi, g.co * po);
    let mut dd = vec![0.0f32; rows * cols];
    // SAFETY: dD is [rows, cols], gᵀ [rows, b] (grad [b, rows] read transposed), x [b, cols].
    unsafe {
        gemm(
            [rows, cols, g.b],
            dd.as_mut_ptr(),
            [cols as isize, 1],
            false,
            scale,
            grad.as_ptr(),
            [1, rows as isize],
            x.as_ptr(),
            [cols as isize, 1],
            false,
        )
    }
    let taps = plane_taps(g);
    let mut dw = vec![0.0f32; g.co * g.ci * k2];
    dw.par_chunks_mut(g.ci * k2)
        .enumerate()
        .for_each(|(o, dwo)| {
            let block = &dd[o * po * cols..][..po * cols];
            for (c, w) in dwo.chunks_exact_mut(k2).enumerate() {
                for &(q, p, t) in &taps {
                    w[t] += block[q * cols + c * pi + p];
                }
            }
        });
    dw
}

/// `conv2d(x, scale · weight)` without bias (`scale` applied by the GEMMs).
///
/// # Shapes
/// - `x`: `[b, ci, h, w]`; `weight`: `[co, ci, k, k]`; output: `[b, co, ho, wo]`
pub(crate) fn conv_forward(x: &[f32], weight: &[f32], g: &ConvGeom, scale: f32) -> Vec<f32> {
    let (kk, plane_in, plane_out) = (g.kk(), g.ci * g.h * g.w, g.ho * g.wo);
    debug_assert_eq!(x.len(), g.b * plane_in);
    debug_assert_eq!(weight.len(), g.co * kk);
    if winograd_applies(g) && winograd_enabled() {
        return conv_forward_winograd(x, weight, g, winograd_block(g), scale);
    }
    if dense_plane_applies(g) && winograd_enabled() {
        return dense_pass(x, weight, g, scale, DensePass::Forward);
    }
    let len = g.b * g.co * plane_out;
    // Not zeroed: the tiles cover every output element once and the GEMM does not read `dst`
    // (its length is set after they all ran).
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = SendPtr(out.as_mut_ptr());
    let tiles = g.tiles();
    // A tile of one image: the GEMM straight into its output rows (one image's NCHW output is
    // a strided [co, pixels] matrix); a tile of several, whose columns span images that no
    // strided matrix covers, into `res [co, nb·plane]` first, then each image's block to its
    // place.
    // SAFETY (of the GEMM and the copy): the task of a tile alone writes columns
    // [y0·wo, y1·wo) of its images' output rows; the sizes match the buffers (debug-asserted
    // above).
    let run = |tile: Tile, res: &mut Vec<f32>, parallel: bool| {
        let t = tile.cols(g);
        let into = if tile.nb == 1 {
            (
                unsafe { dst.get().add(tile.b * g.co * plane_out + tile.y0 * g.wo) },
                plane_out,
            )
        } else {
            if res.len() < g.co * t {
                res.resize(g.co * t, 0.0);
            }
            (res.as_mut_ptr(), t)
        };
        move |rhs: *const f32, rhs_rs: usize| unsafe {
            gemm(
                [g.co, t, kk],
                into.0,
                [into.1 as isize, 1],
                false,
                scale,
                weight.as_ptr(),
                [kk as isize, 1],
                rhs,
                [rhs_rs as isize, 1],
                parallel,
            );
            if tile.nb > 1 {
                let block = g.co * plane_out;
                let out =
                    std::slice::from_raw_parts_mut(dst.get().add(tile.b * block), tile.nb * block);
                scatter_images(
                    std::slice::from_raw_parts(into.0, g.co * t),
                    out,
                    [tile.nb, g.co, plane_out],
                    block,
                );
            }
        }
    };
    if tiles.len() < rayon::current_num_threads() {
        // Fewer tiles than threads (a small plane at batch 1): the tiles one after another,
        // each im2col and GEMM on the whole pool.
        with_spare([0, 0], |[col, res]| {
            for &tile in &tiles {
                with_tile_in(x, g, tile, col, true, run(tile, res, true));
            }
        });
    } else {
        tiles.par_iter().for_each(|&tile| {
            with_spare([0, 0], |[col, res]| {
                with_tile_in(x, g, tile, col, false, run(tile, res, false))
            });
        });
    }
    // SAFETY: every element of `out` was written above (the tiles cover each image's rows).
    unsafe { out.set_len(len) };
    out
}

/// The gradient of `conv2d(x, scale · weight)` with respect to `weight`, i.e.
/// `scale · Σ_b g_b · im2col(x_b)ᵀ`.
///
/// # Shapes
/// - `x`: `[b, ci, h, w]`; `grad`: `[b, co, ho, wo]`; output: `[co, ci, k, k]`
pub(crate) fn conv_weight_grad(x: &[f32], grad: &[f32], g: &ConvGeom, scale: f32) -> Vec<f32> {
    let (kk, plane_in, plane_out) = (g.kk(), g.ci * g.h * g.w, g.ho * g.wo);
    debug_assert_eq!(x.len(), g.b * plane_in);
    debug_assert_eq!(grad.len(), g.b * g.co * plane_out);
    if winograd_applies(g) && winograd_enabled() {
        return conv_weight_grad_winograd(x, grad, g, winograd_block(g), scale);
    }
    if dense_plane_applies(g) && winograd_enabled() {
        return dense_weight_grad(x, grad, g, scale);
    }
    // The pixels are this GEMM's inner dimension (at least MIN_TILE_PIXELS per call).
    let tiles = g.tiles();
    // Fixed chunks, each summed in order into its own buffer, then the buffers in order: the
    // same float sums on every run whatever the thread count or scheduling (a resumed run
    // must equal an uninterrupted one bit for bit). At most 16 chunks and 64 MiB of buffers.
    // A large weight (from 1 MiB) gets one accumulator, its GEMMs on the whole pool: partial
    // buffers per chunk meant up to 16 weight-sized buffers at once (9.4 MB each at 512
    // channels) and a pass more to sum them, while the tiles of several images already give
    // each GEMM enough pixels to amortise its pass over the accumulator.
    let size = g.co * kk;
    let chunks = if size >= large_weight() {
        1
    } else {
        tiles.len().min(16).min((16 << 20) / size).max(1)
    };
    let per_chunk = tiles.len().div_ceil(chunks);
    // Fewer chunks than threads (one accumulator, or a small batch): each chunk's GEMMs and
    // im2col on the whole pool as well, so that no thread idles (nested in the chunks' own
    // parallel loop where there are several).
    let parallel = tiles.len().div_ceil(per_chunk) < rayon::current_num_threads();
    let partial: Vec<Vec<f32>> = tiles
        .par_chunks(per_chunk)
        .map(|chunk| {
            let mut acc = vec![0.0f32; size];
            with_spare([0, 0], |[col, lhs]| {
                for &tile in chunk {
                    let t = tile.cols(g);
                    let (lhs_ptr, lhs_rs) = grad_tile(grad, g, tile, lhs);
                    // colᵀ [t, kk]: element (p, r) at r·rhs_cs + p.
                    // SAFETY: acc is [co, kk]; the output-gradient tile is [co, t] with row
                    // stride lhs_rs; colᵀ as above.
                    let run = |rhs: *const f32, rhs_cs: usize| unsafe {
                        gemm(
                            [g.co, kk, t],
                            acc.as_mut_ptr(),
                            [kk as isize, 1],
                            true,
                            scale,
                            lhs_ptr,
                            [lhs_rs as isize, 1],
                            rhs,
                            [1, rhs_cs as isize],
                            parallel,
                        )
                    };
                    with_tile_in(x, g, tile, col, parallel, run);
                }
            });
            acc
        })
        .collect();
    sum_in_order(partial, size)
}

/// `partial[0] + partial[1] + …` element by element, added in that order: the same float sums
/// as one loop over the partials (so the same bits on every run), split by element over the
/// pool. On one thread, the sum of a weight gradient's 16 partials was 0.5 % of a 128-px
/// training step (`docs/performance.md`, sixth round).
fn sum_in_order(partial: Vec<Vec<f32>>, size: usize) -> Vec<f32> {
    let mut partial = partial.into_iter();
    let mut sum = partial.next().unwrap_or_else(|| vec![0.0; size]);
    let rest: Vec<Vec<f32>> = partial.collect();
    if !rest.is_empty() {
        sum.par_chunks_mut(CHUNK).enumerate().for_each(|(i, s)| {
            for p in &rest {
                s.iter_mut().zip(&p[i * CHUNK..]).for_each(|(a, b)| *a += b);
            }
        });
    }
    sum
}

/// `len` zeros, written on the pool: for outputs that are then added into, where `vec![0.0;
/// len]` zeroed them on one thread (1 % of a 128-px training step, `docs/performance.md`, sixth
/// round).
fn zeros_on_pool(len: usize) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(CHUNK)
        .for_each(|c| {
            c.iter_mut().for_each(|x| {
                x.write(0.0);
            })
        });
    // SAFETY: every element up to len was written above.
    unsafe { v.set_len(len) };
    v
}

/// `[co, ci, kk]` → `[ci, co, kk]` with the taps reversed: the weight of a stride-1
/// convolution's adjoint. Blocks of [`FLIP_CHANNELS`] input channels on the pool, each reading
/// every output channel's contiguous run of those channels' taps. One input channel per task,
/// reading `kk` floats every `ci·kk`, took about 10 ms for a 512 × 512 × 3 × 3 weight (this
/// way 4–10 ms, on a busy machine): as long as the convolution itself on a 4- or 8-px plane
/// (`docs/performance.md`, tenth round).
fn flip_weight(weight: &[f32], co: usize, ci: usize, kk: usize) -> Vec<f32> {
    debug_assert_eq!(weight.len(), co * ci * kk);
    if weight.is_empty() {
        return Vec::new();
    }
    let mut flipped: Vec<f32> = Vec::with_capacity(weight.len());
    flipped.spare_capacity_mut()[..weight.len()]
        .par_chunks_mut(FLIP_CHANNELS * co * kk)
        .enumerate()
        .for_each(|(block, rows)| {
            let (c0, nc) = (block * FLIP_CHANNELS, rows.len() / (co * kk));
            for o in 0..co {
                let src = &weight[(o * ci + c0) * kk..][..nc * kk];
                for (j, taps) in src.chunks_exact(kk).enumerate() {
                    let dst = &mut rows[(j * co + o) * kk..][..kk];
                    for (d, &w) in dst.iter_mut().rev().zip(taps) {
                        d.write(w);
                    }
                }
            }
        });
    // SAFETY: the blocks cover all `ci` rows of `co·kk` values, and each writes all of its own.
    unsafe { flipped.set_len(weight.len()) };
    flipped
}

/// Input channels per task of [`flip_weight`].
const FLIP_CHANNELS: usize = 16;

/// The gradient of `conv2d(x, scale · weight)` with respect to `x` (=
/// `conv_transpose2d(grad, scale · weight)` with the output padding that gives back `h × w`).
///
/// # Shapes
/// - `grad`: `[b, co, ho, wo]`; `weight`: `[co, ci, k, k]`; output: `[b, ci, h, w]`
pub(crate) fn conv_input_grad(grad: &[f32], weight: &[f32], g: &ConvGeom, scale: f32) -> Vec<f32> {
    let (kk, plane_in, plane_out) = (g.kk(), g.ci * g.h * g.w, g.ho * g.wo);
    debug_assert_eq!(grad.len(), g.b * g.co * plane_out);
    debug_assert_eq!(weight.len(), g.co * kk);
    let k = g.k;
    if dense_plane_applies(g) && winograd_enabled() {
        return dense_pass(grad, weight, g, scale, DensePass::InputGrad);
    }
    // A stride-1 convolution's adjoint is the convolution with the kernel flipped in space,
    // input and output channels swapped, and padding k − 1 − p: one fast forward pass. Not
    // where tiles hold several images (small planes, large weights): there the weight is read
    // about once per call, and col2im's GEMM packs it transposed where it stands, with no
    // flipped copy (the discriminator's 512-channel 4×4 input gradient at batch 6: 60 → 100
    // GFLOP/s, `docs/performance.md`, tenth round).
    if g.stride == 1 && g.pad < k && g.images_per_tile() == 1 {
        let flipped = flip_weight(weight, g.co, g.ci, k * k);
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
        return conv_forward(grad, &flipped, &adjoint, scale);
    }
    if transpose_winograd_applies(g) && winograd_enabled() {
        return conv_transpose_winograd(grad, weight, g, winograd_block(g), scale);
    }
    let mut out = zeros_on_pool(g.b * plane_in);
    // The tiles of one task: one image's rows (they add into the same image), or one tile of
    // several whole images.
    let tiles = g.tiles();
    let tasks: Vec<&[Tile]> = tiles.chunk_by(|a, b| a.b == b.b && a.nb == 1).collect();
    // dcol = Wᵀ · g[:, tile], then col2im into the task's images `xs` (from image tasks[0].b).
    let task = |tiles: &[Tile], xs: &mut [f32], [col, rhs]: &mut [Vec<f32>; 2], parallel: bool| {
        for &tile in tiles {
            let (ti, t) = (tile.image_cols(g), tile.cols(g));
            if col.len() < kk * t {
                col.resize(kk * t, 0.0);
            }
            let (rhs_ptr, rhs_rs) = grad_tile(grad, g, tile, rhs);
            // SAFETY: col holds [kk, t]; Wᵀ [kk, co] reads weight [co, kk] transposed; the
            // output-gradient tile is [co, t] with row stride rhs_rs.
            unsafe {
                gemm(
                    [kk, t, g.co],
                    col.as_mut_ptr(),
                    [t as isize, 1],
                    false,
                    scale,
                    weight.as_ptr(),
                    [1, kk as isize],
                    rhs_ptr,
                    [rhs_rs as isize, 1],
                    parallel,
                )
            }
            for (j, xb) in xs.chunks_mut(plane_in).take(tile.nb).enumerate() {
                col2im_add(&col[j * ti..kk * t], g, (tile.y0, tile.y1), t, xb, parallel);
            }
        }
    };
    // Each task gets its images of the output as a slice of its own (split off in order), so
    // the tasks run in parallel without shared pointers.
    let mut parts: Vec<(&[Tile], &mut [f32])> = Vec::with_capacity(tasks.len());
    let mut rest = out.as_mut_slice();
    for tiles in tasks {
        let (mine, more) = rest.split_at_mut(tiles[0].nb * plane_in);
        parts.push((tiles, mine));
        rest = more;
    }
    if parts.len() < rayon::current_num_threads() {
        // Fewer tasks than threads (the generator's upsampling at batch 1): one after
        // another, each GEMM and col2im on the whole pool.
        with_spare([0, 0], |bufs| {
            for (tiles, xs) in parts {
                task(tiles, xs, bufs, true);
            }
        });
    } else {
        parts
            .into_par_iter()
            .for_each(|(tiles, xs)| with_spare([0, 0], |bufs| task(tiles, xs, bufs, false)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    std::thread_local! {
        /// Set by a test to run its thread's convolutions on the direct paths.
        pub(super) static DIRECT_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        /// Set by a test to treat every weight from this size as large ([`LARGE_WEIGHT`]).
        pub(super) static WEIGHT_LIMIT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    }

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

    /// The weight gradient by its definition, `dW[o, c, kh, kw] = Σ g[o, oy, ox] · x[c, iy, ix]`.
    fn naive_weight_grad(x: &[f32], gr: &[f32], g: &ConvGeom) -> Vec<f32> {
        let mut dw = vec![0.0f64; g.co * g.kk()];
        for b in 0..g.b {
            for o in 0..g.co {
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let go = gr[((b * g.co + o) * g.ho + oy) * g.wo + ox] as f64;
                        for c in 0..g.ci {
                            for kh in 0..g.k {
                                for kw in 0..g.k {
                                    let iy = (oy * g.stride + kh) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + kw) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    dw[((o * g.ci + c) * g.k + kh) * g.k + kw] += go
                                        * x[((b * g.ci + c) * g.h + iy as usize) * g.w
                                            + ix as usize]
                                            as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        dw.into_iter().map(|v| v as f32).collect()
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
        let rows = |t: Vec<Tile>| -> Vec<usize> {
            t.iter().filter(|t| t.b == 0).map(|t| t.y1 - t.y0).collect()
        };
        assert_eq!(rows(tiles([2, 40, 40, 17], 4, 3, 1, 1)), [16, 16, 8]);
        assert_eq!(rows(tiles([1, 256, 40, 17], 3, 1, 1, 0)), [16, 16, 8]);
        assert_eq!(rows(tiles([1, 40, 81, 81], 3, 3, 2, 1)), [7, 7, 7, 7, 7, 6]);
        // Planes under MIN_TILE_PIXELS with a large weight: whole images side by side, the
        // batch split evenly; one image per tile for a small weight.
        let images = |t: Vec<Tile>| -> Vec<usize> { t.iter().map(|t| t.nb).collect() };
        assert_eq!(images(tiles([10, 512, 4, 4], 512, 3, 1, 1)), [10]);
        assert_eq!(images(tiles([10, 512, 8, 8], 512, 3, 1, 1)), [3, 3, 4]);
        assert_eq!(images(tiles([3, 16, 4, 4], 16, 3, 1, 1)), [1, 1, 1]);
        WEIGHT_LIMIT.set(Some(1));
        assert_eq!(images(tiles([23, 2, 5, 5], 2, 3, 1, 1)), [7, 8, 8]);
        assert_eq!(images(tiles([19, 3, 9, 9], 2, 3, 2, 0)), [9, 10]);
        assert_eq!(images(tiles([3, 2, 5, 5], 2, 3, 1, 1)), [3]);
        WEIGHT_LIMIT.set(None);
        on_one_and_many_threads(check_every_geometry);
        // Every weight large: tiles of several images wherever the planes are small, and the
        // weight gradient in one buffer with its GEMMs on the pool.
        on_one_and_many_threads(|| {
            WEIGHT_LIMIT.set(Some(1));
            check_every_geometry();
            WEIGHT_LIMIT.set(None);
        });
    }

    /// Runs `check` on a pool of one thread and on one of 64, more threads than any test
    /// geometry has tiles or blocks, so that both the parallel and the one-after-another paths
    /// run on any machine.
    fn on_one_and_many_threads(check: impl Fn() + Send + Sync) {
        for threads in [1, 64] {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(&check);
        }
    }

    /// An equalised-learning-rate weight scale (`1/√(ci·k²)`-like, not a power of two) for
    /// the kernels' `scale` argument.
    const SCALE: f32 = 0.37;

    fn scaled(w: &[f32]) -> Vec<f32> {
        w.iter().map(|v| v * SCALE).collect()
    }

    fn check_every_geometry() {
        for &(shape, co, k, s, p) in &[
            // Several tiles per image (MIN_TILE_PIXELS): 16, 16 and 8 rows; the same for a
            // pointwise convolution; 7-row tiles and a last one of 6 through col2im.
            ([2, 40, 40, 17], 4, 3, 1, 1),
            ([1, 256, 40, 17], 3, 1, 1, 0),
            ([1, 40, 81, 81], 3, 3, 2, 1),
            // With every weight counted as large (the second pass below), tiles of several
            // whole images: 7, 8 and 8; 9 and 10 through col2im; 2 and 3 pointwise, gathered;
            // one image beside two (a 130-px plane).
            ([23, 2, 5, 5], 2, 3, 1, 1),
            ([19, 3, 9, 9], 2, 3, 2, 0),
            ([5, 3, 8, 12], 2, 1, 1, 0),
            ([3, 2, 10, 13], 2, 3, 1, 1),
            // Stride 2 with a pad wider than the kernel (phases of padding only).
            ([2, 2, 7, 5], 2, 1, 2, 2),
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
            // Whole planes as one dense GEMM (`dense_plane_applies`): 4×4 to 2×2 (the patch
            // discriminator's), 2×2 with padding, stride 2, a 5×5 kernel, a pointwise one and
            // a 1-px output plane.
            ([33, 3, 4, 4], 2, 3, 1, 0),
            ([32, 2, 2, 2], 3, 3, 1, 1),
            ([40, 3, 3, 3], 2, 3, 2, 1),
            ([32, 2, 4, 4], 2, 5, 2, 2),
            ([32, 3, 1, 2], 2, 1, 1, 0),
            ([35, 2, 3, 3], 4, 3, 1, 0),
        ] {
            let g = ConvGeom::new(shape, co, k, s, p).unwrap();
            let x = values(g.b * g.ci * g.h * g.w, 1);
            let w = values(g.co * g.kk(), 2);
            let gr = values(g.b * g.co * g.ho * g.wo, 3);
            // The weight scale goes in as the GEMMs' factor; the definition gets the scaled
            // weight. The adjoint identities below hold with it as they stand.
            let y = conv_forward(&x, &w, &g, SCALE);
            close(
                &y,
                &naive_forward(&x, &scaled(&w), &g),
                &format!("forward {g:?}"),
            );
            let dx = conv_input_grad(&gr, &w, &g, SCALE);
            let dw = conv_weight_grad(&x, &gr, &g, SCALE);
            let (yg, xdx, wdw) = (dot(&y, &gr), dot(&x, &dx), dot(&w, &dw));
            let tol = 1e-4 * yg.abs().max(1.0);
            assert!((yg - xdx).abs() < tol, "input grad {g:?}: {yg} vs {xdx}");
            assert!((yg - wdw).abs() < tol, "weight grad {g:?}: {yg} vs {wdw}");
        }
    }

    /// The forward pass, the input gradient and the weight gradient of `g` (weight scale
    /// [`SCALE`]).
    fn passes(x: &[f32], w: &[f32], gr: &[f32], g: &ConvGeom) -> [Vec<f32>; 3] {
        [
            conv_forward(x, w, g, SCALE),
            conv_input_grad(gr, w, g, SCALE),
            conv_weight_grad(x, gr, g, SCALE),
        ]
    }

    /// `run()` as built, then on the direct paths only ([`DIRECT_ONLY`]).
    fn as_built_and_direct<T>(run: impl Fn() -> T) -> (T, T) {
        let fast = run();
        DIRECT_ONLY.set(true);
        let direct = run();
        DIRECT_ONLY.set(false);
        (fast, direct)
    }

    /// The Winograd path against the definition: odd sizes (clipped last tiles), pads 0–2
    /// (2 is the input gradient of a pad-0 convolution), planes smaller than a tile, blocks of
    /// one tile row, of several (a shorter last one) and of the whole batch; on one thread
    /// (blocks in parallel) and on more threads than blocks (blocks one after another).
    #[test]
    fn winograd_matches_the_definition() {
        on_one_and_many_threads(|| {
            for &(shape, co, p) in &[
                ([2, 3, 9, 7], 4, 1),
                ([1, 5, 6, 5], 2, 0),
                ([1, 2, 3, 4], 3, 2),
                ([3, 4, 10, 12], 3, 1),
                ([1, 3, 2, 2], 2, 1),
                ([2, 2, 1, 1], 2, 1),
            ] {
                let g = ConvGeom::new(shape, co, 3, 1, p).unwrap();
                let x = values(g.b * g.ci * g.h * g.w, 4);
                let w = values(g.co * g.kk(), 5);
                let want = naive_forward(&x, &scaled(&w), &g);
                let gr = values(g.b * g.co * g.ho * g.wo, 6);
                let dw_want = scaled(&naive_weight_grad(&x, &gr, &g));
                for block_tiles in [1, 7, usize::MAX] {
                    let y = conv_forward_winograd(&x, &w, &g, block_tiles, SCALE);
                    close(&y, &want, &format!("winograd {g:?}, {block_tiles} tiles"));
                    let dw = conv_weight_grad_winograd(&x, &gr, &g, block_tiles, SCALE);
                    close(
                        &dw,
                        &dw_want,
                        &format!("winograd dW {g:?}, {block_tiles} tiles"),
                    );
                }
            }
        });
    }

    /// The transposed convolution by phases against the generic path (checked above against
    /// the definition by the adjoint identity): pads 0 and 1, even and odd sizes (the last
    /// output row and column beyond every tile or not), blocks of one tile row, several, all;
    /// on one thread and on more threads than blocks.
    #[test]
    fn transposed_winograd_matches_col2im() {
        on_one_and_many_threads(|| {
            for &(shape, co, p) in &[
                ([1, 3, 9, 9], 4, 0),
                ([2, 4, 10, 7], 3, 0),
                ([1, 2, 8, 8], 3, 1),
                ([2, 3, 7, 10], 2, 1),
                ([1, 2, 3, 3], 2, 0),
                ([1, 2, 2, 3], 2, 1),
            ] {
                let g = ConvGeom::new(shape, co, 3, 2, p).unwrap();
                let w = values(g.co * g.kk(), 7);
                let gr = values(g.b * g.co * g.ho * g.wo, 8);
                let want = conv_input_grad(&gr, &w, &g, SCALE);
                for block_tiles in [1, 5, usize::MAX] {
                    let dx = conv_transpose_winograd(&gr, &w, &g, block_tiles, SCALE);
                    close(
                        &dx,
                        &want,
                        &format!("transposed {g:?}, {block_tiles} tiles"),
                    );
                }
            }
        });
    }

    /// Full-size layers through the public entry points, Winograd against the direct paths
    /// (which the parity tests check against PyTorch): a 32-channel stride-1 convolution at
    /// 64 px (2048 tiles) in all three passes, and the upsampling of a 128-channel plane to 129
    /// px (1089 tiles). The bound is the unit tests' (1e-5 of the largest value: f32 sums of a
    /// few hundred to thousands of products); the measured differences are printed.
    #[test]
    fn winograd_agrees_with_the_direct_paths_at_full_size() {
        let g = ConvGeom::new([2, 32, 64, 64], 32, 3, 1, 1).unwrap();
        let t = ConvGeom::new([1, 128, 129, 129], 128, 3, 2, 0).unwrap();
        assert!(winograd_applies(&g) && transpose_winograd_applies(&t));
        let x = values(g.b * g.ci * g.h * g.w, 9);
        let w = values(g.co * g.kk(), 10);
        let gr = values(g.b * g.co * g.ho * g.wo, 11);
        let tw = values(t.co * t.kk(), 12);
        let tg = values(t.b * t.co * t.ho * t.wo, 13);
        let run = || {
            let [y, dx, dw] = passes(&x, &w, &gr, &g);
            [y, dx, dw, conv_input_grad(&tg, &tw, &t, SCALE)]
        };
        let (fast, direct) = as_built_and_direct(run);
        for (name, (a, b)) in ["forward", "input grad", "weight grad", "transposed"]
            .iter()
            .zip(fast.iter().zip(&direct))
        {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = a.iter().zip(b).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            println!(
                "{name}: max |winograd − direct| = {:.1e} of the largest value",
                diff / scale
            );
            assert_ne!(diff, 0.0, "{name}: the Winograd path did not run");
            close(a, b, name);
        }
    }

    /// Which convolutions take the Winograd path: stride-1 3×3 ones with enough channels and
    /// tiles (the church-256 swap's from 32 px at batch 1, not its 16-px 512-channel ones).
    #[test]
    fn winograd_takes_the_large_stride_1_3x3_convolutions() {
        let applies =
            |shape, co, k, s, p| winograd_applies(&ConvGeom::new(shape, co, k, s, p).unwrap());
        assert!(applies([1, 512, 32, 32], 512, 3, 1, 1));
        assert!(applies([1, 128, 256, 256], 128, 3, 1, 1));
        assert!(applies([1, 32, 258, 258], 32, 3, 1, 0));
        assert!(applies([8, 512, 16, 16], 512, 3, 1, 1));
        assert!(!applies([1, 512, 16, 16], 512, 3, 1, 1));
        assert!(!applies([8, 32, 16, 16], 32, 3, 1, 1));
        assert!(!applies([1, 16, 256, 256], 16, 3, 1, 1));
        assert!(!applies([1, 512, 66, 66], 512, 3, 2, 0));
        assert!(!applies([1, 512, 64, 64], 512, 1, 1, 0));
        // Planes under 64 px: only from 256 channels both ways (the 128-px config's
        // discriminators at 16 px and 128 channels, its patch discriminator at 8 and 16 px).
        assert!(applies([6, 64, 64, 64], 64, 3, 1, 1));
        assert!(!applies([10, 128, 16, 16], 128, 3, 1, 1));
        assert!(!applies([96, 64, 8, 8], 64, 3, 1, 1));
        assert!(!applies([96, 32, 16, 16], 32, 3, 1, 1));
        assert!(applies([4, 256, 32, 32], 256, 3, 1, 1));
        let transposed = |shape, co, k, s, p| {
            transpose_winograd_applies(&ConvGeom::new(shape, co, k, s, p).unwrap())
        };
        // The upsampling of G, as the input gradient of a stride-2 convolution of its output.
        assert!(transposed([1, 256, 129, 129], 512, 3, 2, 0));
        assert!(transposed([1, 128, 257, 257], 256, 3, 2, 0));
        assert!(!transposed([1, 512, 65, 65], 512, 3, 2, 0));
        assert!(!transposed([4, 64, 65, 65], 128, 3, 2, 0));
        assert!(!transposed([1, 256, 129, 129], 512, 3, 1, 0));
    }

    /// Which convolutions run as one dense GEMM, and that they agree with the direct path
    /// (within the unit tests' 1e-5 of the largest value: the same products, other sums), on
    /// one thread and on many; `check_every_geometry` holds them to the definition.
    #[test]
    fn dense_planes_agree_with_the_direct_path() {
        let geom = |shape, co, k, s, p| ConvGeom::new(shape, co, k, s, p).unwrap();
        // The quickstart's patch discriminator: 4×4 to 2×2, at its batches of 64 and 192.
        assert!(dense_plane_applies(&geom([192, 64, 4, 4], 32, 3, 1, 0)));
        assert!(dense_plane_applies(&geom([64, 64, 4, 4], 32, 3, 1, 0)));
        // Not: a 4×4 output plane, a small batch, a matrix over DENSE_PLANE_MAX, an input
        // plane over twice the taps.
        assert!(!dense_plane_applies(&geom([192, 32, 4, 4], 64, 3, 1, 1)));
        assert!(!dense_plane_applies(&geom([8, 64, 4, 4], 32, 3, 1, 0)));
        assert!(!dense_plane_applies(&geom([64, 512, 4, 4], 512, 3, 1, 0)));
        assert!(!dense_plane_applies(&geom([64, 8, 5, 5], 8, 3, 2, 0)));
        on_one_and_many_threads(|| {
            for g in [
                geom([33, 5, 4, 4], 3, 3, 1, 0),
                geom([40, 3, 3, 3], 4, 3, 2, 1),
            ] {
                assert!(dense_plane_applies(&g));
                let x = values(g.b * g.ci * g.h * g.w, 4);
                let w = values(g.co * g.kk(), 5);
                let gr = values(g.b * g.co * g.ho * g.wo, 6);
                let (dense, direct) = as_built_and_direct(|| passes(&x, &w, &gr, &g));
                for (name, (a, b)) in ["forward", "input grad", "weight grad"]
                    .iter()
                    .zip(dense.iter().zip(&direct))
                {
                    close(a, b, &format!("{name} {g:?}"));
                }
            }
        });
    }

    #[test]
    fn the_winograd_switch_reads_its_values() {
        use std::ffi::OsStr;
        assert!(winograd_setting(None));
        for off in ["0", "off", "FALSE", " no "] {
            assert!(!winograd_setting(Some(OsStr::new(off))), "{off}");
        }
        for on in ["", "1", "On", "true", "yes", "2", "maybe"] {
            assert!(winograd_setting(Some(OsStr::new(on))), "{on}");
        }
    }

    /// The lent buffers: at least the lengths asked for, distinct within a call and in a
    /// nested call, the same memory again on the next call, and no more than `MAX_SPARE` kept.
    #[test]
    fn spare_buffers_are_lent_reused_and_bounded() {
        let (outer, inner) = with_spare([100, 7], |[a, b]| {
            assert!(a.len() >= 100 && b.len() >= 7);
            assert_ne!(a.as_ptr(), b.as_ptr());
            a[99] = 5.0;
            let inner = with_spare([3, 3, 3, 3, 3], |bufs| {
                assert!(bufs.iter().all(|v| v.len() >= 3));
                assert!(bufs.iter().all(|v| v.as_ptr() != a.as_ptr()));
                bufs[0].as_ptr()
            });
            (a.as_ptr(), inner)
        });
        assert_ne!(outer, inner);
        with_spare([100], |[a]| {
            assert_eq!(a.as_ptr(), outer, "the first buffer keeps its role");
            assert_eq!(a[99], 5.0, "contents are left as they were");
        });
        assert!(SPARE.with(|s| s.borrow().len()) <= MAX_SPARE);
    }

    /// The pool versions of two loops give the same bits as the loops.
    #[test]
    fn partial_sums_and_zeros_on_the_pool_match_the_loops() {
        let size = 3 * CHUNK + 5;
        let partial: Vec<Vec<f32>> = (0..5).map(|i| values(size, 10 + i)).collect();
        let mut want = partial[0].clone();
        for p in &partial[1..] {
            want.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        let got = sum_in_order(partial, size);
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        assert_eq!(sum_in_order(Vec::new(), 4), [0.0; 4]);
        assert!(zeros_on_pool(size).iter().all(|v| v.to_bits() == 0));
        assert!(zeros_on_pool(0).is_empty());
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
