//! The native checkpoint format: one safetensors file holding every parameter by path
//! (`e.…`, `g.…`, `d.…`, `dpatch.…`) and the [`ModelConfig`] as JSON metadata. Saving and
//! loading round-trip bit-exactly; writes are atomic ([`crate::atomic`]), so a crash never
//! leaves a half-written checkpoint behind.
//!
//! Every file (format `sae-rs/2`) carries a CRC-32 (`checksum` metadata) over its metadata,
//! tensor names, shapes and bytes, verified on load: a flipped bit anywhere in the tensors or
//! the configuration is a [`NativeError::Checksum`], never a silently different model. Files of
//! the first format, `sae-rs/1`, written before the checksum, still load (unverified). The configuration is
//! validated ([`ModelConfig::validate`]) before any network is built.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use thiserror::Error;

use crate::atomic::{WriteError, write_atomic};
use crate::config::ConfigError;
use crate::model::{ModelConfig, SwappingAutoencoder};

/// The `format` metadata value of files this crate writes.
pub const FORMAT: &str = "sae-rs/2";

/// The `format` value of files written before the checksum (read without one: they carry
/// none to verify).
pub const FORMAT_V1: &str = "sae-rs/1";

/// Name prefix of the non-model tensors of a training checkpoint.
pub const EXTRA_PREFIX: &str = "train.";

/// A native checkpoint that cannot be written or read.
#[derive(Debug, Error)]
pub enum NativeError {
    /// The file system said no.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The stored checksum does not match the contents: the file was damaged after it was
    /// written.
    #[error(
        "{}: checksum mismatch (stored {stored}, computed {computed}): the file is damaged",
        path.display()
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The `checksum` metadata (empty when missing).
        stored: String,
        /// The CRC-32 of the contents.
        computed: String,
    },
    /// The stored configuration describes no buildable model.
    #[error("{}: bad `config` metadata: {source}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: ConfigError,
    },
    /// Not a safetensors file, or a truncated one.
    #[error("{}: not a readable safetensors file: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A safetensors file that this crate did not write.
    #[error(
        "{}: no `{FORMAT}` model metadata (convert official `.pth` files with `sae convert`)",
        path.display()
    )]
    NotNative {
        /// The file.
        path: PathBuf,
    },
    /// The tensors do not fit the stored configuration.
    #[error("{}: {source}", path.display())]
    Param {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: sae_nn::ParamError,
    },
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

/// The metadata key of the CRC-32.
const CHECKSUM_KEY: &str = "checksum";

/// CRC-32 over every metadata entry but the checksum (sorted by key), then every tensor in name
/// order: name, dtype, shape and bytes. Field separators keep `("ab", "c")` and `("a", "bc")`
/// apart.
fn checksum<'a>(
    meta: &BTreeMap<String, String>,
    tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
) -> String {
    let mut h = crc32fast::Hasher::new();
    for (k, v) in meta.iter().filter(|(k, _)| k.as_str() != CHECKSUM_KEY) {
        for part in [k.as_bytes(), b"\0", v.as_bytes(), b"\0"] {
            h.update(part);
        }
    }
    let mut sorted: Vec<_> = tensors.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (name, dtype, shape, bytes) in sorted {
        h.update(name.as_bytes());
        h.update(format!("\0{dtype:?}\0{shape:?}\0").as_bytes());
        h.update(bytes);
    }
    format!("crc32:{:08x}", h.finalize())
}

/// Saves the model and its configuration.
///
/// # Errors
/// [`NativeError::Write`] if the file cannot be written (or the path holds something other than
/// a regular file).
pub fn save_native(
    model: &SwappingAutoencoder,
    config: &ModelConfig,
    path: &Path,
) -> Result<(), NativeError> {
    save_native_with_extras(model, config, path, &BTreeMap::new(), &BTreeMap::new())
}

/// [`save_native`] plus extra tensors (stored as `train.<name>`, e.g. optimizer moments) and
/// extra metadata entries (e.g. the training counters). The file stays a valid model file:
/// [`load_native`] ignores the extras, [`read_native`] returns them.
///
/// # Errors
/// As [`save_native`].
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
    let mut meta = extra_meta.clone();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert(
        "config".to_string(),
        serde_json::to_string(config).expect("configs serialise"),
    );
    let sum = checksum(
        &meta,
        tensors
            .iter()
            .map(|(k, t)| (k.as_str(), Dtype::F32, t.shape().as_slice(), t.as_bytes())),
    );
    meta.insert(CHECKSUM_KEY.to_string(), sum);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, t)| {
            let view = TensorView::new(Dtype::F32, t.shape().to_vec(), t.as_bytes())
                .expect("f32 data matches its shape");
            (k.clone(), view)
        })
        .collect();
    let meta: HashMap<String, String> = meta.into_iter().collect();
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| NativeError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &bytes)?;
    Ok(())
}

