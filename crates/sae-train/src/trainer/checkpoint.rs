//! Training checkpoints: a native model file (`sae swap` reads it) plus both Adam states, every
//! counter, the crop/noise RNG and the loader's position, so that a resumed run continues bit
//! for bit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, TensorData};
use sae_data::LoaderState;
use sae_model::native::{NativeCheckpoint, read_native, save_native_with_extras};
use sae_model::{ModelConfig, SwappingAutoencoder};
use serde::{Deserialize, Serialize};

use super::Counters;
use super::error::TrainError;
use crate::adam::Adam;
use crate::losses::SeededRandomness;

/// The `train_state` metadata key.
const STATE_KEY: &str = "train_state";

/// What a checkpoint stores besides tensors (JSON metadata `train_state`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct TrainState {
    /// The run's [`TrainOptions::run_id`](crate::TrainOptions::run_id) (empty in checkpoints
    /// from before run ids).
    #[serde(default)]
    pub(crate) run_id: String,
    pub(crate) counters: Counters,
    pub(crate) opt_g_steps: u64,
    pub(crate) opt_d_steps: u64,
    pub(crate) randomness: SeededRandomness,
    pub(crate) loader: LoaderState,
    /// Seconds of training before this checkpoint (for the rate over a resumed run).
    pub(crate) elapsed_s: f64,
}

impl TrainState {
    /// The state of a run that has not taken a step.
    pub(crate) fn start(run_id: &str, seed: u64) -> Self {
        TrainState {
            run_id: run_id.to_string(),
            counters: Counters::default(),
            opt_g_steps: 0,
            opt_d_steps: 0,
            randomness: SeededRandomness::seed(seed),
            loader: LoaderState {
                epoch: 0,
                cursor: 0,
                skipped: 0,
            },
            elapsed_s: 0.0,
        }
    }
}

/// Writes a training checkpoint atomically.
///
/// # Errors
/// File-system errors.
pub(crate) fn save(
    path: &Path,
    model: &SwappingAutoencoder,
    config: &ModelConfig,
    optimizers: [(&str, &Adam); 2],
    state: &TrainState,
) -> Result<(), TrainError> {
    let mut extras = BTreeMap::new();
    for (name, opt) in optimizers {
        for (k, v) in opt.state_tensors() {
            extras.insert(format!("{name}.{k}"), v);
        }
    }
    let mut meta = BTreeMap::new();
    meta.insert(
        STATE_KEY.to_string(),
        serde_json::to_string(state).expect("state serialises"),
    );
    save_native_with_extras(model, config, path, &extras, &meta)?;
    Ok(())
}

/// A checkpoint read back: the model, the state and the optimizer tensors by prefix.
pub(crate) struct Loaded {
    pub(crate) path: PathBuf,
    pub(crate) model: SwappingAutoencoder,
    pub(crate) state: TrainState,
    extras: BTreeMap<String, TensorData>,
}

impl Loaded {
    /// The optimizer tensors stored under `prefix` (`opt_g` or `opt_d`), without it.
    pub(crate) fn optimizer(&self, prefix: &str) -> BTreeMap<String, TensorData> {
        let prefix = format!("{prefix}.");
        self.extras
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v.clone())))
            .collect()
    }
}

/// Reads a training checkpoint (one read of the file) and checks it belongs to the run `run_id`,
/// whose model is `config`.
///
/// # Errors
/// An unreadable or damaged file, another model, or no training state.
pub(crate) fn load(
    path: &Path,
    config: &ModelConfig,
    run_id: &str,
    device: &Device,
) -> Result<Loaded, TrainError> {
    let NativeCheckpoint {
        model,
        config: stored,
        extra_tensors,
        metadata,
    } = read_native(path, device)?;
    let bad = |problem: String| TrainError::BadRunFile {
        path: path.to_path_buf(),
        problem,
    };
    if &stored != config {
        return Err(bad(
            "the checkpoint's model configuration differs from options.json".into(),
        ));
    }
    let state: TrainState = metadata
        .get(STATE_KEY)
        .ok_or_else(|| {
            bad(format!(
                "no `{STATE_KEY}` metadata: not a training checkpoint"
            ))
        })
        .and_then(|s| serde_json::from_str(s).map_err(|e| bad(format!("{STATE_KEY}: {e}"))))?;
    if !state.run_id.is_empty() && !run_id.is_empty() && state.run_id != run_id {
        return Err(bad(format!(
            "belongs to another run (run id {}, this run's is {run_id})",
            state.run_id
        )));
    }
    Ok(Loaded {
        path: path.to_path_buf(),
        model,
        state,
        extras: extra_tensors,
    })
}
