//! Inference: encode, decode, swap, texture interpolation as the official `simple_swapping`
//! evaluator does it, region editing with a mask, structure-code editing, and noise control.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor};
use sae_nn::{NoiseRng, Style, nearest_resize};

use crate::encoder::Codes;
use crate::generator::{Generator, GeneratorNoise};
use crate::model::SwappingAutoencoder;

/// How a decode fills the generator's noise inputs.
#[derive(Clone, Debug, PartialEq)]
pub enum NoiseMode {
    /// Fresh noise for every layer from a generator seeded with this value (the official default
    /// at test time is fresh *unseeded* noise, so outputs vary slightly between runs).
    Random(u64),
    /// One fixed noise map per layer, drawn once from this seed at the first decode's sizes and
    /// reused (nearest-resized) for every decode: the official `fix_noise`, as used by
    /// `simple_swapping`. Repeated swaps and every alpha of an interpolation share it.
    Fixed(u64),
    /// No noise.
    Zero,
}

impl Generator {
    /// The `(official path, [1, 1, h, w])` of every noise input for a structure code of spatial
    /// size `[h, w]`, in layer order.
    pub fn noise_shapes(&self, size: [usize; 2]) -> Vec<(String, [usize; 4])> {
        let [mut h, mut w] = size;
        let mut out = Vec::new();
        for i in 0..self.head.len() {
            for conv in ["conv1", "conv2"] {
                out.push((format!("{}.{conv}.noise", Self::head_name(i)), [1, 1, h, w]));
            }
        }
        for (j, block) in self.up.iter().enumerate() {
            h *= 2;
            w *= 2;
            if block.conv1.use_noise {
                for conv in ["conv1", "conv2"] {
                    out.push((format!("{}.{conv}.noise", Self::up_name(j)), [1, 1, h, w]));
                }
            }
        }
        out
    }

    /// One fixed `N(0, 1)` noise map per layer (batch 1, broadcast over any batch), as the
    /// official `fix_noise` draws them.
    pub fn fixed_noise(
        &self,
        size: [usize; 2],
        seed: u64,
        device: &Device,
    ) -> BTreeMap<String, Tensor<4>> {
        let mut rng = NoiseRng::seed(seed);
        self.noise_shapes(size)
            .into_iter()
            .map(|(path, shape)| (path, rng.sample(shape, device)))
            .collect()
    }
}

/// A decoder session: the model plus the noise policy, so that every output of one session is
/// reproducible.
pub struct Decoder<'a> {
    model: &'a SwappingAutoencoder,
    mode: NoiseMode,
    rng: NoiseRng,
    fixed: Option<BTreeMap<String, Tensor<4>>>,
}

impl<'a> Decoder<'a> {
    /// A session with the given noise policy.
    pub fn new(model: &'a SwappingAutoencoder, mode: NoiseMode) -> Self {
        let seed = match mode {
            NoiseMode::Random(s) | NoiseMode::Fixed(s) => s,
            NoiseMode::Zero => 0,
        };
        Decoder {
            model,
            mode,
            rng: NoiseRng::seed(seed),
            fixed: None,
        }
    }

    /// Encodes images in `[-1, 1]` (`[batch, 3, h, w]`).
    pub fn encode(&self, images: Tensor<4>) -> Codes {
        self.model.e.forward(images)
    }

    /// Decodes a structure code with a (global or spatially varying) texture code.
    ///
    /// # Shapes
    /// - `structure`: `[batch, C, h, w]`; `texture`: `[batch, D]` or `[batch, D, h', w']`
    /// - output: `[batch, 3, h·2^sp, w·2^sp]`, unbounded (clamp to save)
    pub fn decode(&mut self, structure: Tensor<4>, texture: Style) -> Tensor<4> {
        let g = &self.model.g;
        let noise = match self.mode {
            NoiseMode::Zero => GeneratorNoise::None,
            NoiseMode::Random(_) => GeneratorNoise::Random(&mut self.rng),
            NoiseMode::Fixed(seed) => {
                let [_, _, h, w] = structure.dims();
                let fixed = self
                    .fixed
                    .get_or_insert_with(|| g.fixed_noise([h, w], seed, &structure.device()));
                GeneratorNoise::Fixed(fixed)
            }
        };
        g.forward(structure, texture, noise)
    }

    /// The structure of `structure` with the texture of `texture` (both `[batch, 3, h, w]`;
    /// the texture image may have another size).
    pub fn swap(&mut self, structure: Tensor<4>, texture: Tensor<4>) -> Tensor<4> {
        let sp = self.encode(structure).structure;
        let gl = self.encode(texture).texture;
        self.decode(sp, Style::Global(gl))
    }

    /// The official `simple_swapping` evaluator: for each `α`,
    /// `G(sp, (1−α)·g_structure + α·g_texture)`; `α = 0` reconstructs, `α = 1` swaps. G
    /// renormalises the mixed code.
    pub fn interpolate(
        &mut self,
        structure: Tensor<4>,
        texture: Tensor<4>,
        alphas: &[f32],
    ) -> Vec<Tensor<4>> {
        let src = self.encode(structure);
        let tgt = self.encode(texture).texture;
        alphas
            .iter()
            .map(|&a| {
                let mix = src.texture.clone() * (1.0 - a) + tgt.clone() * a;
                self.decode(src.structure.clone(), Style::Global(mix))
            })
            .collect()
    }

    /// Region editing: texture `a` inside `mask`, texture `b` outside, as one spatially varying
    /// texture code `mask·a + (1 − mask)·b` at the mask's resolution, bilinearly resized by every
    /// layer. Works for any batch.
    ///
    /// # Shapes
    /// - `structure`: `[batch, C, h, w]`; `a`, `b`: `[batch, D]`; `mask`: `[batch or 1, 1, mh, mw]` in `[0, 1]`
    pub fn decode_masked(
        &mut self,
        structure: Tensor<4>,
        a: Tensor<2>,
        b: Tensor<2>,
        mask: Tensor<4>,
    ) -> Tensor<4> {
        let [batch, d] = a.dims();
        let [_, _, mh, mw] = mask.dims();
        let a = a.reshape([batch, d, 1, 1]);
        let b = b.reshape([batch, d, 1, 1]);
        let m = mask.expand([batch, 1, mh, mw]);
        let code = a * m.clone() + b * (m.neg() + 1.0);
        self.decode(structure, Style::Spatial(code))
    }
}

/// Adds `strength · direction` to the structure code inside `mask` (the paper's region editing
/// with a PCA direction of structure codes); the generator renormalises per pixel.
///
/// # Shapes
/// - `structure`: `[batch, C, h, w]`; `direction`: `[C]`; `mask`: `[batch or 1, 1, mh, mw]`,
///   nearest-resized to `h × w`
pub fn edit_structure(
    structure: Tensor<4>,
    direction: Tensor<1>,
    mask: Tensor<4>,
    strength: f32,
) -> Tensor<4> {
    let [b, c, h, w] = structure.dims();
    let m = nearest_resize(mask, [h, w]).expand([b, 1, h, w]);
    structure + direction.reshape([1, c, 1, 1]) * m * strength
}
