//! The native checkpoint format: one safetensors file holding every parameter by path
//! (`e.…`, `g.…`, `d.…`, `dpatch.…`) and the [`ModelConfig`] as JSON metadata. Saving and
//! loading round-trip bit-exactly; writes are atomic (temporary file + rename), so a crash never
//! leaves a half-written checkpoint behind.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use thiserror::Error;

use crate::model::{ModelConfig, SwappingAutoencoder};

/// The `format` metadata value of files this crate writes.
pub const FORMAT: &str = "sae-rs/1";

/// Name prefix of the non-model tensors of a training checkpoint.
pub const EXTRA_PREFIX: &str = "train.";

/// A native checkpoint that cannot be written or read.
#[derive(Debug, Error)]
pub enum NativeError {
    /// The file system said no.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a safetensors file, or a truncated one.
    #[error("{path}: not a readable safetensors file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A safetensors file that this crate did not write.
    #[error(
        "{path}: no `{FORMAT}` model metadata (convert official `.pth` files with `sae convert`)"
    )]
    NotNative {
        /// The file.
        path: PathBuf,
    },
    /// The tensors do not fit the stored configuration.
    #[error("{path}: {source}")]
    Param {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: sae_nn::ParamError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NativeError + '_ {
    move |source| NativeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A temporary path next to `path` (same directory, so a rename over `path` is atomic):
/// `.NAME.tmp-PID-N`. The pid keeps processes apart, the per-process counter concurrent writers
/// in one process; a leftover never matches a name a reader looks for.
pub fn temp_sibling(path: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NativeError> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io(path))
}

fn net_params<M: Module>(prefix: &str, net: &M, out: &mut Vec<(String, TensorData)>) {
    for p in sae_nn::collect_params(net, None) {
        out.push((format!("{prefix}.{}", p.path), p.value.convert::<f32>()));
    }
}

/// A little-endian F32 safetensors view as [`TensorData`] (the caller checks the dtype).
pub fn f32_view_data(view: &TensorView<'_>) -> TensorData {
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    TensorData::new(values, view.shape().to_vec())
}

/// Saves the model and its configuration.
pub fn save_native(
    model: &SwappingAutoencoder,
    config: &ModelConfig,
    path: &Path,
) -> Result<(), NativeError> {
    save_native_with_extras(model, config, path, &BTreeMap::new(), &BTreeMap::new())
}

/// [`save_native`] plus extra tensors (stored as `train.<name>`, e.g. optimizer moments) and
/// extra metadata entries (e.g. the training counters). The file stays a valid model file:
/// [`load_native`] ignores the extras, [`read_native_extras`] returns them.
pub fn save_native_with_extras(
    model: &SwappingAutoencoder,
    config: &ModelConfig,
    path: &Path,
    extra_tensors: &BTreeMap<String, TensorData>,
    extra_meta: &BTreeMap<String, String>,
) -> Result<(), NativeError> {
    let mut tensors = Vec::new();
    net_params("e", &model.e, &mut tensors);
    net_params("g", &model.g, &mut tensors);
    if let Some(d) = &model.d {
        net_params("d", d, &mut tensors);
    }
    if let Some(p) = &model.dpatch {
        net_params("dpatch", p, &mut tensors);
    }
    for (name, t) in extra_tensors {
        tensors.push((format!("{EXTRA_PREFIX}{name}"), t.clone().convert::<f32>()));
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, t)| {
            let view = TensorView::new(Dtype::F32, t.shape().to_vec(), t.as_bytes())
                .expect("f32 data matches its shape");
            (k.clone(), view)
        })
        .collect();
    let mut meta: HashMap<String, String> = extra_meta
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert(
        "config".to_string(),
        serde_json::to_string(config).expect("configs serialise"),
    );
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| NativeError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

/// Loads a model saved by [`save_native`].
pub fn load_native(
    path: &Path,
    device: &Device,
) -> Result<(SwappingAutoencoder, ModelConfig), NativeError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let format_err = |reason: String| NativeError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| format_err(e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(NativeError::NotNative {
            path: path.to_path_buf(),
        });
    }
    let config: ModelConfig = meta
        .get("config")
        .ok_or_else(|| format_err("no `config` metadata".into()))
        .and_then(|c| {
            serde_json::from_str(c).map_err(|e| format_err(format!("bad config: {e}")))
        })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format_err(e.to_string()))?;
    let mut nets: BTreeMap<&str, BTreeMap<String, TensorData>> = BTreeMap::new();
    for (name, view) in st.tensors() {
        if name.starts_with(EXTRA_PREFIX) {
            continue;
        }
        if view.dtype() != Dtype::F32 {
            return Err(format_err(format!(
                "`{name}` is {:?}, not F32",
                view.dtype()
            )));
        }
        let (net, path) = name
            .split_once('.')
            .ok_or_else(|| format_err(format!("tensor `{name}` has no network prefix")))?;
        let net = match net {
            "e" => "e",
            "g" => "g",
            "d" => "d",
            "dpatch" => "dpatch",
            _ => return Err(format_err(format!("tensor `{name}` belongs to no network"))),
        };
        nets.entry(net)
            .or_default()
            .insert(path.to_string(), f32_view_data(&view));
    }
    let model = config.init(device);
    let empty = BTreeMap::new();
    let get = |n| nets.get(n).unwrap_or(&empty);
    let wrap = |source| NativeError::Param {
        path: path.to_path_buf(),
        source,
    };
    let e = sae_nn::load_params(model.e, get("e")).map_err(wrap)?;
    let g = sae_nn::load_params(model.g, get("g")).map_err(wrap)?;
    let d = model
        .d
        .map(|d| sae_nn::load_params(d, get("d")).map_err(wrap))
        .transpose()?;
    let dpatch = model
        .dpatch
        .map(|p| sae_nn::load_params(p, get("dpatch")).map_err(wrap))
        .transpose()?;
    if model_has_extra(&nets, d.is_some(), dpatch.is_some()) {
        return Err(format_err(
            "tensors for a network the configuration does not have".into(),
        ));
    }
    Ok((SwappingAutoencoder { e, g, d, dpatch }, config))
}

fn model_has_extra(nets: &BTreeMap<&str, BTreeMap<String, TensorData>>, d: bool, p: bool) -> bool {
    (!d && nets.contains_key("d")) || (!p && nets.contains_key("dpatch"))
}

/// Extra tensors by name (without the `train.` prefix) and all metadata entries.
pub type NativeExtras = (BTreeMap<String, TensorData>, BTreeMap<String, String>);

/// The extra tensors (without their `train.` prefix) and all metadata of a file written by
/// [`save_native_with_extras`].
///
/// # Errors
/// [`NativeError::Io`], [`NativeError::Format`] for an unreadable or non-F32 file,
/// [`NativeError::NotNative`] without the format marker.
pub fn read_native_extras(path: &Path) -> Result<NativeExtras, NativeError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let format_err = |reason: String| NativeError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| format_err(e.to_string()))?;
    let meta: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(NativeError::NotNative {
            path: path.to_path_buf(),
        });
    }
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format_err(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if let Some(rest) = name.strip_prefix(EXTRA_PREFIX) {
            if view.dtype() != Dtype::F32 {
                return Err(format_err(format!(
                    "`{name}` is {:?}, not F32",
                    view.dtype()
                )));
            }
            out.insert(rest.to_string(), f32_view_data(&view));
        }
    }
    Ok((out, meta))
}
