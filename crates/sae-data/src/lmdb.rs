//! LMDB databases in the LSUN layout (official `data/lmdb_dataset.py::LMDBDataset`), behind the
//! `lmdb` feature.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use heed::types::{Bytes, DecodeIgnore};
use heed::{Database, Env, EnvFlags, EnvOpenOptions, WithoutTls};

use super::DataError;
use super::dataset::{Dataset, MAX_ENCODED_BYTES};

/// The key cache file written into the LMDB folder.
///
/// The official code pickles its key list to `_cache_`; we use our own name and a plain
/// binary format so as not to clash with (or need to parse) that pickle.
pub const KEY_CACHE_FILE: &str = "_sae_keys_";

/// Magic bytes at the start of [`KEY_CACHE_FILE`], with the format version.
const CACHE_MAGIC: &[u8; 8] = b"SAEKEYS1";

/// An LMDB database of encoded images, as LSUN distributes them
/// (`<category>_<split>_lmdb/data.mdb`; key = image id, value = WebP bytes) or as the
/// official `data/dataset_tools.py` writes them (value = PNG).
///
/// - The database is opened read-only without the lock file (`lock=False`, as officially), so
///   the folder may be read-only; nothing may write to it while it is open.
/// - The keys are listed once, in LMDB's (byte-sorted) key order, and cached in
///   [`KEY_CACHE_FILE`] inside the folder when it is writable, so that a later open of a
///   3-million-image database skips the full scan. The cache is used only if it records the
///   current entry count and `data.mdb` size; otherwise it is rebuilt. When the folder is not
///   writable the keys just stay in memory. Keys are packed into one buffer (a few bytes of
///   overhead per key).
/// - Channel order follows the official loader: it decodes with OpenCV (BGR) and converts to
///   RGB only when `"lsun"` is in the path, which is right for both LSUN's WebPs (true RGB)
///   and `dataset_tools.py`'s PNGs (written from RGB arrays by `cv2.imencode`, so stored with
///   red and blue swapped). [`LmdbDataset::open`] applies the same rule;
///   [`LmdbDataset::open_with_channels`] states it explicitly.
pub struct LmdbDataset {
    path: PathBuf,
    env: Arc<Env<WithoutTls>>,
    db: Database<Bytes, Bytes>,
    /// All keys, concatenated.
    key_bytes: Vec<u8>,
    /// `key i` is `key_bytes[ends[i - 1]..ends[i]]` (0 for `ends[-1]`).
    ends: Vec<usize>,
    swaps_red_blue: bool,
}

impl std::fmt::Debug for LmdbDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmdbDataset")
            .field("path", &self.path)
            .field("len", &self.ends.len())
            .field("swaps_red_blue", &self.swaps_red_blue)
            .finish_non_exhaustive()
    }
}

