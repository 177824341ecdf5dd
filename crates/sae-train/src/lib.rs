//! Swapping Autoencoder training (spec Part III): the official losses, exact R1 without double
//! backward, the two Adam optimizers, the resumable trainer and the data pipeline.

pub mod adam;
pub mod data;
pub mod losses;

pub use adam::{Adam, AdamConfig};
pub use losses::{
    LossConfig, LossError, Losses, Nets, Randomness, SeededRandomness, discriminator_losses,
    generator_losses, r1_losses,
};
