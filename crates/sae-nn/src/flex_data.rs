//! Flex tensors as plain `f32` slices, for our kernels (`conv_op`, `act_op`, `resample_op`, and
//! `sae-train`'s Adam step). Not a public API.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Shape, TensorData};

/// `t` as a contiguous `f32` tensor (a copy only for a strided view); `None` for other dtypes,
/// which take Burn's ops instead.
pub fn contiguous_f32(t: &FlexTensor) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let t = t.to_contiguous();
    t.layout().contiguous_offsets().map(|_| t)
}

/// The elements of a tensor from [`contiguous_f32`] in row-major order (from its start offset:
/// a contiguous view may begin inside a larger buffer).
pub fn values(t: &FlexTensor) -> &[f32] {
    let (a, b) = t
        .layout()
        .contiguous_offsets()
        .expect("contiguous_f32 made it contiguous");
    &t.storage::<f32>()[a..b]
}

/// A tensor that owns `values` (no copy).
pub fn from_values(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Elements per parallel task of our element-wise kernels: below this a task is not worth a
/// hand-off to rayon.
pub const CHUNK: usize = 16 * 1024;

/// Planes per parallel task for planes of `plane` elements: about [`CHUNK`] elements, at least
/// one plane.
pub fn planes_per_task(plane: usize) -> usize {
    CHUNK.div_ceil(plane.max(1)).max(1)
}
