//! The error type of the data pipeline.

use std::path::PathBuf;

use sae_model::atomic::WriteError;
use sae_model::image_io::ImageError;

/// Everything that can go wrong while opening a dataset, reading or transforming an image, or
/// loading batches.
///
/// Each message names the file, archive entry or key and the problem. Per-image errors
/// ([`DataError::Image`], [`DataError::Read`], [`DataError::TooSmall`], ...) are not fatal to
/// a [`Loader`](super::Loader): it skips that image and reports it in
/// [`Batch::skipped`](super::Batch::skipped).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The dataset path does not exist.
    #[error("dataset {} does not exist", path.display())]
    NotFound {
        /// The path that was asked for.
        path: PathBuf,
    },
    /// The dataset holds no image.
    #[error(
        "dataset {} holds no image (looked for the extensions {exts})",
        path.display(),
        exts = super::IMAGE_EXTENSIONS.join(", ")
    )]
    Empty {
        /// The dataset's path.
        path: PathBuf,
    },
    /// The path is neither a folder nor a `.zip` file.
    #[error(
        "dataset {} is neither a folder (of images, or an LMDB holding data.mdb) nor a .zip file",
        path.display()
    )]
    UnknownLayout {
        /// The dataset's path.
        path: PathBuf,
    },
    /// The folder is an LMDB database, but this build has no LMDB support.
    #[error(
        "dataset {} is an LMDB database (it holds data.mdb), but this build has no LMDB \
         support: rebuild with the `lmdb` feature, or convert it to a zip elsewhere",
        path.display()
    )]
    LmdbDisabled {
        /// The LMDB folder.
        path: PathBuf,
    },
    /// A file or folder could not be read or written.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes of one image could not be read from its container (a zip entry that fails
    /// its CRC or cannot be inflated, a missing LMDB value, an oversized entry).
    #[error("cannot read {key} from {}: {reason}", container.display())]
    Read {
        /// The zip archive or LMDB folder.
        container: PathBuf,
        /// The entry name or key.
        key: String,
        /// What went wrong.
        reason: String,
    },
    /// A zip archive could not be opened or written.
    #[error("zip archive {}: {reason}", path.display())]
    Zip {
        /// The archive.
        path: PathBuf,
        /// What the zip reader or writer reported.
        reason: String,
    },
    /// An LMDB database could not be opened or scanned.
    #[error("LMDB {}: {reason}", path.display())]
    Lmdb {
        /// The LMDB folder.
        path: PathBuf,
        /// What LMDB reported.
        reason: String,
    },
    /// An image could not be decoded (corrupt, truncated or not an image).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// An output path holds something other than a regular file (file-system failures are
    /// [`DataError::Io`]).
    #[error(transparent)]
    Write(WriteError),
    /// An image is too small for the transform: a resize to a zero side, or a random crop
    /// larger than the resized image (where `torchvision.RandomCrop` fails too).
    #[error(
        "image {key} ({width}x{height} after the preprocess resize) is too small for \
         {transform}: {problem}"
    )]
    TooSmall {
        /// The image's key.
        key: String,
        /// Width after the preprocess resize (or the decoded width if that resize fails).
        width: usize,
        /// Height after the preprocess resize (or the decoded height).
        height: usize,
        /// The transform, as `preprocess load/crop`.
        transform: String,
        /// What does not fit.
        problem: String,
    },
    /// Two images of one batch came out with different sizes (only possible without a crop,
    /// for images of different aspect ratios).
    #[error(
        "image {key} is {got_height}x{got_width} after the transform, but the batch holds \
         {height}x{width} images; use a crop (e.g. preprocess `resize_and_crop`) so every \
         image has the same size"
    )]
    SizeMismatch {
        /// The image that does not fit.
        key: String,
        /// The batch's height.
        height: usize,
        /// The batch's width.
        width: usize,
        /// The image's height.
        got_height: usize,
        /// The image's width.
        got_width: usize,
    },
    /// A `preprocess` string that the training transform does not understand.
    #[error("bad preprocess {value:?}: {reason}")]
    BadPreprocess {
        /// The string as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An invalid transform or loader setting.
    #[error("bad data configuration: {reason}")]
    BadConfig {
        /// What is wrong.
        reason: String,
    },
    /// A [`LoaderState`](super::LoaderState) that does not fit the dataset.
    #[error("bad loader state {state}: {reason}")]
    BadState {
        /// The state, formatted.
        state: String,
        /// What does not fit.
        reason: String,
    },
    /// A whole epoch gave fewer readable images than one batch needs, so no batch can ever
    /// be produced (for instance, every file is corrupt).
    #[error(
        "dataset {dataset}: epoch {epoch} gave only {readable} readable images of {total}, \
         fewer than the batch size {batch_size}; last failure: {last_failure}"
    )]
    TooFewImages {
        /// The dataset, described.
        dataset: String,
        /// The epoch that was scanned.
        epoch: u64,
        /// Images that were read and transformed successfully.
        readable: usize,
        /// Images in the dataset.
        total: usize,
        /// The configured batch size.
        batch_size: usize,
        /// The last skipped key and why.
        last_failure: String,
    },
    /// A loader worker thread stopped without sending its sample (it panicked outside the
    /// per-sample guard).
    #[error("data loader worker {worker} stopped unexpectedly")]
    WorkerStopped {
        /// The worker's number.
        worker: usize,
    },
}

impl From<WriteError> for DataError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Io { path, source } => DataError::Io { path, source },
            other => DataError::Write(other),
        }
    }
}
