//! Bounded file input ([`read_bounded`]) and atomic file output. Every file this workspace
//! writes (checkpoints, images, code files, run
//! options, converted datasets) goes through [`write_atomic_with`], so a reader never sees a
//! half-written file and a crash leaves either the old file or the new one.
//!
//! The bytes go to a temporary sibling (same directory, so the final `rename` is atomic), are
//! flushed and synced, then renamed over the target. Only a **regular file or a new path** is
//! ever replaced: a device node (`/dev/null`, `/dev/full`), a FIFO, a socket, a directory or a
//! symlink at the target path is refused with [`WriteError::NotRegularFile`], because renaming
//! over it would silently replace it with a regular file. A symlinked *parent folder* is
//! followed like any other folder.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

/// A file that could not be written.
#[derive(Debug, Error)]
pub enum WriteError {
    /// The file system said no.
    #[error("{}: {source}", path.display())]
    Io {
        /// The target path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Something other than a regular file is at the target path.
    #[error(
        "{}: is a {kind}, not a regular file; outputs only replace regular files (choose \
         another path)",
        path.display()
    )]
    NotRegularFile {
        /// The target path.
        path: PathBuf,
        /// What is there: `directory`, `symlink`, `FIFO`, `device`, `socket`.
        kind: &'static str,
    },
    /// The path names no file (it ends in `..` or is a root).
    #[error("{}: names no file", path.display())]
    NoFileName {
        /// The target path.
        path: PathBuf,
    },
}

/// The most bytes read from an input that is not a regular file (a FIFO, a device): its size
/// is unknown in advance, so `/dev/zero` must not fill the memory.
pub const MAX_STREAM_BYTES: u64 = 256 << 20;

/// Reads an input file whole, refusing more than `max_bytes` (and more than
/// [`MAX_STREAM_BYTES`] from anything that is not a regular file) before allocating it.
///
/// # Errors
/// An I/O error naming the limit (`InvalidData`) when the input is larger.
pub fn read_bounded(path: &Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is a directory",
        ));
    }
    let limit = if meta.is_file() {
        max_bytes
    } else {
        max_bytes.min(MAX_STREAM_BYTES)
    };
    if meta.is_file() && meta.len() > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("holds {} bytes, more than the {limit} allowed", meta.len()),
        ));
    }
    let mut out = Vec::new();
    file.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("holds more than the {limit} bytes allowed"),
        ));
    }
    Ok(out)
}

/// A temporary path next to `path` (same directory, so a rename over `path` is atomic):
/// `.NAME.tmp-PID-N`. The pid keeps processes apart, the per-process counter concurrent writers
/// in one process; a leftover never matches a name a reader looks for, and
/// [`is_temp_name`] recognises it for clean-up.
pub fn temp_sibling(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Whether a file name is one [`temp_sibling`] makes (a write that never finished).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".tmp-")
            .is_some_and(|(_, rest)| rest.split('-').all(|p| p.parse::<u64>().is_ok()))
}

/// Refuses a target that is neither absent nor a regular file (see the module docs).
///
/// # Errors
/// [`WriteError::NotRegularFile`], [`WriteError::NoFileName`], or [`WriteError::Io`] when the
/// path cannot be inspected.
pub fn check_target(path: &Path) -> Result<(), WriteError> {
    if path.file_name().is_none() {
        return Err(WriteError::NoFileName {
            path: path.to_path_buf(),
        });
    }
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(WriteError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(());
    }
    let kind = if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symlink"
    } else {
        special_kind(&ft)
    };
    Err(WriteError::NotRegularFile {
        path: path.to_path_buf(),
        kind,
    })
}

#[cfg(unix)]
fn special_kind(ft: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &fs::FileType) -> &'static str {
    "special file"
}

/// Writes `path` atomically through `write`, which fills the temporary file (it may seek).
/// The file is synced before the rename; on any error the temporary file is removed and the
/// target is untouched.
///
/// # Errors
/// `write`'s own error, or a [`WriteError`] (converted into `E`) for the target check, the
/// temporary file, the sync or the rename.
pub fn write_atomic_with<T, E: From<WriteError>>(
    path: &Path,
    write: impl FnOnce(&mut File) -> Result<T, E>,
) -> Result<T, E> {
    check_target(path)?;
    let tmp = temp_sibling(path);
    let io = |source| WriteError::Io {
        path: path.to_path_buf(),
        source,
    };
    let result = (|| {
        let mut file = File::create(&tmp).map_err(io)?;
        let value = write(&mut file)?;
        file.flush().map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        // Checked again right before the rename: the target may have appeared meanwhile.
        check_target(path)?;
        fs::rename(&tmp, path).map_err(io)?;
        Ok(value)
    })();
    if result.is_err() {
        // Best effort: the original error matters more than a failed clean-up.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically (see [`write_atomic_with`]).
///
/// # Errors
/// A [`WriteError`] naming `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_with(path, |f| {
        f.write_all(bytes).map_err(|source| WriteError::Io {
            path: path.to_path_buf(),
            source,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sae-atomic-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn replaces_a_regular_file_and_creates_a_new_one() {
        let dir = scratch("regular");
        let p = dir.join("a.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind");
    }

    #[cfg(unix)]
    #[test]
    fn refuses_devices_fifos_symlinks_and_directories() {
        use std::os::unix::fs::FileTypeExt;
        let dir = scratch("special");
        let err = write_atomic(Path::new("/dev/null"), b"x").unwrap_err();
        assert!(
            matches!(err, WriteError::NotRegularFile { kind: "device", .. }),
            "{err}"
        );
        assert!(
            fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
        let fifo = dir.join("fifo");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status();
        if status.is_ok_and(|s| s.success()) {
            let err = write_atomic(&fifo, b"x").unwrap_err();
            assert!(matches!(
                err,
                WriteError::NotRegularFile { kind: "FIFO", .. }
            ));
        }
        let target = dir.join("target");
        fs::write(&target, b"keep").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = write_atomic(&link, b"x").unwrap_err();
        assert!(matches!(
            err,
            WriteError::NotRegularFile {
                kind: "symlink",
                ..
            }
        ));
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        let err = write_atomic(&dir, b"x").unwrap_err();
        assert!(matches!(
            err,
            WriteError::NotRegularFile {
                kind: "directory",
                ..
            }
        ));
        // A symlinked folder is followed.
        let real = dir.join("real");
        fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.join("alias")).unwrap();
        write_atomic(&dir.join("alias/out.bin"), b"y").unwrap();
        assert_eq!(fs::read(real.join("out.bin")).unwrap(), b"y");
    }

    #[test]
    fn temp_names_are_recognised() {
        let t = temp_sibling(Path::new("/x/checkpoint-1.safetensors"));
        assert!(is_temp_name(&t.file_name().unwrap().to_string_lossy()));
        assert!(!is_temp_name("checkpoint-1.safetensors"));
        assert!(!is_temp_name(".hidden"));
    }
}
