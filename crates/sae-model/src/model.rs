//! The whole model: E and G (always), D and Dpatch (for training), built from a configuration or
//! from an official checkpoint.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, TensorData};
use serde::{Deserialize, Serialize};
use thiserror::Error;

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
use crate::pth::{PthData, PthError, read_state_dict};

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
    /// Builds the networks (parameters are initialised lazily, on first use).
    pub fn init(&self, device: &Device) -> SwappingAutoencoder {
        SwappingAutoencoder {
            e: self.encoder.init(device),
            g: self.generator.init(device),
            d: self.discriminator.as_ref().map(|c| c.init(device)),
            dpatch: self.patch_discriminator.as_ref().map(|c| c.init(device)),
        }
    }

    /// Reads the configuration from a checkpoint's shapes (spec 7.3): nothing is assumed from a
    /// preset, so any official configuration, including non-preset widths, loads.
    pub fn from_official(shapes: &ShapeMap) -> Result<Self, CheckpointError> {
        Ok(ModelConfig {
            encoder: infer_encoder(shapes)?,
            generator: infer_generator(shapes)?,
            discriminator: infer_discriminator(shapes)?,
            patch_discriminator: infer_patch_discriminator(shapes)?,
        })
    }
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

/// Why an official checkpoint could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
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
pub fn read_official_tensors(path: &Path) -> Result<OfficialTensors, LoadError> {
    let sd = read_state_dict(path)?;
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
    /// Loads an official checkpoint (`<N>k_checkpoint.pth`, or any file of the same layout),
    /// building every network from the file's shapes. D and Dpatch are loaded when present.
    ///
    /// # Errors
    /// A typed error naming the file record, key or shapes that are wrong.
    pub fn load_official(path: &Path, device: &Device) -> Result<(Self, ModelConfig), LoadError> {
        let tensors = read_official_tensors(path)?;
        Self::from_official_tensors(&tensors, device)
    }

    /// [`SwappingAutoencoder::load_official`] on tensors already in memory.
    pub fn from_official_tensors(
        tensors: &OfficialTensors,
        device: &Device,
    ) -> Result<(Self, ModelConfig), LoadError> {
        let config = ModelConfig::from_official(&shapes(tensors))?;
        let remapped = remap_checkpoint(tensors)?;
        let model = config.init(device);
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
                LoadError::Param { net, key, source }
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
