//! Everything that stops a run.

use std::path::{Path, PathBuf};

use sae_data::DataError;
use sae_model::atomic::WriteError;
use sae_model::native::NativeError;

use crate::adam::AdamStateError;
use crate::losses::LossError;

/// Everything that stops a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An option is invalid; `option` names it as the command line spells it.
    #[error("{option}: {problem}")]
    Option {
        /// The flag or field, e.g. `--batch`.
        option: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The data could not be opened or read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A step refused its batch.
    #[error(transparent)]
    Loss(#[from] LossError),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] NativeError),
    /// A checkpoint's optimizer state does not fit the model.
    #[error("{}: {source}", path.display())]
    OptimizerState {
        /// The checkpoint.
        path: PathBuf,
        /// What is wrong.
        source: AdamStateError,
    },
    /// A checkpoint or options file is not what this version writes.
    #[error("{}: {problem}", path.display())]
    BadRunFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A loss became NaN or infinite; the step was not applied.
    #[error(
        "loss term {term} is {value} at optimizer call {call} ({images} images seen); the update was not applied, the last checkpoint is the last good state"
    )]
    NonFinite {
        /// The official name of the term.
        term: String,
        /// Its value.
        value: f32,
        /// The optimizer call (1-based) that produced it.
        call: u64,
        /// Images seen before the call.
        images: u64,
    },
    /// A run directory problem (exists without `--resume`, or has no checkpoint to resume).
    #[error("{}: {problem}", dir.display())]
    RunDir {
        /// The run directory.
        dir: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The file system said no.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An output path holds something other than a regular file.
    #[error(transparent)]
    Write(WriteError),
}

impl From<WriteError> for TrainError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Io { path, source } => TrainError::Io { path, source },
            other => TrainError::Write(other),
        }
    }
}

/// Wraps an I/O error with the path it concerns.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}
