//! Swapping Autoencoder training (spec Part III).

pub mod data;
