//! The whole model: E and G (always), D and Dpatch (for training), built from a configuration or
//! loaded from a checkpoint of either format ([`SwappingAutoencoder::load`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::atomic::read_bounded;
use crate::checkpoint::{
    CheckpointError, Net, OfficialTensors, ShapeMap, infer_discriminator, infer_encoder,
    infer_generator, infer_patch_discriminator, remap_checkpoint, shapes,
};
use crate::config::SwappingAutoencoderConfig;
use crate::discriminator::{
    Discriminator, DiscriminatorConfig, PatchDiscriminator, PatchDiscriminatorConfig,
};
use crate::encoder::{Encoder, EncoderConfig};
use crate::generator::{Generator, GeneratorConfig};
use crate::native::{NativeError, has_safetensors_header, read_native_bytes};

/// The largest checkpoint file read (64 GiB: ten times the largest official checkpoint with
/// its discriminators and optimizer state); a FIFO or device is read up to
/// [`crate::atomic::MAX_STREAM_BYTES`].
pub const MAX_CHECKPOINT_BYTES: u64 = 64 << 30;
use sae_pth::{PthData, PthError, read_state_dict_bytes};

/// The explicit configuration of every network of a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The encoder.
    pub encoder: EncoderConfig,
    /// The generator.
    pub generator: GeneratorConfig,
    /// The image discriminator (training only).
    pub discriminator: Option<DiscriminatorConfig>,
    /// The patch discriminator (training only).
    pub patch_discriminator: Option<PatchDiscriminatorConfig>,
}

impl From<&SwappingAutoencoderConfig> for ModelConfig {
    fn from(c: &SwappingAutoencoderConfig) -> Self {
        ModelConfig {
            encoder: c.encoder(),
            generator: c.generator(),
            discriminator: Some(c.discriminator()),
            patch_discriminator: Some(c.patch_discriminator()),
        }
    }
}

impl ModelConfig {
    /// Builds the networks with freshly initialised weights (from the device's RNG; seed it
    /// with `device.seed(..)` for reproducible weights).
    ///
    /// Every parameter is initialised here, not lazily on first use. On an autodiff device
    /// (`device.autodiff()`) each one is then a tracked leaf, and it stays tracked when a
    /// training step runs a frozen copy of a network (`net.clone().no_grad()`): a lazily
    /// initialised parameter would take its first value, untracked, through that copy.
    ///
    /// # Panics
    /// If the configuration is invalid ([`ModelConfig::validate`] says why); configurations
    /// read from files are validated by the loaders before they get here.
    pub fn init(&self, device: &Device) -> SwappingAutoencoder {
        materialize(self.init_lazy(device))
    }

    /// The networks with lazily initialised parameters, for the loaders (which replace every
    /// value, so random weights of the configuration's sizes are never drawn for nothing).
    pub(crate) fn init_lazy(&self, device: &Device) -> SwappingAutoencoder {
        SwappingAutoencoder {
            e: self.encoder.init(device),
            g: self.generator.init(device),
            d: self.discriminator.as_ref().map(|c| c.init(device)),
            dpatch: self.patch_discriminator.as_ref().map(|c| c.init(device)),
        }
    }

    /// Reads the configuration from a checkpoint's shapes (see `docs/checkpoints.md`): nothing
    /// is assumed from a preset, so any official configuration, including non-preset widths,
    /// loads.
    ///
    /// # Errors
    /// [`CheckpointError`] for keys or shapes that describe no model.
    pub fn from_official(shapes: &ShapeMap) -> Result<Self, CheckpointError> {
        let config = ModelConfig {
            encoder: infer_encoder(shapes)?,
            generator: infer_generator(shapes)?,
            discriminator: infer_discriminator(shapes)?,
            patch_discriminator: infer_patch_discriminator(shapes)?,
        };
        config.validate().map_err(CheckpointError::Config)?;
        Ok(config)
    }
}

