//! The quickstart's data, shared by `quickstart` and `quickstart_sweep` so that the sweep
//! scores exactly the swaps the quickstart prints.

use sae::data::{DataError, SyntheticShapes, SyntheticStyle};

/// Training images.
pub const TRAIN_IMAGES: usize = 512;
/// Image side in pixels.
pub const SIZE: usize = 32;
const TRAIN_SEED: u64 = 2020;
/// The images of the grids and the scores: same generator, unseen structures and textures.
const HELD_OUT_SEED: u64 = 7;
/// Structures and textures of the quickstart's scores: structures `0..SCORED` with textures
/// `SCORED..2·SCORED` of [`held_out`] (the grids show the first four of each).
pub const SCORED: usize = 8;

/// The training images.
pub fn train_set() -> Result<SyntheticShapes, DataError> {
    Ok(SyntheticShapes::new(TRAIN_IMAGES, SIZE, TRAIN_SEED)?.with_style(SyntheticStyle::Flat))
}

/// `count` unseen images of the same generator (image `i` is the same whatever `count`).
pub fn held_out(count: usize) -> Result<SyntheticShapes, DataError> {
    Ok(SyntheticShapes::new(count, SIZE, HELD_OUT_SEED)?.with_style(SyntheticStyle::Flat))
}
