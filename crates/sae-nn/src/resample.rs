//! Resampling with PyTorch's `F.interpolate` semantics, built from ops that differentiate on
//! every backend.
//!
//! Burn's own bilinear `interpolate` has a backward only on Flex (it panics on ndarray, WGPU and
//! CUDA) and cannot be differentiated twice, so it never appears in a training path. Instead:
//! - the generator's ×2 skip upsampling is one backend operation (`resample_op`) whose
//!   composition elsewhere is an edge pad plus a depthwise transposed convolution with the
//!   `[1, 3, 3, 1]/4` kernel, exactly bilinear ×2 with `align_corners=False`;
//! - an arbitrary bilinear resize is two matmuls with separable interpolation matrices;
//! - nearest resizing is an index `select`.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::shape::check_nonempty;

/// Per output sample of 1-D linear interpolation with `align_corners=False`, as PyTorch
/// computes it: the two input samples and their weights `(i0, i1, 1 − l, l)`, from
/// `src = (dst + 0.5)·in/out − 0.5` clamped below at 0, the upper neighbour clamped to the last
/// sample.
pub(crate) fn linear_taps(in_len: usize, out_len: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = in_len as f32 / out_len as f32;
    (0..out_len)
        .map(|dst| {
            let src = ((dst as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src as usize).min(in_len - 1);
            let i1 = if i0 + 1 < in_len { i0 + 1 } else { i0 };
            let l1 = src - i0 as f32;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// Row-major `[out_len, in_len]` matrix of 1-D linear interpolation with `align_corners=False`
/// (the weights of [`linear_taps`]).
pub fn bilinear_matrix(in_len: usize, out_len: usize) -> Vec<f32> {
    let mut m = vec![0.0f32; out_len * in_len];
    for (dst, (i0, i1, l0, l1)) in linear_taps(in_len, out_len).into_iter().enumerate() {
        m[dst * in_len + i0] += l0;
        m[dst * in_len + i1] += l1;
    }
    m
}

fn matrix(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

/// Bilinear resize to `[h, w]` with `align_corners=False` (PyTorch's
/// `F.interpolate(x, size, mode="bilinear", align_corners=False)`), as
/// `A_h · x · A_wᵀ`.
///
/// # Shapes
/// - `x`: `[batch, channels, h_in, w_in]`; output: `[batch, channels, h, w]`
///
/// # Panics
/// If `x` or the target size has a zero-size dimension.
pub fn bilinear_resize(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    check_nonempty("bilinear_resize", "x", &x.dims());
    check_nonempty("bilinear_resize", "size", &size);
    let [_, _, h_in, w_in] = x.dims();
    let [h, w] = size;
    if [h_in, w_in] == size {
        return x;
    }
    let device = x.device();
    let a_w = matrix(bilinear_matrix(w_in, w), w, w_in, &device);
    let a_h = matrix(bilinear_matrix(h_in, h), h, h_in, &device);
    let x = x.matmul(a_w.transpose().unsqueeze::<4>());
    a_h.unsqueeze::<4>().matmul(x)
}

/// Bilinear ×2 upsampling with `align_corners=False` (the generator's skip path), differentiable
/// (once) on every backend.
///
/// With edge replication, `y[2i] = ¼x[i−1] + ¾x[i]` and `y[2i+1] = ¾x[i] + ¼x[i+1]`. One backend
/// operation (`resample_op`): on Flex a separable pass per plane forward and backward; elsewhere
/// a transposed convolution (stride 2) of the edge-padded input with the separable kernel
/// `[1, 3, 3, 1]/4`, cropped by 3.
///
/// # Shapes
/// - `x`: `[batch, channels, h, w]`; output: `[batch, channels, 2h, 2w]`
///
/// # Panics
/// If `x` has a zero-size dimension.
pub fn bilinear_up2(x: Tensor<4>) -> Tensor<4> {
    check_nonempty("bilinear_up2", "x", &x.dims());
    crate::resample_op::bilinear_up2(x)
}

/// Nearest-neighbour source indices of PyTorch's `mode="nearest"`: `floor(dst · in/out)` in
/// single precision, clamped to the last sample.
pub fn nearest_indices(in_len: usize, out_len: usize) -> Vec<i64> {
    let scale = in_len as f32 / out_len as f32;
    (0..out_len)
        .map(|dst| ((dst as f32 * scale).floor() as usize).min(in_len - 1) as i64)
        .collect()
}

/// Nearest resize to `[h, w]` (PyTorch's `F.interpolate(x, size, mode="nearest")`), as two index
/// selects.
///
/// # Shapes
/// - `x`: `[batch, channels, h_in, w_in]`; output: `[batch, channels, h, w]`
///
/// # Panics
/// If `x` or the target size has a zero-size dimension.
pub fn nearest_resize(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    check_nonempty("nearest_resize", "x", &x.dims());
    check_nonempty("nearest_resize", "size", &size);
    let [_, _, h_in, w_in] = x.dims();
    if [h_in, w_in] == size {
        return x;
    }
    let device = x.device();
    let index = |n_in, n_out| {
        Tensor::<1, Int>::from_data(
            TensorData::new(nearest_indices(n_in, n_out), [n_out]),
            &device,
        )
    };
    x.select(2, index(h_in, size[0]))
        .select(3, index(w_in, size[1]))
}