/// Initialises every lazily initialised parameter now (see [`ModelConfig::init`]).
fn materialize<M: Module>(m: M) -> M {
    struct Touch;
    impl ModuleMapper for Touch {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            p.map(|t| {
                if t.is_require_grad() {
                    t.detach().require_grad()
                } else {
                    t
                }
            })
        }
    }
    m.map(&mut Touch)
}

/// The four networks. `d` and `dpatch` are absent in inference-only checkpoints.
#[derive(Module, Debug)]
pub struct SwappingAutoencoder {
    /// Encoder.
    pub e: Encoder,
    /// Generator.
    pub g: Generator,
    /// Image discriminator.
    pub d: Option<Discriminator>,
    /// Patch co-occurrence discriminator.
    pub dpatch: Option<PatchDiscriminator>,
}

/// Why a checkpoint could not be loaded by [`SwappingAutoencoder::load`].
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file parses as neither format.
    #[error(
        "{}: neither a native checkpoint (safetensors) nor an official `torch.save` checkpoint \
         (zip or legacy pickle); {reason}",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// What the file starts with.
        reason: String,
    },
    /// A native file that does not load.
    #[error(transparent)]
    Native(#[from] NativeError),
    /// An official file that does not load.
    #[error("{}: {source}", path.display())]
    Official {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: Box<OfficialError>,
    },
}

/// The two checkpoint formats [`SwappingAutoencoder::load`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// This crate's safetensors file ([`crate::native`]).
    Native,
    /// An official `torch.save` state_dict (zip or legacy pickle).
    Official,
}

impl CheckpointFormat {
    /// Tells the formats apart by parsing, not by one magic byte: a safetensors header (an
    /// 8-byte length and a JSON object) is native whatever its first byte is; otherwise a zip
    /// archive or a pickle (protocol 2–5 opcode) is official. `None` when it is neither.
    pub fn detect(bytes: &[u8]) -> Option<Self> {
        if has_safetensors_header(bytes) {
            Some(CheckpointFormat::Native)
        } else if bytes.starts_with(b"PK\x03\x04")
            || (bytes.first() == Some(&0x80) && bytes.get(1).is_some_and(|p| (2..=5).contains(p)))
        {
            Some(CheckpointFormat::Official)
        } else {
            None
        }
    }
}

