//! The training data pipeline (official `data/`): datasets, the training transform and a
//! multi-threaded, resumable, deterministic loader.
//!
//! - [`Dataset`] is one interface over the storage layouts of the official code:
//!   image folders ([`ImageFolder`], `data/image_folder.py`), zip archives read in place
//!   ([`ZipDataset`], e.g. the FFHQ zip of stored PNGs), LSUN's LMDB databases
//!   (`LmdbDataset`, feature `lmdb`) and a generated toy set ([`SyntheticShapes`]).
//!   [`open_dataset`] picks the layout from the path.
//! - [`TrainTransform`] is `data/base_dataset.py::get_transform` in the training phase: the
//!   `preprocess` resize, random or centre crop, `make_power_2(16)`, random horizontal flip and
//!   `[-1, 1]` normalisation, with PIL-exact bicubic resampling from
//!   [`sae_model::image_io`].
//! - [`Loader`] decodes and transforms on worker threads into `[B, 3, H, W]` batches. Its
//!   output depends only on the dataset, the seed and the [`LoaderState`] it starts from, not
//!   on the number of workers or their scheduling, so a run resumed from a saved state sees
//!   exactly the batches an uninterrupted run would have seen.
//!
//! Images are addressed by a string key (the path inside the folder or archive, or the LMDB
//! key), which every error and skip report names.

mod dataset;
mod error;
#[cfg(feature = "lmdb")]
mod lmdb;
mod loader;
mod open;
mod pca;
mod synthetic;
mod transform;
mod zip;

pub use dataset::{Dataset, IMAGE_EXTENSIONS, ImageFolder, MAX_ENCODED_BYTES};
pub use error::DataError;
#[cfg(feature = "lmdb")]
pub use lmdb::{KEY_CACHE_FILE, LmdbDataset};
pub use loader::{Batch, Loader, LoaderConfig, LoaderState, sample_seed};
pub use open::open_dataset;
pub use pca::{DatasetPca, DatasetPcaError, DatasetPcaOptions, dataset_pca};
pub use sae_model::image_io::ResizeMode;
pub use synthetic::{
    DISTINCT_COLOURS, SwapScore, SyntheticShapes, SyntheticStyle, write_synthetic_folder,
};
pub use transform::{Augment, CropMode, Preprocessing, TrainTransform};
pub use zip::{ZipDataset, convert_to_zip};
