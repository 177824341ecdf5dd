//! Zip archives read in place, and conversion of any dataset to a zip.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::ImageFormat;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use super::DataError;
use super::dataset::{Dataset, MAX_ENCODED_BYTES, has_image_extension};

/// A read-only file shared by clones, each clone with its own position.
///
/// Reads are positional (`pread`), so the worker threads read entries concurrently through
/// one open file without a lock and without sharing a cursor. Cloning a `ZipArchive` over it
/// is cheap (the parsed central directory is behind an `Arc`).
#[derive(Clone, Debug)]
struct SharedFile {
    file: Arc<File>,
    len: u64,
    pos: u64,
}

impl Read for SharedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = read_at(&self.file, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SharedFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        Ok(self.pos)
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    // `seek_read` also moves the handle's cursor, which nothing here relies on.
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

/// A zip archive of images, read without extracting it.
///
/// The central directory is parsed once when the archive is opened; each read then inflates
/// (or, for the stored PNGs of the FFHQ zip, copies) one entry. Entries whose names have one
/// of the [`IMAGE_EXTENSIONS`](super::IMAGE_EXTENSIONS) are the images, sorted by name;
/// folders and other files are ignored. Stored and deflated entries are supported.
#[derive(Debug)]
pub struct ZipDataset {
    path: PathBuf,
    archive: ZipArchive<SharedFile>,
    /// Archive index and name of each image entry, sorted by name.
    entries: Vec<(usize, String)>,
}

impl ZipDataset {
    /// Opens `path` and lists its image entries.
    ///
    /// # Errors
    ///
    /// [`DataError::NotFound`] / [`DataError::Io`] if the file cannot be opened,
    /// [`DataError::Zip`] if it is not a readable zip archive, [`DataError::Empty`] if it
    /// holds no image entry.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => DataError::NotFound {
                path: path.to_path_buf(),
            },
            _ => DataError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let len = file
            .metadata()
            .map_err(|source| DataError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        let reader = SharedFile {
            file: Arc::new(file),
            len,
            pos: 0,
        };
        let archive = ZipArchive::new(reader).map_err(|e| DataError::Zip {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut entries = Vec::new();
        for i in 0..archive.len() {
            let entry = archive.by_index_data(i).map_err(|e| DataError::Zip {
                path: path.to_path_buf(),
                reason: format!("entry {i}: {e}"),
            })?;
            if entry.is_dir() {
                continue;
            }
            // A name that is not valid text cannot be an image name we recognise.
            let Ok(name) = entry.name() else { continue };
            if has_image_extension(&name) {
                entries.push((i, name.into_owned()));
            }
        }
        if entries.is_empty() {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
            });
        }
        entries.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(Self {
            path: path.to_path_buf(),
            archive,
            entries,
        })
    }

    /// The archive's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Dataset for ZipDataset {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn key(&self, index: usize) -> String {
        self.entries[index].1.clone()
    }

    fn read(&self, index: usize) -> Result<Vec<u8>, DataError> {
        let (archive_index, name) = &self.entries[index];
        let read_err = |reason: String| DataError::Read {
            container: self.path.clone(),
            key: name.clone(),
            reason,
        };
        // A private clone: its own read position over the shared file, no lock.
        let mut archive = self.archive.clone();
        let mut entry = archive
            .by_index(*archive_index)
            .map_err(|e| read_err(e.to_string()))?;
        let size = entry.size();
        if size > MAX_ENCODED_BYTES {
            return Err(read_err(format!(
                "the entry holds {size} bytes, more than the {MAX_ENCODED_BYTES} allowed"
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        // The zip reader checks the CRC at the end of the entry, so a damaged stored entry is
        // reported here rather than handed to the decoder.
        (&mut entry)
            .take(MAX_ENCODED_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| read_err(e.to_string()))?;
        Ok(bytes)
    }

    fn display_name(&self, index: usize) -> PathBuf {
        self.path.join(&self.entries[index].1)
    }

    fn describe(&self) -> String {
        format!("zip archive {}", self.path.display())
    }
}

/// Writes every image of `src` into a new zip archive at `out`, and returns how many it wrote.
///
/// - Entries are stored (not compressed: PNG, JPEG and WebP are compressed already) in the
///   dataset's order, with a fixed timestamp, so the same input gives the same archive.
/// - Each entry is named after its key, sanitised to a relative path of `[A-Za-z0-9._-]`
///   components (other characters become `_`, `.`/`..`/empty components are dropped), with
///   the extension of the format sniffed from the bytes appended when the key lacks it (LSUN
///   keys have none); a name already taken gets a `_<n>` suffix.
/// - Entries whose bytes are not a recognisable image are skipped with a warning on stderr.
/// - A dataset that stores red/blue swapped ([`Dataset::swaps_red_blue`]) is decoded and
///   re-encoded as PNG in true RGB, so the archive reads correctly anywhere.
/// - The archive is written to a temporary file next to `out` and renamed over it at the end:
///   an interrupted conversion never leaves a truncated `out`.
///
/// # Errors
///
/// [`DataError::Io`] / [`DataError::Zip`] if the archive cannot be written,
/// [`DataError::Empty`] if no entry could be written, and the read errors of `src`
/// (a conversion does not silently drop unreadable data).
pub fn convert_to_zip(src: &dyn Dataset, out: &Path) -> Result<usize, DataError> {
    sae_model::atomic::write_atomic_with(out, |file| write_zip(src, file, out))
}

/// The body of [`convert_to_zip`]: writes the archive into `file` (errors name `out`).
fn write_zip(src: &dyn Dataset, file: &mut File, out: &Path) -> Result<usize, DataError> {
    let io_err = |source| DataError::Io {
        path: out.to_path_buf(),
        source,
    };
    let zip_err = |e: zip::result::ZipError| DataError::Zip {
        path: out.to_path_buf(),
        reason: e.to_string(),
    };
    let mut zip = ZipWriter::new(BufWriter::new(file));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default())
        // Zip64 headers per entry only matter for entries over 4 GiB, which MAX_ENCODED_BYTES
        // rules out; the archive itself switches to zip64 when it grows past the limits.
        .large_file(false);
    let mut taken = HashSet::new();
    let mut count = 0;
    for index in 0..src.len() {
        let key = src.key(index);
        let mut bytes = src.read(index)?;
        let Some(format) = image::guess_format(&bytes).ok() else {
            eprintln!("warning: convert: skipping {key}: not a recognisable image");
            continue;
        };
        let mut ext = format.extensions_str().first().copied().unwrap_or("img");
        if src.swaps_red_blue() {
            // `decode` undoes the swap; the bytes are read a second time, which only this
            // rare layout pays.
            bytes = sae_model::image_io::encode_png(&src.decode(index)?).map_err(|e| {
                DataError::Zip {
                    path: out.to_path_buf(),
                    reason: format!("cannot encode PNG: {e}"),
                }
            })?;
            ext = "png";
        }
        let name = unique_name(&entry_name(&key, ext, format), &mut taken);
        zip.start_file(name, options).map_err(zip_err)?;
        zip.write_all(&bytes).map_err(io_err)?;
        count += 1;
    }
    if count == 0 {
        return Err(DataError::Empty {
            path: out.to_path_buf(),
        });
    }
    // The atomic writer syncs the file before renaming it over `out`.
    zip.finish().map_err(zip_err)?.flush().map_err(io_err)?;
    Ok(count)
}

/// The sanitised entry name of `key`, with `ext` appended unless the key already ends in an
/// extension of `format`.
fn entry_name(key: &str, ext: &str, format: ImageFormat) -> String {
    let parts: Vec<String> = key
        .split(['/', '\\'])
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        .map(|c| {
            c.chars()
                .map(|ch| {
                    if ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-') {
                        ch
                    } else {
                        '_'
                    }
                })
                .collect()
        })
        .collect();
    let mut name = if parts.is_empty() {
        "image".to_string()
    } else {
        parts.join("/")
    };
    let has_ext = name.rsplit_once('.').is_some_and(|(_, e)| {
        format
            .extensions_str()
            .iter()
            .any(|known| e.eq_ignore_ascii_case(known))
    });
    if !has_ext {
        name.push('.');
        name.push_str(ext);
    }
    name
}

/// `name`, or `stem_<n>.ext` for the first free `n` if it is taken; records the result.
fn unique_name(name: &str, taken: &mut HashSet<String>) -> String {
    if taken.insert(name.to_string()) {
        return name.to_string();
    }
    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    for n in 1.. {
        let candidate = format!("{stem}_{n}.{ext}");
        if taken.insert(candidate.clone()) {
            return candidate;
        }
    }
    unreachable!("an unbounded counter always finds a free name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_sanitised_and_get_extensions() {
        assert_eq!(
            entry_name("0a1b2c", "webp", ImageFormat::WebP),
            "0a1b2c.webp"
        );
        assert_eq!(
            entry_name("../a b/./c.png", "png", ImageFormat::Png),
            "a_b/c.png"
        );
        assert_eq!(entry_name("x.JPEG", "jpg", ImageFormat::Jpeg), "x.JPEG");
        assert_eq!(entry_name("x.png", "jpg", ImageFormat::Jpeg), "x.png.jpg");
        assert_eq!(entry_name("//", "png", ImageFormat::Png), "image.png");
        let mut taken = HashSet::new();
        assert_eq!(unique_name("a.png", &mut taken), "a.png");
        assert_eq!(unique_name("a.png", &mut taken), "a_1.png");
        assert_eq!(unique_name("a.png", &mut taken), "a_2.png");
    }
}
