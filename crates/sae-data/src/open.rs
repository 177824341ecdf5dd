//! Opening a dataset by its layout (the one module that knows every layout, so the layouts
//! do not import each other).

use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::DataError;
use super::dataset::{Dataset, ImageFolder};
use super::zip::ZipDataset;

/// Opens the dataset at `path`, choosing the layout from what is there:
///
/// - a folder holding `data.mdb` is an LMDB database (LSUN's `<category>_<split>_lmdb`),
///   read by `LmdbDataset` (feature `lmdb`);
/// - a `.zip` file (any case) is a zip archive read in place by [`ZipDataset`];
/// - any other folder is an image folder, read recursively by [`ImageFolder`].
///
/// # Errors
///
/// [`DataError::NotFound`] if nothing is at `path`, [`DataError::Empty`] if it holds no
/// image, [`DataError::UnknownLayout`] for another kind of file,
/// [`DataError::LmdbDisabled`] for an LMDB without the `lmdb` feature, and the errors of the
/// chosen layout's opener.
pub fn open_dataset(path: &Path) -> Result<Arc<dyn Dataset>, DataError> {
    let meta = fs::metadata(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => DataError::NotFound {
            path: path.to_path_buf(),
        },
        _ => DataError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    if meta.is_dir() {
        if path.join("data.mdb").is_file() {
            return open_lmdb(path);
        }
        return Ok(Arc::new(ImageFolder::open(path)?));
    }
    let is_zip = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zip"));
    if meta.is_file() && is_zip {
        return Ok(Arc::new(ZipDataset::open(path)?));
    }
    Err(DataError::UnknownLayout {
        path: path.to_path_buf(),
    })
}

#[cfg(feature = "lmdb")]
fn open_lmdb(path: &Path) -> Result<Arc<dyn Dataset>, DataError> {
    Ok(Arc::new(super::lmdb::LmdbDataset::open(path)?))
}

#[cfg(not(feature = "lmdb"))]
fn open_lmdb(path: &Path) -> Result<Arc<dyn Dataset>, DataError> {
    Err(DataError::LmdbDisabled {
        path: path.to_path_buf(),
    })
}
