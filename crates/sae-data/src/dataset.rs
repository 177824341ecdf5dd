//! The [`Dataset`] interface, image folders and the choice of layout from a path.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sae_model::image_io::{RgbImage, decode_rgb};

use super::DataError;

/// The file extensions taken as images, compared case-insensitively.
///
/// The official list (`data/image_folder.py`: jpg, jpeg, png, ppm, bmp, tif, tiff, webp). The
/// official check is case-sensitive and misses e.g. `.Jpg` and `.WEBP`; ignoring case lists
/// those too. TIFF files are listed, as officially, but there is no TIFF decoder in this
/// build (it would rebuild Burn, see `Cargo.toml`): they are skipped with a clear reason.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "ppm", "bmp", "tif", "tiff", "webp"];

/// The largest encoded image that is read into memory, 512 MiB.
///
/// A 1024² FFHQ PNG is about 1.5 MB; the limit only stops a corrupt size field or a
/// mislabelled huge file from exhausting memory.
pub const MAX_ENCODED_BYTES: u64 = 512 << 20;

/// A collection of encoded images addressed by index, shared by the loader's worker threads.
///
/// Implementations list their images once when opened (not per epoch) and read one image per
/// call, so memory holds the key list but never the data.
pub trait Dataset: Send + Sync {
    /// The number of images.
    fn len(&self) -> usize;

    /// Whether the dataset holds no image (the openers refuse such datasets).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key of image `index`: its path relative to the folder (`/`-separated), its entry
    /// name in the zip archive, or its LMDB key. `index` must be below [`Dataset::len`].
    fn key(&self, index: usize) -> String;

    /// The encoded bytes (PNG, JPEG, WebP, ...) of image `index`.
    ///
    /// # Errors
    ///
    /// [`DataError::Io`] or [`DataError::Read`] if the bytes cannot be read.
    fn read(&self, index: usize) -> Result<Vec<u8>, DataError>;

    /// Whether the encoded images hold blue, green, red in their red, green, blue channels.
    ///
    /// True for LMDBs written by the official `data/dataset_tools.py` (which `cv2.imencode`s
    /// RGB arrays); [`Dataset::decode`] swaps the channels back. False for every other layout.
    fn swaps_red_blue(&self) -> bool {
        false
    }

    /// The name that decode errors give for image `index`: by default its key; the file
    /// layouts give the full path (`folder/a/b.png`, `archive.zip/entry.png`, `lmdb/key`).
    fn display_name(&self, index: usize) -> PathBuf {
        PathBuf::from(self.key(index))
    }

    /// Image `index` as 8-bit RGB, as `PIL.Image.open(..).convert('RGB')` gives it (through
    /// [`sae_model::image_io::decode_rgb`]), with the red/blue swap of
    /// [`Dataset::swaps_red_blue`] undone.
    ///
    /// # Errors
    ///
    /// Those of [`Dataset::read`], and [`DataError::Image`] if the bytes do not decode.
    fn decode(&self, index: usize) -> Result<RgbImage, DataError> {
        let bytes = self.read(index)?;
        let mut img = decode_rgb(&bytes, &self.display_name(index))?;
        if self.swaps_red_blue() {
            for px in img.pixels_mut() {
                px.0.swap(0, 2);
            }
        }
        Ok(img)
    }

    /// A short description for messages: the dataset's path, or what generates it.
    fn describe(&self) -> String {
        format!("dataset of {} images", self.len())
    }
}

/// Whether a file or entry name has one of the [`IMAGE_EXTENSIONS`] (any case).
pub(crate) fn has_image_extension(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(_, ext)| {
        IMAGE_EXTENSIONS
            .iter()
            .any(|known| ext.eq_ignore_ascii_case(known))
    })
}

