//! Shape checks shared by the layers.
//!
//! A layer that gets a tensor it cannot handle panics with a message that names the layer, the
//! argument and both shapes (documented under `# Panics` on each `forward`). Shapes are a
//! programming contract inside a model; the data-facing crates turn bad user input into typed
//! errors before it reaches a layer.

/// Panics unless `dims` has `channels` channels (dim 1) and no zero-size dimension.
#[track_caller]
pub fn check_channels(layer: &str, arg: &str, dims: &[usize], channels: usize) {
    check_nonempty(layer, arg, dims);
    assert!(
        dims[1] == channels,
        "{layer}: `{arg}` must have {channels} channels (dim 1), got shape {dims:?}"
    );
}

/// Panics if any dimension of `dims` is zero.
#[track_caller]
pub fn check_nonempty(layer: &str, arg: &str, dims: &[usize]) {
    assert!(
        dims.iter().all(|&d| d > 0),
        "{layer}: `{arg}` has a zero-size dimension, shape {dims:?}"
    );
}

/// Panics unless the two batch sizes agree.
#[track_caller]
pub fn check_batch(layer: &str, x: &[usize], style: &[usize]) {
    assert!(
        x[0] == style[0],
        "{layer}: the style batch ({}) must equal the input batch ({}); shapes {style:?} and {x:?}",
        style[0],
        x[0]
    );
}
