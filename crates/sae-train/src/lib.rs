//! Swapping Autoencoder training (spec Part III): the official losses, exact R1 without double
//! backward, the two Adam optimizers, the resumable trainer and the data pipeline.
//!
//! - [`losses`]: the discriminator, R1 and generator steps of spec 8.2–8.4, with the per-GPU
//!   chunking of the official multi-GPU runs.
//! - R1 needs the gradient of a gradient, which Burn does not provide; `D` and `Dpatch` have
//!   hand-written input vector-Jacobian products ([`sae_model::Discriminator::input_gradient`],
//!   [`sae_model::PatchDiscriminator::input_gradients`]) built from differentiable ops, so an
//!   ordinary backward pass of the penalty gives the exact parameter gradients (checked against
//!   PyTorch's `create_graph=True`).
//! - [`adam`]: PyTorch's Adam, keyed by parameter path, with StyleGAN2's lazy-R1 correction.
//! - [`trainer`]: the alternating D/G loop, run directory, stats, snapshots, atomic resumable
//!   checkpoints; [`launch`]: what `sae train` and the examples share.
//! - [`data`]: datasets (image folder, zip, LSUN LMDB, generated shapes), the training
//!   transform and the multi-threaded resumable loader.

pub mod adam;
pub mod data;
pub mod launch;
pub mod losses;
pub mod options;
pub mod trainer;

pub use adam::{Adam, AdamConfig};
pub use launch::{TrainArgs, launch, resolve_options, stop_on_ctrl_c};
pub use losses::{
    LossConfig, LossError, Losses, Nets, Randomness, SeededRandomness, discriminator_losses,
    generator_losses, r1_losses,
};
pub use options::{TRAIN_PRESETS, TrainOptions, quickstart_model, tiny_model};
pub use trainer::{Counters, RunEnd, StepReport, TrainError, Trainer};