/// Reads a whole file, refusing files larger than [`MAX_ENCODED_BYTES`].
pub(crate) fn read_file_capped(path: &Path) -> Result<Vec<u8>, DataError> {
    let io_err = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    if len > MAX_ENCODED_BYTES {
        return Err(DataError::Read {
            container: path.parent().unwrap_or(path).to_path_buf(),
            key: path.display().to_string(),
            reason: format!(
                "the file holds {len} bytes, more than the {MAX_ENCODED_BYTES} allowed"
            ),
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take` guards against a file that grows between the size check and the read.
    file.take(MAX_ENCODED_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    Ok(bytes)
}

/// A folder of images, listed recursively and sorted, as the official `imagefolder` dataset
/// (`data/image_folder.py::make_dataset`, then `sorted`).
///
/// Symbolic links are followed, as `os.walk(followlinks=True)` does, but a link back to a
/// folder already being walked is skipped instead of looping forever. Keys are the paths
/// relative to the root, `/`-separated, sorted as strings (the official code sorts the full
/// paths, which gives the same order). Hidden files are not special.
#[derive(Debug)]
pub struct ImageFolder {
    root: PathBuf,
    files: Vec<PathBuf>,
}

impl ImageFolder {
    /// Lists the images under `root`.
    ///
    /// # Errors
    ///
    /// [`DataError::NotFound`] if `root` does not exist, [`DataError::Io`] if a folder cannot
    /// be listed, [`DataError::Empty`] if no image is found.
    pub fn open(root: &Path) -> Result<Self, DataError> {
        if !root.exists() {
            return Err(DataError::NotFound {
                path: root.to_path_buf(),
            });
        }
        let mut files = Vec::new();
        let mut ancestors = HashSet::new();
        walk(root, Path::new(""), &mut ancestors, &mut files)?;
        if files.is_empty() {
            return Err(DataError::Empty {
                path: root.to_path_buf(),
            });
        }
        // Sort by the `/`-joined key string: the official code sorts path strings, and
        // `Path`'s own (component-wise) order would differ for names such as `a-b` vs `a/b`.
        let mut keyed: Vec<(String, PathBuf)> =
            files.into_iter().map(|p| (path_key(&p), p)).collect();
        keyed.sort();
        Ok(Self {
            root: root.to_path_buf(),
            files: keyed.into_iter().map(|(_, p)| p).collect(),
        })
    }

    /// The folder's path.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The key of a relative path: its components joined with `/`.
fn path_key(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Appends the image files below `root/rel` (paths relative to `root`).
///
/// `ancestors` holds the canonical paths of the folders on the current walk, so that a
/// symbolic link to one of them is not followed again.
fn walk(
    root: &Path,
    rel: &Path,
    ancestors: &mut HashSet<PathBuf>,
    files: &mut Vec<PathBuf>,
) -> Result<(), DataError> {
    let dir = root.join(rel);
    let io_err = |source| DataError::Io {
        path: dir.clone(),
        source,
    };
    let canonical = fs::canonicalize(&dir).map_err(io_err)?;
    if !ancestors.insert(canonical.clone()) {
        return Ok(());
    }
    for entry in fs::read_dir(&dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let child = rel.join(entry.file_name());
        // `fs::metadata` follows links; a dangling link is not an image and is ignored.
        let Ok(meta) = fs::metadata(root.join(&child)) else {
            continue;
        };
        if meta.is_dir() {
            walk(root, &child, ancestors, files)?;
        } else if meta.is_file() && has_image_extension(&entry.file_name().to_string_lossy()) {
            files.push(child);
        }
    }
    ancestors.remove(&canonical);
    Ok(())
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn key(&self, index: usize) -> String {
        path_key(&self.files[index])
    }

    fn read(&self, index: usize) -> Result<Vec<u8>, DataError> {
        read_file_capped(&self.root.join(&self.files[index]))
    }

    fn display_name(&self, index: usize) -> PathBuf {
        self.root.join(&self.files[index])
    }

    fn describe(&self) -> String {
        format!("image folder {}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_ignore_case_and_need_a_dot() {
        for name in [
            "a.png", "b.JPG", "c.Jpeg", "d.webp", "e.WEBP", "f.bmp", "x.y.ppm",
        ] {
            assert!(has_image_extension(name), "{name}");
        }
        for name in ["png", "a.txt", "a.png.txt", "a.", "a.gif"] {
            assert!(!has_image_extension(name), "{name}");
        }
    }

    #[test]
    fn keys_sort_as_strings() {
        let mut keys = vec![
            path_key(Path::new("a/b.png")),
            path_key(Path::new("a-c.png")),
        ];
        keys.sort();
        assert_eq!(keys, ["a-c.png", "a/b.png"]);
    }
}
