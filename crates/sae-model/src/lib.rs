//! The Swapping Autoencoder's four networks on Burn: the encoder E, the generator G, the image
//! discriminator D and the patch co-occurrence discriminator Dpatch, with the official presets.
//!
//! Each network has an explicit configuration listing every width ([`EncoderConfig`],
//! [`GeneratorConfig`], [`DiscriminatorConfig`], [`PatchDiscriminatorConfig`]), so a model read
//! from a checkpoint is built from the checkpoint's own shapes; [`SwappingAutoencoderConfig`]
//! derives them from the official options, and [`Preset`] names the official launchers.

pub mod atomic;
pub mod channels;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod discriminator;
pub mod encoder;
pub mod generator;
pub mod image_io;
pub mod inference;
pub mod model;
pub mod native;
pub mod pca;

pub use config::{ConfigError, Preset, SwappingAutoencoderConfig};
pub use device::{DeviceError, DeviceSpec, parse_device};
pub use discriminator::{
    Discriminator, DiscriminatorConfig, PatchDiscriminator, PatchDiscriminatorConfig,
};
pub use encoder::{Codes, Encoder, EncoderConfig};
pub use generator::{Generator, GeneratorBlock, GeneratorConfig, GeneratorNoise};
pub use model::{CheckpointFormat, LoadError, ModelConfig, OfficialError, SwappingAutoencoder};
pub use pca::{
    CodePca, CodePcaBuilder, CovarianceAccumulator, Pca, PcaError, PcaKind, self_similarity_mask,
};