impl LmdbDataset {
    /// Opens the LMDB folder `path` (holding `data.mdb`), with the official channel rule:
    /// the values are true RGB if `"lsun"` appears in the path (any case), red/blue swapped
    /// otherwise.
    ///
    /// # Errors
    ///
    /// As [`LmdbDataset::open_with_channels`].
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let lsun = path.to_string_lossy().to_lowercase().contains("lsun");
        Self::open_with_channels(path, !lsun)
    }

    /// Opens the LMDB folder `path`; `swaps_red_blue` says whether its encoded images hold
    /// blue, green, red in their red, green, blue channels (see [`Dataset::swaps_red_blue`]).
    ///
    /// # Errors
    ///
    /// [`DataError::NotFound`] if `path/data.mdb` does not exist, [`DataError::Lmdb`] if it
    /// cannot be opened or scanned, [`DataError::Empty`] if it holds no entry.
    pub fn open_with_channels(path: &Path, swaps_red_blue: bool) -> Result<Self, DataError> {
        let data = path.join("data.mdb");
        let data_len = fs::metadata(&data)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => DataError::NotFound { path: data.clone() },
                _ => DataError::Io {
                    path: data.clone(),
                    source,
                },
            })?
            .len();
        let lmdb_err = |e: heed::Error| DataError::Lmdb {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let env = shared_env(path)?;
        let rtxn = env.read_txn().map_err(lmdb_err)?;
        let db: Database<Bytes, Bytes> = env
            .open_database(&rtxn, None)
            .map_err(lmdb_err)?
            .ok_or_else(|| DataError::Lmdb {
                path: path.to_path_buf(),
                reason: "the database has no main table".to_string(),
            })?;
        let entries = db.len(&rtxn).map_err(lmdb_err)?;
        let cache = path.join(KEY_CACHE_FILE);
        let (key_bytes, ends) = match read_cache(&cache, entries, data_len) {
            Some(keys) => keys,
            None => {
                let mut key_bytes = Vec::new();
                let mut ends = Vec::with_capacity(entries as usize);
                // Values are not decoded (nor, for large values, touched) by the scan.
                for item in db
                    .remap_data_type::<DecodeIgnore>()
                    .iter(&rtxn)
                    .map_err(lmdb_err)?
                {
                    let (key, ()) = item.map_err(lmdb_err)?;
                    key_bytes.extend_from_slice(key);
                    ends.push(key_bytes.len());
                }
                // Best effort: a read-only folder just means the next open scans again.
                if let Err(e) = write_cache(&cache, data_len, &key_bytes, &ends) {
                    eprintln!(
                        "note: LMDB key cache {} not written ({e}); keys kept in memory",
                        cache.display()
                    );
                }
                (key_bytes, ends)
            }
        };
        // Committing a read transaction keeps the opened database handle valid for the
        // environment's later transactions (heed's documented requirement for read-only envs).
        rtxn.commit().map_err(lmdb_err)?;
        if ends.is_empty() {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            env,
            db,
            key_bytes,
            ends,
            swaps_red_blue,
        })
    }

    /// The raw bytes of key `index`.
    fn key_raw(&self, index: usize) -> &[u8] {
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        &self.key_bytes[start..self.ends[index]]
    }

    /// The LMDB folder's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The environments this process has open, by canonical path.
///
/// heed refuses to open one LMDB environment twice in a process, so datasets of the same
/// folder (a training and an evaluation loader, say) share one `Env`, which closes when the
/// last of them is dropped.
static OPEN_ENVS: Mutex<Vec<(PathBuf, Weak<Env<WithoutTls>>)>> = Mutex::new(Vec::new());

