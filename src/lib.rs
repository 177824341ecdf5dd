//! The Swapping Autoencoder for Deep Image Manipulation (Park et al., NeurIPS 2020) on Burn.
//!
//! This crate re-exports the workspace's crates under one name, so an application adds one
//! dependency:
//!
//! - [`nn`]: the StyleGAN2 building blocks (modulated conv, ResNet blocks, FIR filters, the
//!   patch sampler), each checked against the official PyTorch implementation;
//! - [`model`]: the encoder, generator and both discriminators, the official presets, official
//!   `.pth` checkpoint import and the native checkpoint format, and the inference API.
//!
//! Backends are cargo features (`flex`, the default pure-Rust CPU backend; `ndarray`; `wgpu`;
//! `vulkan`; `cuda`); model code takes a [`burn::tensor::Device`] and has no backend type
//! parameter.

pub use burn;
pub use sae_data as data;
pub use sae_model as model;
pub use sae_nn as nn;
pub use sae_pth as pth;
pub use sae_train as train;