/// Everything a native file holds.
#[derive(Debug)]
pub struct NativeCheckpoint {
    /// The networks.
    pub model: SwappingAutoencoder,
    /// Their configuration.
    pub config: ModelConfig,
    /// The extra tensors (without their `train.` prefix), e.g. optimizer moments.
    pub extra_tensors: BTreeMap<String, TensorData>,
    /// Every metadata entry (`format`, `config`, `checksum` and the extras).
    pub metadata: BTreeMap<String, String>,
}

/// Whether `bytes` start with a safetensors header (an 8-byte length and a JSON object that
/// parses), even when the data after it is cut short, so a truncated native file is reported
/// as a damaged native file. Tells the native format from PyTorch's by parsing, not by a magic
/// byte.
pub fn has_safetensors_header(bytes: &[u8]) -> bool {
    let Some(len) = bytes.get(..8) else {
        return false;
    };
    let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    let Some(header) = usize::try_from(n)
        .ok()
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
    else {
        return false;
    };
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(header).is_ok()
}

/// Loads a model saved by [`save_native`].
///
/// # Errors
/// [`NativeError::Io`] for an unreadable file, [`NativeError::Format`] for one that is not
/// safetensors (truncated, say), [`NativeError::NotNative`] without the format marker,
/// [`NativeError::Checksum`] for a damaged file, [`NativeError::Config`] for a configuration
/// that describes no model, [`NativeError::Param`] for tensors that do not fit it.
pub fn load_native(
    path: &Path,
    device: &Device,
) -> Result<(SwappingAutoencoder, ModelConfig), NativeError> {
    let c = read_native(path, device)?;
    Ok((c.model, c.config))
}

/// Reads a native file whole: the model, its configuration, the extra tensors and the metadata
/// (one read of the file).
///
/// # Errors
/// As [`load_native`].
pub fn read_native(path: &Path, device: &Device) -> Result<NativeCheckpoint, NativeError> {
    let bytes = crate::atomic::read_bounded(path, crate::model::MAX_CHECKPOINT_BYTES).map_err(
        |source| NativeError::Io {
            path: path.to_path_buf(),
            source,
        },
    )?;
    read_native_bytes(&bytes, path, device)
}

/// [`read_native`] on bytes already in memory (`path` names them in errors).
///
/// # Errors
/// As [`load_native`].
pub fn read_native_bytes(
    bytes: &[u8],
    path: &Path,
    device: &Device,
) -> Result<NativeCheckpoint, NativeError> {
    let format_err = |reason: String| NativeError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| format_err(e.to_string()))?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let version = metadata.get("format").map(String::as_str);
    if version != Some(FORMAT) && version != Some(FORMAT_V1) {
        return Err(NativeError::NotNative {
            path: path.to_path_buf(),
        });
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| format_err(e.to_string()))?;
    let views = st.tensors();
    let computed = checksum(
        &metadata,
        views
            .iter()
            .map(|(k, v)| (k.as_str(), v.dtype(), v.shape(), v.data())),
    );
    let stored = metadata.get(CHECKSUM_KEY).cloned().unwrap_or_default();
    if version == Some(FORMAT) && stored != computed {
        return Err(NativeError::Checksum {
            path: path.to_path_buf(),
            stored,
            computed,
        });
    }
    let config: ModelConfig = metadata
        .get("config")
        .ok_or_else(|| format_err("no `config` metadata".into()))
        .and_then(|c| {
            serde_json::from_str(c).map_err(|e| format_err(format!("bad config: {e}")))
        })?;
    config.validate().map_err(|source| NativeError::Config {
        path: path.to_path_buf(),
        source,
    })?;
    let mut nets: BTreeMap<&str, BTreeMap<String, TensorData>> = BTreeMap::new();
    let mut extra_tensors = BTreeMap::new();
    for (name, view) in &views {
        if view.dtype() != Dtype::F32 {
            return Err(format_err(format!(
                "`{name}` is {:?}, not F32",
                view.dtype()
            )));
        }
        if let Some(rest) = name.strip_prefix(EXTRA_PREFIX) {
            extra_tensors.insert(rest.to_string(), f32_view_data(view));
            continue;
        }
        let (net, param) = name
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
            .insert(param.to_string(), f32_view_data(view));
    }
    if (config.discriminator.is_none() && nets.contains_key("d"))
        || (config.patch_discriminator.is_none() && nets.contains_key("dpatch"))
    {
        return Err(format_err(
            "tensors for a network the configuration does not have".into(),
        ));
    }
    let model = config.init_lazy(device);
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
    Ok(NativeCheckpoint {
        model: SwappingAutoencoder { e, g, d, dpatch },
        config,
        extra_tensors,
        metadata,
    })
}