/// Why an official checkpoint could not be loaded.
#[derive(Debug, Error)]
pub enum OfficialError {
    /// The file is not a readable `torch.save` state_dict.
    #[error(transparent)]
    Pth(#[from] PthError),
    /// The keys or shapes do not describe a Swapping Autoencoder.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A tensor does not fit the network built from the file's own shapes.
    #[error("{net:?}: {source} (official key `{key}`)")]
    Param {
        /// The network.
        net: Net,
        /// The official key (or the parameter path when the file lacks it).
        key: String,
        /// What is wrong.
        source: sae_nn::ParamError,
    },
}

/// A `torch.save` state_dict as plain tensors by key: floating tensors as `f32`, integer
/// buffers as `i64`.
///
/// # Errors
/// [`OfficialError::Pth`] for a file that is not a readable state_dict.
pub fn read_official_tensors(path: &Path) -> Result<OfficialTensors, OfficialError> {
    let bytes = std::fs::read(path).map_err(|source| PthError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    official_tensors(&bytes)
}

/// [`read_official_tensors`] on bytes in memory.
fn official_tensors(bytes: &[u8]) -> Result<OfficialTensors, OfficialError> {
    let sd = read_state_dict_bytes(bytes)?;
    let mut out = BTreeMap::new();
    for (key, t) in sd.entries {
        let data = match &t.data {
            PthData::I64(v) => TensorData::new(v.clone(), t.shape.clone()),
            PthData::I32(v) => TensorData::new(
                v.iter().map(|&x| x as i64).collect::<Vec<_>>(),
                t.shape.clone(),
            ),
            _ => TensorData::new(t.to_f32()?, t.shape.clone()),
        };
        out.insert(key, data);
    }
    Ok(out)
}

impl SwappingAutoencoder {
    /// Loads a checkpoint of either format: a native `.safetensors` file (written by
    /// [`crate::native::save_native`], `sae convert` or `sae train`) or an official `.pth`
    /// (`<N>k_checkpoint.pth`). The format is detected by parsing ([`CheckpointFormat::detect`]),
    /// the configuration comes from the file itself, and D and Dpatch are loaded when present.
    ///
    /// ```no_run
    /// use burn::tensor::Device;
    /// use sae_model::SwappingAutoencoder;
    ///
    /// let device = Device::default();
    /// let (model, config) = SwappingAutoencoder::load("church_pretrained/latest_checkpoint.pth".as_ref(), &device)?;
    /// println!("structure code: {} channels", config.encoder.spatial_code_ch);
    /// # Ok::<(), sae_model::LoadError>(())
    /// ```
    ///
    /// # Errors
    /// A typed error naming the file and what is wrong: unreadable, neither format, damaged
    /// (a native checksum mismatch), a bad configuration, or tensors that do not fit.
    pub fn load(path: &Path, device: &Device) -> Result<(Self, ModelConfig), LoadError> {
        let bytes = read_bounded(path, MAX_CHECKPOINT_BYTES).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        match CheckpointFormat::detect(&bytes) {
            Some(CheckpointFormat::Native) => {
                let c = read_native_bytes(&bytes, path, device)?;
                Ok((c.model, c.config))
            }
            Some(CheckpointFormat::Official) => official_tensors(&bytes)
                .and_then(|t| Self::from_official_tensors(&t, device))
                .map_err(|source| LoadError::Official {
                    path: path.to_path_buf(),
                    source: Box::new(source),
                }),
            None => Err(LoadError::UnknownFormat {
                path: path.to_path_buf(),
                reason: format!("it starts with {:02x?}", &bytes[..bytes.len().min(8)]),
            }),
        }
    }

    /// Loads an official checkpoint (`<N>k_checkpoint.pth`, or any file of the same layout),
    /// building every network from the file's shapes. D and Dpatch are loaded when present.
    ///
    /// # Errors
    /// A typed error naming the file record, key or shapes that are wrong.
    pub fn load_official(
        path: &Path,
        device: &Device,
    ) -> Result<(Self, ModelConfig), OfficialError> {
        let tensors = read_official_tensors(path)?;
        Self::from_official_tensors(&tensors, device)
    }

    /// [`SwappingAutoencoder::load_official`] on tensors already in memory.
    pub fn from_official_tensors(
        tensors: &OfficialTensors,
        device: &Device,
    ) -> Result<(Self, ModelConfig), OfficialError> {
        let config = ModelConfig::from_official(&shapes(tensors))?;
        let remapped = remap_checkpoint(tensors)?;
        let model = config.init_lazy(device);
        let empty = BTreeMap::new();
        let params = |net| remapped.nets.get(&net).unwrap_or(&empty);
        let wrap = |net: Net| {
            let official = &remapped.official;
            move |source: sae_nn::ParamError| {
                let path = match &source {
                    sae_nn::ParamError::Missing { key, .. }
                    | sae_nn::ParamError::ShapeMismatch { key, .. }
                    | sae_nn::ParamError::Unexpected { key } => key.clone(),
                };
                let key = official.get(&(net, path.clone())).cloned().unwrap_or(path);
                OfficialError::Param { net, key, source }
            }
        };
        let e = sae_nn::load_params(model.e, params(Net::E)).map_err(wrap(Net::E))?;
        let g = sae_nn::load_params(model.g, params(Net::G)).map_err(wrap(Net::G))?;
        let d = model
            .d
            .map(|d| sae_nn::load_params(d, params(Net::D)).map_err(wrap(Net::D)))
            .transpose()?;
        let dpatch = model
            .dpatch
            .map(|p| sae_nn::load_params(p, params(Net::Dpatch)).map_err(wrap(Net::Dpatch)))
            .transpose()?;
        Ok((SwappingAutoencoder { e, g, d, dpatch }, config))
    }
}
