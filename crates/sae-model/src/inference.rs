//! Inference: encode, decode, swap, texture interpolation as the official `simple_swapping`
//! evaluator does it, region editing with a mask, structure-code editing, and noise control.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor, TensorData};
use sae_nn::{NoiseRng, Style, nearest_resize};

use crate::encoder::Codes;
use crate::generator::GeneratorNoise;
use crate::image_io::{ImageError, ImageTensor};
use crate::model::SwappingAutoencoder;

/// Stacks images of one size into a `[batch, 3, h, w]` tensor (values as they are, `[-1, 1]`
/// for images from [`crate::image_io`]).
///
/// # Errors
/// [`ImageError::BadShape`] for an empty list, a malformed image, or images of different sizes.
pub fn images_to_tensor(images: &[ImageTensor], device: &Device) -> Result<Tensor<4>, ImageError> {
    let Some(first) = images.first() else {
        return Err(ImageError::BadShape {
            height: 0,
            width: 0,
            expected: 0,
            len: 0,
        });
    };
    let (h, w) = (first.height, first.width);
    let mut data = Vec::with_capacity(images.len() * 3 * h * w);
    for img in images {
        let expected = 3 * img.height * img.width;
        if img.height != h || img.width != w || img.data.len() != expected || expected == 0 {
            return Err(ImageError::BadShape {
                height: img.height,
                width: img.width,
                expected: 3 * h * w,
                len: img.data.len(),
            });
        }
        data.extend_from_slice(&img.data);
    }
    Ok(Tensor::from_data(
        TensorData::new(data, [images.len(), 3, h, w]),
        device,
    ))
}

/// Splits a `[batch, 3, h, w]` tensor (a generator output, say) into one image per row, values
/// unchanged; [`crate::image_io::to_rgb8`] and [`crate::image_io::save_png`] take them on.
///
/// # Errors
/// [`ImageError::BadShape`] for a tensor without 3 channels.
pub fn tensor_to_images(t: Tensor<4>) -> Result<Vec<ImageTensor>, ImageError> {
    let [n, c, h, w] = t.dims();
    if c != 3 {
        return Err(ImageError::BadShape {
            height: h,
            width: w,
            expected: 3 * h * w,
            len: c * h * w,
        });
    }
    let data = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32");
    let plane = 3 * h * w;
    Ok((0..n)
        .map(|i| ImageTensor {
            height: h,
            width: w,
            data: data[i * plane..(i + 1) * plane].to_vec(),
        })
        .collect())
}

/// The texture mix of the official `simple_swapping` evaluator: `(1 − α)·a + α·b`; `α = 0`
/// gives `a`, `α = 1` gives `b`. The generator renormalises the result.
///
/// # Shapes
/// - `a`, `b`: `[batch, D]`; output: `[batch, D]`
pub fn mix_textures(a: Tensor<2>, b: Tensor<2>, alpha: f32) -> Tensor<2> {
    a * (1.0 - alpha) + b * alpha
}

/// The encoder's trunk ([`crate::Encoder::midpoint`]) on a structure and a texture image, for
/// a swap or an interpolation, which then need branches only (never the texture image's
/// structure code): one pass over both when they have one shape (one batch: the large weights
/// of its small planes are streamed once, not twice), else one each.
struct Midpoints {
    /// The trunk's features: of both batches, structure images first (`texture` is `None`),
    /// or of the structure images alone.
    mid: Tensor<4>,
    /// The texture images' features, where they ran alone.
    texture: Option<Tensor<4>>,
    /// The structure batch.
    batch: usize,
}

impl Midpoints {
    fn of(e: &crate::Encoder, structure: Tensor<4>, texture: Tensor<4>) -> Self {
        let batch = structure.dims()[0];
        if structure.dims() != texture.dims() {
            return Self {
                mid: e.midpoint(structure),
                texture: Some(e.midpoint(texture)),
                batch,
            };
        }
        let mid = e.midpoint(Tensor::cat(vec![structure, texture], 0));
        Self {
            mid,
            texture: None,
            batch,
        }
    }