/// The process's read-only environment for the LMDB folder `path`, opened if needed.
fn shared_env(path: &Path) -> Result<Arc<Env<WithoutTls>>, DataError> {
    let lmdb_err = |e: heed::Error| DataError::Lmdb {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let canonical = fs::canonicalize(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // A poisoned lock only means a panic elsewhere; the list of weak handles is still valid.
    let mut envs = OPEN_ENVS.lock().unwrap_or_else(|p| p.into_inner());
    envs.retain(|(_, env)| env.strong_count() > 0);
    if let Some(env) = envs
        .iter()
        .find(|(p, _)| *p == canonical)
        .and_then(|(_, env)| env.upgrade())
    {
        return Ok(env);
    }
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    // SAFETY: NO_LOCK is unsafe only with concurrent writers, and this type never writes;
    // the documented contract (and the official loader's `lock=False`) is that nothing
    // writes the database while it is being read. READ_ONLY and NO_READ_AHEAD are safe.
    unsafe {
        options.flags(EnvFlags::READ_ONLY | EnvFlags::NO_LOCK | EnvFlags::NO_READ_AHEAD);
    }
    // An environment whose last handle is being dropped on another thread stays registered
    // in heed until its close finishes; wait briefly for that rather than fail.
    let mut tries = 0;
    let env = loop {
        // SAFETY: the memory map is only unsound if the file is modified while mapped,
        // which the read-only contract above excludes.
        match unsafe { options.open(&canonical) } {
            Err(heed::Error::EnvAlreadyOpened) if tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other.map_err(lmdb_err)?,
        }
    };
    let env = Arc::new(env);
    envs.push((canonical, Arc::downgrade(&env)));
    Ok(env)
}

/// Reads the key cache if it matches the database (same entry count and `data.mdb` size).
fn read_cache(cache: &Path, entries: u64, data_len: u64) -> Option<(Vec<u8>, Vec<usize>)> {
    let bytes = fs::read(cache).ok()?;
    let rest = bytes.strip_prefix(CACHE_MAGIC.as_slice())?;
    let word = |b: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
    };
    if word(rest, 0)? != entries || word(rest, 8)? != data_len {
        return None;
    }
    let mut at = 16;
    let mut key_bytes = Vec::new();
    let mut ends = Vec::with_capacity(usize::try_from(entries).ok()?);
    for _ in 0..entries {
        let len = u32::from_le_bytes(rest.get(at..at + 4)?.try_into().ok()?) as usize;
        key_bytes.extend_from_slice(rest.get(at + 4..at + 4 + len)?);
        ends.push(key_bytes.len());
        at += 4 + len;
    }
    (at == rest.len()).then_some((key_bytes, ends))
}

/// Writes the key cache atomically (temporary file, then rename).
fn write_cache(
    cache: &Path,
    data_len: u64,
    key_bytes: &[u8],
    ends: &[usize],
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(24 + key_bytes.len() + 4 * ends.len());
    out.extend_from_slice(CACHE_MAGIC);
    out.extend_from_slice(&(ends.len() as u64).to_le_bytes());
    out.extend_from_slice(&data_len.to_le_bytes());
    let mut start = 0;
    for &end in ends {
        let len = u32::try_from(end - start).map_err(std::io::Error::other)?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&key_bytes[start..end]);
        start = end;
    }
    let tmp = cache.with_extension(format!("tmp-{}", std::process::id()));
    let result = fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(&out)?;
        f.sync_all()?;
        fs::rename(&tmp, cache)
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl Dataset for LmdbDataset {
    fn len(&self) -> usize {
        self.ends.len()
    }

    /// The key as text; a key that is not UTF-8 is shown as `0x` and its bytes in hex.
    fn key(&self, index: usize) -> String {
        let raw = self.key_raw(index);
        match std::str::from_utf8(raw) {
            Ok(text) => text.to_string(),
            Err(_) => {
                let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                format!("0x{hex}")
            }
        }
    }

    fn read(&self, index: usize) -> Result<Vec<u8>, DataError> {
        let read_err = |reason: String| DataError::Read {
            container: self.path.clone(),
            key: self.key(index),
            reason,
        };
        // A short read transaction per image: cheap without the lock file, and it never
        // holds old pages alive across the run.
        let rtxn = self.env.read_txn().map_err(|e| read_err(e.to_string()))?;
        let value = self
            .db
            .get(&rtxn, self.key_raw(index))
            .map_err(|e| read_err(e.to_string()))?
            .ok_or_else(|| read_err("the key is no longer in the database".to_string()))?;
        if value.len() as u64 > MAX_ENCODED_BYTES {
            return Err(read_err(format!(
                "the value holds {} bytes, more than the {MAX_ENCODED_BYTES} allowed",
                value.len()
            )));
        }
        Ok(value.to_vec())
    }

    fn swaps_red_blue(&self) -> bool {
        self.swaps_red_blue
    }

    fn display_name(&self, index: usize) -> PathBuf {
        self.path.join(self.key(index))
    }

    fn describe(&self) -> String {
        format!("LMDB {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_cache_round_trips_and_refuses_stale_or_damaged_files() {
        let dir = std::env::temp_dir().join(format!("sae-lmdb-cache-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        let cache = dir.join(KEY_CACHE_FILE);
        let key_bytes = b"abcdefgh".to_vec();
        let ends = vec![1, 1, 4, 8]; // "a", "", "bcd", "efgh"
        write_cache(&cache, 4096, &key_bytes, &ends).expect("write");
        assert_eq!(read_cache(&cache, 4, 4096), Some((key_bytes, ends)));
        assert_eq!(read_cache(&cache, 5, 4096), None, "entry count changed");
        assert_eq!(read_cache(&cache, 4, 8192), None, "data.mdb size changed");
        let bytes = fs::read(&cache).expect("read");
        fs::write(&cache, &bytes[..bytes.len() - 1]).expect("truncate");
        assert_eq!(read_cache(&cache, 4, 4096), None, "truncated");
        fs::write(&cache, [bytes.as_slice(), b"x"].concat()).expect("extend");
        assert_eq!(read_cache(&cache, 4, 4096), None, "trailing bytes");
        assert_eq!(read_cache(&dir.join("missing"), 4, 4096), None);
        let _ = fs::remove_dir_all(dir);
    }
}
