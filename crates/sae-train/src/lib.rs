//! Swapping Autoencoder training: the official losses, exact R1 without double backward, the
//! two Adam optimizers, the presets and the resumable trainer. The data pipeline is
//! [`sae_data`].
//!
//! - [`losses`]: the discriminator, R1 and generator steps of the official
//!   `models/swapping_autoencoder_model.py`, with the per-GPU chunking of the official
//!   multi-GPU runs.
//! - R1 needs the gradient of a gradient, which Burn does not provide; `D` and `Dpatch` have
//!   hand-written input vector-Jacobian products ([`sae_model::Discriminator::input_gradient`],
//!   [`sae_model::PatchDiscriminator::input_gradients`]) built from differentiable ops, so an
//!   ordinary backward pass of the penalty gives the exact parameter gradients (checked against
//!   PyTorch's `create_graph=True`).
//! - [`adam`]: PyTorch's Adam, keyed by parameter path, with StyleGAN2's lazy-R1 correction.
//! - [`presets`]: the training presets, one typed table; [`options`]: the resolved options of a
//!   run.
//! - [`trainer`]: the alternating D/G loop, run directory, stats, snapshots, atomic resumable
//!   checkpoints; [`launch`]: what `sae train` and the examples share.
//!
//! # One training step with the public API
//!
//! A D step, the lazy R1 step and a G step on a freshly initialised model, as the trainer runs
//! them (see `docs/architecture.md` for the data path):
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use sae_nn::PatchSamplerConfig;
//! use sae_train::{
//!     Adam, AdamConfig, LossConfig, Nets, SeededRandomness, discriminator_losses,
//!     generator_losses, r1_losses, tiny_model,
//! };
//!
//! let device = Device::flex().autodiff(); // the default CPU backend, with gradients
//! let config = tiny_model(); // 64-px images, about 0.6 M parameters
//! let model = config.init(&device);
//! let (e, mut g) = (model.e, model.g);
//! let (mut d, mut dpatch) = (model.d.unwrap(), model.dpatch.unwrap());
//! let losses = LossConfig::new();
//! let sampler = PatchSamplerConfig::new().with_patch_size(32).init()?;
//! let mut rnd = SeededRandomness::seed(0);
//! let (mut opt_g, mut opt_d) = (
//!     Adam::new(AdamConfig::new()),
//!     Adam::new(AdamConfig::new().lazy(losses.r1_once_every)),
//! );
//! let real = Tensor::<4>::random([4, 3, 64, 64], Distribution::Uniform(-1.0, 1.0), &device);
//!
//! // D step: D and Dpatch learn to tell real images from reconstructions and swaps.
//! let nets = Nets { e: &e, g: &g, d: &d, dpatch: &dpatch };
//! let grads = discriminator_losses(nets, real.clone(), &losses, &sampler, &mut rnd)?
//!     .total()
//!     .backward();
//! opt_d.begin_step();
//! d = opt_d.update("d", d, &grads);
//! dpatch = opt_d.update("dpatch", dpatch, &grads);
//!
//! // Lazy R1 step (every `r1_once_every` D steps): exact gradient penalties.
//! let nets = Nets { e: &e, g: &g, d: &d, dpatch: &dpatch };
//! let grads = r1_losses(nets, real.clone(), &losses, &sampler, &mut rnd)?
//!     .total()
//!     .backward();
//! opt_d.begin_step();
//! d = opt_d.update("d", d, &grads);
//! dpatch = opt_d.update("dpatch", dpatch, &grads);
//!
//! // G step: E and G learn to reconstruct, and to fool D and Dpatch with swaps.
//! let nets = Nets { e: &e, g: &g, d: &d, dpatch: &dpatch };
//! let step = generator_losses(nets, real, &losses, &sampler, &mut rnd)?;
//! let l1 = step.terms[0].1.clone().into_data().iter::<f32>().next();
//! let grads = step.total().backward();
//! opt_g.begin_step();
//! g = opt_g.update("g", g, &grads);
//! let e = opt_g.update("e", e, &grads);
//! assert!(l1.is_some_and(f32::is_finite), "G_L1 = {l1:?}");
//! # let _ = (e, g, d, dpatch);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod adam;
mod adam_op;
pub mod launch;
pub mod losses;
pub mod options;
pub mod presets;
pub mod trainer;

pub use adam::{Adam, AdamConfig, GradientSource};
pub use launch::{
    TrainArgs, launch, resolve_options, resolve_options_for, resume_options, stop_on_signals,
    train_devices,
};
pub use losses::{
    LossConfig, LossError, Losses, Nets, Randomness, SeededRandomness, ShardRandomness,
    discriminator_losses, generator_losses, r1_losses,
};
pub use options::{TrainOptions, quickstart_model, small_model, tiny_model};
pub use presets::{PresetNetworks, TRAIN_PRESETS, TrainPreset};
pub use trainer::{Counters, GradientSync, RunEnd, StepReport, TrainDevices, TrainError, Trainer};