    /// The structure images' features and the texture images'.
    fn split(self) -> (Tensor<4>, Tensor<4>) {
        match self.texture {
            Some(texture) => (self.mid, texture),
            None => (
                self.mid.clone().narrow(0, 0, self.batch),
                self.mid.narrow(0, self.batch, self.batch),
            ),
        }
    }
}

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
    /// the texture image may have another size). Only the codes a swap uses are computed: the
    /// structure image's structure code and the texture image's texture code.
    ///
    /// # Panics
    /// If an image is not RGB or too small for the encoder (the texture image for its texture
    /// branch too: [`crate::EncoderConfig::min_input_size`]), or if the two batch sizes differ
    /// (the generator's style modulation names both).
    pub fn swap(&mut self, structure: Tensor<4>, texture: Tensor<4>) -> Tensor<4> {
        let e = &self.model.e;
        let (ms, mt) = Midpoints::of(e, structure, texture).split();
        let (sp, gl) = (e.structure_from_midpoint(ms), e.texture_from_midpoint(mt));
        self.decode(sp, Style::Global(gl))
    }

    /// The official `simple_swapping` evaluator: for each `α`,
    /// `G(sp, (1−α)·g_structure + α·g_texture)`; `α = 0` reconstructs, `α = 1` swaps. G
    /// renormalises the mixed code. As in [`Decoder::swap`], the texture image's structure
    /// code is not computed, and images of one shape share one pass through the encoder's
    /// trunk.
    ///
    /// A texture batch of 1 is mixed into every structure image (its code broadcasts).
    ///
    /// # Panics
    /// If an image is not RGB or too small for the encoder and its texture branch
    /// ([`crate::EncoderConfig::min_input_size`]; both images need the texture branch here), or
    /// if the texture batch is neither 1 nor the structure batch (Burn's shape error names
    /// both).
    ///
    /// # Shapes
    /// - `structure`: `[batch, 3, h, w]`; `texture`: `[batch, 3, h', w']`
    /// - output: one `[batch, 3, h, w]` image per alpha
    pub fn interpolate(
        &mut self,
        structure: Tensor<4>,
        texture: Tensor<4>,
        alphas: &[f32],
    ) -> Vec<Tensor<4>> {
        let e = &self.model.e;
        let m = Midpoints::of(e, structure, texture);
        let batch = m.batch;
        let (src, tgt) = match m.texture {
            // Both texture codes from one pass through the texture branch (its last
            // convolution's weight is the encoder's largest).
            None => {
                let both = e.texture_from_midpoint(m.mid.clone());
                let codes = Codes {
                    structure: e.structure_from_midpoint(m.mid.narrow(0, 0, batch)),
                    texture: both.clone().narrow(0, 0, batch),
                };
                (codes, both.narrow(0, batch, batch))
            }
            Some(texture) => {
                let codes = Codes {
                    structure: e.structure_from_midpoint(m.mid.clone()),
                    texture: e.texture_from_midpoint(m.mid),
                };
                (codes, e.texture_from_midpoint(texture))
            }
        };
        self.interpolate_codes(&src, tgt, alphas, None)
    }

    /// [`Decoder::interpolate`] on codes already computed (encode once, decode many), with an
    /// optional region: with a `mask`, the mixed texture applies inside it and the structure
    /// image's own texture outside ([`Decoder::decode_masked`]).
    ///
    /// # Shapes
    /// - `codes`: the structure image's, `[batch, C, h, w]` and `[batch, D]`; `texture`:
    ///   `[batch, D]`; `mask`: `[batch or 1, 1, mh, mw]` in `[0, 1]`
    /// - output: one `[batch, 3, h·2^sp, w·2^sp]` image per alpha
    pub fn interpolate_codes(
        &mut self,
        codes: &Codes,
        texture: Tensor<2>,
        alphas: &[f32],
        mask: Option<&Tensor<4>>,
    ) -> Vec<Tensor<4>> {
        alphas
            .iter()
            .map(|&a| {
                let mix = mix_textures(codes.texture.clone(), texture.clone(), a);
                let structure = codes.structure.clone();
                match mask {
                    Some(m) => self.decode_masked(structure, mix, codes.texture.clone(), m.clone()),
                    None => self.decode(structure, Style::Global(mix)),
                }
            })
            .collect()
    }

    /// Region editing: texture `a` inside `mask`, texture `b` outside, as one spatially varying
    /// texture code `mask·a + (1 − mask)·b` at the mask's resolution, bilinearly resized by every
    /// layer (as [`Style::Blend`], which never builds the `[batch, D, mh, mw]` code). Works for
    /// any batch.
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
        let [batch, _] = a.dims();
        let [_, _, mh, mw] = mask.dims();
        let m = mask.expand([batch, 1, mh, mw]);
        let style = Style::Blend {
            a,
            b,
            wb: m.clone().neg() + 1.0,
            wa: m,
        };
        self.decode(structure, style)
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
