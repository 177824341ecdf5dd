//! The run directory, in the style of StyleGAN2-ADA, and every file name in it:
//!
//! ```text
//! RUN_DIR/
//!   options.json                     the resolved options, written before the first step
//!   stats.jsonl                      one JSON line per logging interval
//!   snapshots/snapshot-<images>.png  real | reconstruction | swap, one column per image
//!   checkpoints/checkpoint-<images>.safetensors
//! ```
//!
//! Every file is written atomically ([`sae_model::atomic`]). Temporary files left by a write
//! that a crash interrupted are removed when the run is opened again.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sae_model::atomic::{check_target, is_temp_name, write_atomic};

use super::error::{TrainError, io_err};
use crate::options::TrainOptions;

const CHECKPOINT_PREFIX: &str = "checkpoint-";
const CHECKPOINT_SUFFIX: &str = ".safetensors";

/// A run directory.
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run directory at `root` (nothing is read or created).
    pub fn new(root: &Path) -> Self {
        RunDir {
            root: root.to_path_buf(),
        }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `options.json`.
    pub fn options_path(&self) -> PathBuf {
        self.root.join("options.json")
    }

    /// `stats.jsonl`.
    pub fn stats_path(&self) -> PathBuf {
        self.root.join("stats.jsonl")
    }

    /// `checkpoints/`.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// `snapshots/`.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// The checkpoint file for `images` images seen.
    pub fn checkpoint_path(&self, images: u64) -> PathBuf {
        self.checkpoint_dir().join(format!(
            "{CHECKPOINT_PREFIX}{images:012}{CHECKPOINT_SUFFIX}"
        ))
    }

    /// The snapshot file for `images` images seen.
    pub fn snapshot_path(&self, images: u64) -> PathBuf {
        self.snapshot_dir()
            .join(format!("snapshot-{images:012}.png"))
    }

    /// Refuses a directory that already holds a run, or any part of one (options, stats,
    /// checkpoints or snapshots), so a new run never overwrites or mixes with another run's
    /// files.
    ///
    /// # Errors
    /// [`TrainError::RunDir`] naming what is there.
    pub fn check_fresh(&self) -> Result<(), TrainError> {
        let held = |p: &Path| -> bool {
            if p.is_dir() {
                fs::read_dir(p).is_ok_and(|mut d| d.next().is_some())
            } else {
                fs::symlink_metadata(p).is_ok()
            }
        };
        for part in [
            self.options_path(),
            self.stats_path(),
            self.checkpoint_dir(),
            self.snapshot_dir(),
        ] {
            if held(&part) {
                return Err(TrainError::RunDir {
                    dir: self.root.clone(),
                    problem: format!(
                        "already holds a run ({} exists); pass --resume to continue it or \
                         choose another --out",
                        part.strip_prefix(&self.root).unwrap_or(&part).display()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Reads `options.json`.
    ///
    /// # Errors
    /// [`TrainError::RunDir`] when there is none, [`TrainError::BadRunFile`] when it does not
    /// parse.
    pub fn read_options(&self) -> Result<TrainOptions, TrainError> {
        let path = self.options_path();
        check_target(&path).map_err(|e| TrainError::RunDir {
            dir: self.root.clone(),
            problem: format!("cannot read options.json: {e}"),
        })?;
        let text = fs::read_to_string(&path).map_err(|e| TrainError::RunDir {
            dir: self.root.clone(),
            problem: format!("no run to resume (options.json: {e})"),
        })?;
        serde_json::from_str(&text).map_err(|e| TrainError::BadRunFile {
            path,
            problem: e.to_string(),
        })
    }

    /// Creates the directory and writes `options.json`.
    ///
    /// # Errors
    /// File-system errors.
    pub fn write_options(&self, opts: &TrainOptions) -> Result<(), TrainError> {
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let json = serde_json::to_string_pretty(opts).expect("options serialise");
        write_atomic(&self.options_path(), json.as_bytes())?;
        Ok(())
    }

    /// The checkpoints, oldest first, by the image count in their names (temporary files of
    /// interrupted writes are not matched).
    ///
    /// # Errors
    /// File-system errors.
    pub fn checkpoints(&self) -> Result<Vec<(u64, PathBuf)>, TrainError> {
        let dir = self.checkpoint_dir();
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            // Only regular files: a FIFO, device or symlink named like a checkpoint is not one.
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let images = name
                .strip_prefix(CHECKPOINT_PREFIX)
                .and_then(|r| r.strip_suffix(CHECKPOINT_SUFFIX))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(images) = images {
                out.push((images, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes the oldest checkpoints beyond the newest `keep`.
    ///
    /// # Errors
    /// File-system errors.
    pub fn rotate_checkpoints(&self, keep: usize) -> Result<(), TrainError> {
        let all = self.checkpoints()?;
        let excess = all.len().saturating_sub(keep);
        for (_, old) in all.into_iter().take(excess) {
            fs::remove_file(&old).map_err(io_err(&old))?;
        }
        Ok(())
    }

    /// Appends one line to `stats.jsonl`.
    ///
    /// # Errors
    /// File-system errors.
    pub fn append_stats(&self, line: &str) -> Result<(), TrainError> {
        let path = self.stats_path();
        // Only a regular file is appended to: a FIFO would block, a device would swallow it.
        check_target(&path)?;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        writeln!(f, "{line}").map_err(io_err(&path))
    }

    /// Drops the `stats.jsonl` lines written after `images` images (the steps a crash lost,
    /// which the resumed run logs again) and any torn last line.
    ///
    /// # Errors
    /// File-system errors.
    pub fn truncate_stats(&self, images: u64) -> Result<(), TrainError> {
        let path = self.stats_path();
        // A FIFO would block the read and a symlink would be written through.
        check_target(&path)?;
        let Ok(text) = fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["images"].as_u64())
                    .is_some_and(|i| i <= images)
            })
            .collect();
        if kept.len() != text.lines().count() {
            let mut body = kept.join("\n");
            if !body.is_empty() {
                body.push('\n');
            }
            write_atomic(&path, body.as_bytes())?;
        }
        Ok(())
    }

    /// Removes the temporary files of writes a crash interrupted (in the run directory, its
    /// checkpoints and its snapshots). Returns how many.
    pub fn remove_stale_temp_files(&self) -> usize {
        let mut removed = 0;
        for dir in [
            self.root.clone(),
            self.checkpoint_dir(),
            self.snapshot_dir(),
        ] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let is_file = entry.file_type().is_ok_and(|t| t.is_file());
                if is_file && is_temp_name(&name) && fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }
}

/// The checkpoints of the run in `run_dir`, oldest first (see [`RunDir::checkpoints`]).
///
/// # Errors
/// File-system errors.
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    RunDir::new(run_dir).checkpoints()
}
