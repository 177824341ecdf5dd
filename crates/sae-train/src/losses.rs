//! The official losses (`models/swapping_autoencoder_model.py`): the discriminator step, the lazy
//! R1 step and the generator step, with the official weights, the pairwise swap and the per-GPU
//! chunking.
//!
//! Every term is a mean over its own sample set, already multiplied by its weight; the step's
//! loss is the sum of its terms (the official optimizer's `sum(v.mean() for v in losses)`).

use std::collections::BTreeMap;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use sae_model::{Codes, Discriminator, Encoder, Generator, GeneratorNoise, PatchDiscriminator};
use sae_nn::{CropDraws, CropError, NoiseRng, PatchSampler, Style};
use serde::{Deserialize, Serialize};

/// The official loss weights and batch semantics (see `docs/training.md`), with their defaults.
#[derive(Config, Debug, PartialEq)]
pub struct LossConfig {
    /// `lambda_L1`: the reconstruction L1.
    #[config(default = 1.0)]
    pub lambda_l1: f64,
    /// `lambda_GAN`: the image GAN terms.
    #[config(default = 1.0)]
    pub lambda_gan: f64,
    /// `lambda_PatchGAN`: the co-occurrence terms.
    #[config(default = 1.0)]
    pub lambda_patch_gan: f64,
    /// `lambda_R1`: `r1_D = lambda_R1 · 0.5 · ‖∇‖²`.
    #[config(default = 10.0)]
    pub lambda_r1: f64,
    /// `lambda_patch_R1`: `r1_patch = 0.5 · lambda_patch_R1 · 0.5 · (‖∇ref‖² + ‖∇tgt‖²)`
    /// (10 for the mountain presets).
    #[config(default = 1.0)]
    pub lambda_patch_r1: f64,
    /// `R1_once_every`: lazy R1 after every k-th D step, scaled by k.
    #[config(default = 16)]
    pub r1_once_every: usize,
    /// `patch_use_aggregation`: reference features are the mean over an image's crops (false
    /// for the church and bedroom `_default` runs).
    #[config(default = true)]
    pub patch_use_aggregation: bool,
    /// The official run's GPU count. The batch is split into this many contiguous chunks and
    /// each chunk swaps and reconstructs on its own, as under the official `nn.DataParallel`
    /// (see `docs/training.md`): with 4 chunks of 4, images 0, 1, 4, 5, 8, 9, 12, 13 are
    /// reconstructed.
    #[config(default = 1)]
    pub num_gpus: usize,
    /// Ours, not official (off in every official preset): the generator step reconstructs
    /// each image from the structure code of a colour-jittered copy of it (its RGB channels
    /// permuted and some of them negated, one of 48 maps drawn per image) and the texture code
    /// of the image itself. The structure code then cannot carry the colours, so they have to
    /// come from the texture code: what a swap needs (`docs/training.md`, "The quickstart
    /// recipe"). Costs one more encoder pass over the reconstructed half of the batch.
    #[config(default = false)]
    pub structure_colour_jitter: bool,
}

/// Why a batch cannot go through a training step.
#[derive(Debug, thiserror::Error)]
pub enum LossError {
    /// The batch does not split into `num_gpus` chunks of an even size.
    #[error(
        "batch {batch} does not split into {num_gpus} chunks of an even size (swap pairs neighbours and reconstruction takes half of each chunk)"
    )]
    OddBatch {
        /// The batch size.
        batch: usize,
        /// The chunk count.
        num_gpus: usize,
    },
    /// The patch sampler refused the batch or the draws.
    #[error(transparent)]
    Crop(#[from] CropError),
    /// The batch's host data does not hold `shape`'s number of values.
    #[error("batch data of {values} values does not fill the shape {shape:?}")]
    BatchData {
        /// Values given.
        values: usize,
        /// The batch shape `[b, c, h, w]`.
        shape: [usize; 4],
    },
    /// A colour map of [`colour_jitter`] needs RGB images.
    #[error("colour jitter permutes RGB channels, but the images have {channels}")]
    NotRgb {
        /// The images' channel count.
        channels: usize,
    },
    /// An augmentation got a number of draws that does not fit its batch.
    #[error("{what}: {got} draws for a batch that needs {want}")]
    Draws {
        /// The augmentation.
        what: &'static str,
        /// Draws needed.
        want: usize,
        /// Draws given.
        got: usize,
    },
    /// A data-parallel replica's thread could not be started.
    #[error("starting a replica thread: {0}")]
    Thread(String),
}

impl LossConfig {
    /// Checks that `batch` splits into even chunks.
    ///
    /// # Errors
    /// [`LossError::OddBatch`].
    pub fn check_batch(&self, batch: usize) -> Result<(), LossError> {
        let n = self.num_gpus;
        if n == 0 || batch == 0 || !batch.is_multiple_of(n) || !(batch / n).is_multiple_of(2) {
            return Err(LossError::OddBatch { batch, num_gpus: n });
        }
        Ok(())
    }

    /// The images that are reconstructed: the first half of every chunk.
    pub fn rec_indices(&self, batch: usize) -> Vec<usize> {
        let m = batch / self.num_gpus;
        (0..self.num_gpus)
            .flat_map(|c| c * m..c * m + m / 2)
            .collect()
    }
}

/// `swap`: `[x0, x1, x2, x3, …] → [x1, x0, x3, x2, …]`, the partner inside each pair (and so
/// inside each chunk).
pub fn swap_indices(batch: usize) -> Vec<usize> {
    (0..batch).map(|i| i ^ 1).collect()
}

/// The rows `idx` of a batch.
fn select_rows<const D: usize>(x: Tensor<D>, idx: &[usize]) -> Tensor<D> {
    let device = x.device();
    let idx: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    let n = idx.len();
    x.select(
        0,
        Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), &device),
    )
}

/// `softplus(x) = log(1 + eˣ)`, in the overflow-free form `relu(x) + log1p(e^−|x|)`.
pub fn softplus<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    relu(x.clone()) + x.abs().neg().exp().log1p()
}

/// The non-saturating logistic GAN loss averaged over the samples: `mean softplus(−pred)` when
/// `pred` should be real, `mean softplus(pred)` otherwise. D outputs one logit per sample, so
/// the official per-sample mean followed by the batch mean is this single mean.
pub fn gan_loss(pred: Tensor<2>, should_be_real: bool) -> Tensor<1> {
    let x = if should_be_real { pred.neg() } else { pred };
    softplus(x).mean()
}

/// Where the random crops and the generator noise of a step come from.
///
/// Calls happen in the official order: D step — noise of G(rec), noise of G(mix), crops of the
/// reference, the target and the swap; R1 — crops of the reference and the target; G step —
/// noise of G(rec), noise of G(mix), crops of the reference and the swap.
pub trait Randomness {
    /// Crop draws for `batch` images.
    fn crop_draws(&mut self, sampler: &PatchSampler, batch: usize) -> CropDraws;
    /// The noise of one generator pass.
    fn noise(&mut self) -> GeneratorNoise<'_>;
    /// `per_image` integers below `below` for each of `batch` images (the colour maps of
    /// [`colour_jitter`]); drawn only by the augmentation that is ours
    /// ([`LossConfig::structure_colour_jitter`]).
    fn integers(&mut self, batch: usize, per_image: usize, below: usize) -> Vec<usize>;
}

/// The number of colour maps of [`colour_jitter`]: 6 channel orders × 8 sign patterns.
pub const COLOUR_MAPS: usize = 48;

/// Each image's RGB channels permuted and negated by its map: map `m` takes the channel order
/// `m / 8` (of the 6, in lexicographic order: output channel `k` is input channel
/// `order[k]`) and negates output channel `k` where bit `k` of `m % 8` is set. Images live in [−1, 1], so every map keeps them there and keeps the layout exactly.
///
/// # Shapes
/// `x`: `[b, 3, h, w]`, `maps`: `b` indices (taken modulo [`COLOUR_MAPS`]); output as `x`.
///
/// # Errors
/// [`LossError::NotRgb`], [`LossError::Draws`] for a map count other than `b`.
pub fn colour_jitter(x: Tensor<4>, maps: &[usize]) -> Result<Tensor<4>, LossError> {
    const ORDERS: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let [b, c, h, w] = x.dims();
    if c != 3 {
        return Err(LossError::NotRgb { channels: c });
    }
    if maps.len() != b {
        return Err(LossError::Draws {
            what: "colour jitter",
            want: b,
            got: maps.len(),
        });
    }
    let mut m = vec![0f32; b * 9];
    for (i, &map) in maps.iter().enumerate() {
        let map = map % COLOUR_MAPS;
        let order = ORDERS[map / 8];
        for (out, &src) in order.iter().enumerate() {
            let sign = if (map % 8) >> out & 1 == 1 { -1.0 } else { 1.0 };
            m[i * 9 + out * 3 + src] = sign;
        }
    }
    let device = x.device();
    let m = Tensor::<3>::from_data(TensorData::new(m, [b, 3, 3]), &device);
    Ok(m.matmul(x.reshape([b, 3, h * w])).reshape([b, 3, h, w]))
}

/// The training randomness: two seeded, serialisable generators (crops and noise), so a
/// checkpoint resumes the exact sequence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeededRandomness {
    crops: Xoshiro256PlusPlus,
    noise: NoiseRng,
}

impl SeededRandomness {
    /// Both generators derived from `seed`.
    pub fn seed(seed: u64) -> Self {
        Self {
            crops: Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5eed_c40b),
            noise: NoiseRng::seed(seed ^ 0x0015_e000),
        }
    }
}

impl Randomness for SeededRandomness {
    fn crop_draws(&mut self, sampler: &PatchSampler, batch: usize) -> CropDraws {
        sampler.draw(&mut self.crops, batch)
    }

    fn noise(&mut self) -> GeneratorNoise<'_> {
        GeneratorNoise::Random(&mut self.noise)
    }

    fn integers(&mut self, batch: usize, per_image: usize, below: usize) -> Vec<usize> {
        // From the crop generator: no official preset draws these, so their sequences stay
        // the official ones.
        (0..batch * per_image)
            .map(|_| self.crops.random_range(0..below))
            .collect()
    }
}

/// Shard `index` of `of` of a batch's randomness: the crops and noise the images of one
/// data-parallel replica get when the whole batch (`of` equal shards) is drawn at once. Each
/// replica draws the whole batch's randomness from its own copy of the generators and keeps its
/// block of rows, so N devices train exactly what one device does (up to float summation order),
/// and every copy ends in the same state.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardRandomness {
    inner: SeededRandomness,
    index: usize,
    of: usize,
}

impl ShardRandomness {
    /// Shard `index` of `of`, drawing from a copy of `inner`.
    ///
    /// # Panics
    /// If `index >= of`.
    pub fn new(inner: SeededRandomness, index: usize, of: usize) -> Self {
        assert!(index < of, "shard {index} of {of}");
        Self { inner, index, of }
    }

    /// The generators, advanced as for the whole batch.
    pub fn into_inner(self) -> SeededRandomness {
        self.inner
    }
}

impl Randomness for ShardRandomness {
    fn crop_draws(&mut self, sampler: &PatchSampler, batch: usize) -> CropDraws {
        let whole = self.inner.crop_draws(sampler, batch * self.of);
        // `batch · of` images make `of` equal blocks and `index < of` (checked in `new`).
        whole
            .shard(self.index, self.of)
            .expect("the whole batch's draws split into equal shards")
    }

    fn noise(&mut self) -> GeneratorNoise<'_> {
        GeneratorNoise::Shard {
            rng: &mut self.inner.noise,
            index: self.index,
            of: self.of,
        }
    }

    fn integers(&mut self, batch: usize, per_image: usize, below: usize) -> Vec<usize> {
        let whole = self.inner.integers(batch * self.of, per_image, below);
        let n = batch * per_image;
        whole[self.index * n..(self.index + 1) * n].to_vec()
    }
}

/// The four networks a training step reads.
#[derive(Clone, Copy)]
pub struct Nets<'a> {
    /// Encoder.
    pub e: &'a Encoder,
    /// Generator.
    pub g: &'a Generator,
    /// Image discriminator.
    pub d: &'a Discriminator,
    /// Patch discriminator.
    pub dpatch: &'a PatchDiscriminator,
}

/// The named, weighted terms of one step.
pub struct Losses {
    /// `(name, weighted mean)` in the official order; names are the official keys.
    pub terms: Vec<(&'static str, Tensor<1>)>,
    /// Unweighted diagnostics that are not optimised (`L1_dist`).
    pub metrics: Vec<(&'static str, Tensor<1>)>,
}

impl Losses {
    /// The step's loss: the sum of the terms.
    pub fn total(&self) -> Tensor<1> {
        let mut it = self.terms.iter().map(|(_, t)| t.clone());
        let first = it.next().expect("a step has at least one loss term");
        it.fold(first, |a, b| a + b)
    }
}

/// `rec = G(sp[rec], gl[rec])` and `mix = G(swap(sp), gl)`, decoded as one generator pass
/// over both batches (the generator treats samples independently) with the noise two separate
/// passes would draw, rec's first (see [`Generator::draw_noise`]).
/// `rec_structure` replaces `sp[rec]` (the code of the colour-jittered copies).
fn decode_rec_mix(
    g: &Generator,
    codes: &Codes,
    rec_structure: Option<Tensor<4>>,
    cfg: &LossConfig,
    rnd: &mut dyn Randomness,
) -> (Tensor<4>, Tensor<4>) {
    let [b, _, h, w] = codes.structure.dims();
    let device = codes.structure.device();
    let rec_idx = cfg.rec_indices(b);
    let n_rec = rec_idx.len();
    let rec_noise = g.draw_noise(rnd.noise(), n_rec, [h, w], &device);
    let mut mix_noise = g.draw_noise(rnd.noise(), b, [h, w], &device);
    // A layer with noise in one pass only (scripted noise in tests) gets zeros, which adds
    // nothing, in the other.
    let zeros = |t: &Tensor<4>, rows: usize| {
        let [_, _, nh, nw] = t.dims();
        Tensor::<4>::zeros([rows, 1, nh, nw], &device)
    };
    let mut noise = BTreeMap::new();
    for (path, rec) in rec_noise {
        let mix = mix_noise.remove(&path).unwrap_or_else(|| zeros(&rec, b));
        noise.insert(path, Tensor::cat(vec![rec, mix], 0));
    }
    for (path, mix) in mix_noise {
        noise.insert(path, Tensor::cat(vec![zeros(&mix, n_rec), mix], 0));
    }
    let structure = Tensor::cat(
        vec![
            rec_structure.unwrap_or_else(|| select_rows(codes.structure.clone(), &rec_idx)),
            select_rows(codes.structure.clone(), &swap_indices(b)),
        ],
        0,
    );
    let texture = Tensor::cat(
        vec![
            select_rows(codes.texture.clone(), &rec_idx),
            codes.texture.clone(),
        ],
        0,
    );
    let out = g.forward(
        structure,
        Style::Global(texture),
        GeneratorNoise::Fixed(&noise),
    );
    (out.clone().narrow(0, 0, n_rec), out.narrow(0, n_rec, b))
}

fn crops(
    sampler: &PatchSampler,
    x: Tensor<4>,
    rnd: &mut dyn Randomness,
) -> Result<Tensor<5>, LossError> {
    let draws = rnd.crop_draws(sampler, x.dims()[0]);
    Ok(sampler.apply(x, &draws)?)
}

/// The discriminator step (official `compute_discriminator_losses`). E and G run frozen; the
/// result's total trains D and Dpatch.
///
/// # Errors
/// [`LossError::OddBatch`] for a batch that does not split into even chunks.
pub fn discriminator_losses(
    nets: Nets<'_>,
    real: Tensor<4>,
    cfg: &LossConfig,
    sampler: &PatchSampler,
    rnd: &mut dyn Randomness,
) -> Result<Losses, LossError> {
    cfg.check_batch(real.dims()[0])?;
    let (e, g) = (nets.e.clone().no_grad(), nets.g.clone().no_grad());
    let codes = e.forward(real.clone().detach());
    let (rec, mix) = decode_rec_mix(&g, &codes, None, cfg, rnd);
    let (rec, mix) = (rec.detach(), mix.detach());
    let rec_real = select_rows(real.clone(), &cfg.rec_indices(real.dims()[0]));
    let l1_dist = (rec.clone() - rec_real).abs().mean().detach();
    let lg = cfg.lambda_gan;
    // One D pass over real, rec and mix (D treats samples independently; see forward_many).
    let [pred_real, pred_rec, pred_mix]: [Tensor<2>; 3] = nets
        .d
        .forward_many(vec![real.clone(), rec, mix.clone()])
        .try_into()
        .expect("three batches in, three out");
    let d_real = gan_loss(pred_real, true) * lg;
    let d_rec = gan_loss(pred_rec, false) * (0.5 * lg);
    let d_mix = gan_loss(pred_mix, false) * (0.5 * lg);
    let dp = nets.dpatch;
    let agg = cfg.patch_use_aggregation;
    let reference = crops(sampler, real.clone(), rnd)?;
    let target = crops(sampler, real, rnd)?;
    let fake = crops(sampler, mix, rnd)?;
    let [reference, target, fake]: [Tensor<4>; 3] = dp
        .extract_features_many(vec![(reference, agg), (target, false), (fake, false)])
        .try_into()
        .expect("three sets in, three out");
    let lp = cfg.lambda_patch_gan;
    let patch_real = gan_loss(dp.discriminate_features(reference.clone(), target), true) * lp;
    let patch_mix = gan_loss(dp.discriminate_features(reference, fake), false) * lp;
    Ok(Losses {
        terms: vec![
            ("D_real", d_real),
            ("D_rec", d_rec),
            ("D_mix", d_mix),
            ("PatchD_real", patch_real),
            ("PatchD_mix", patch_mix),
        ],
        metrics: vec![("L1_dist", l1_dist)],
    })
}

/// The lazy R1 step (official `compute_R1_loss`): `D_R1 = k·mean_b(λ_R1/2 · ‖∂ΣD/∂x‖²)` and
/// `PatchD_R1 = k·mean_b(λ_patch_R1/4 · (‖∂p/∂ref‖² + ‖∂p/∂tgt‖²))` on fresh crops of `real`,
/// both exact: the input gradients are the hand-written VJPs of
/// [`Discriminator::input_gradient`] and [`PatchDiscriminator::input_gradients`], so the
/// ordinary backward of this loss gives PyTorch's double-backward parameter gradients.
///
/// # Errors
/// [`LossError::Crop`] if the sampler refuses the batch.
pub fn r1_losses(
    nets: Nets<'_>,
    real: Tensor<4>,
    cfg: &LossConfig,
    sampler: &PatchSampler,
    rnd: &mut dyn Randomness,
) -> Result<Losses, LossError> {
    let real = real.detach();
    let b = real.dims()[0] as f64;
    let k = cfg.r1_once_every as f64;
    let gx = nets.d.input_gradient(real.clone());
    let d_r1 = gx.square().sum() * (cfg.lambda_r1 * 0.5 * k / b);
    let rc = crops(sampler, real.clone(), rnd)?;
    let tc = crops(sampler, real, rnd)?;
    let (gr, gt) = nets
        .dpatch
        .input_gradients(rc, tc, cfg.patch_use_aggregation);
    let patch = (gr.square().sum() + gt.square().sum()) * (0.5 * cfg.lambda_patch_r1 * 0.5 * k / b);
    Ok(Losses {
        terms: vec![("D_R1", d_r1), ("PatchD_R1", patch)],
        metrics: vec![],
    })
}

/// The generator step (official `compute_generator_losses`). D and Dpatch run frozen (gradients
/// flow through them to E and G only); the result's total trains E and G. With
/// [`LossConfig::structure_colour_jitter`] (ours) the reconstructions take their structure
/// codes from colour-jittered copies ([`colour_jitter`]), drawn before the crops.
///
/// # Errors
/// [`LossError::OddBatch`] for a batch that does not split into even chunks,
/// [`LossError::NotRgb`] for colour jitter on images that are not RGB.
pub fn generator_losses(
    nets: Nets<'_>,
    real: Tensor<4>,
    cfg: &LossConfig,
    sampler: &PatchSampler,
    rnd: &mut dyn Randomness,
) -> Result<Losses, LossError> {
    let b = real.dims()[0];
    cfg.check_batch(b)?;
    let (d, dp) = (nets.d.clone().no_grad(), nets.dpatch.clone().no_grad());
    let real = real.detach();
    let rec_idx = cfg.rec_indices(b);
    let rec_real = select_rows(real.clone(), &rec_idx);
    let (codes, rec_structure) = if cfg.structure_colour_jitter {
        // One encoder pass over the batch and the jittered copies of its reconstructed half.
        let n = rec_idx.len();
        let maps = rnd.integers(n, 1, COLOUR_MAPS);
        let jittered = colour_jitter(rec_real.clone(), &maps)?;
        let all = nets.e.forward(Tensor::cat(vec![real.clone(), jittered], 0));
        let codes = Codes {
            structure: all.structure.clone().narrow(0, 0, b),
            texture: all.texture.narrow(0, 0, b),
        };
        (codes, Some(all.structure.narrow(0, b, n)))
    } else {
        (nets.e.forward(real.clone()), None)
    };
    let (rec, mix) = decode_rec_mix(nets.g, &codes, rec_structure, cfg, rnd);
    let l1 = (rec.clone() - rec_real).abs().mean();
    let l1_dist = l1.clone().detach();
    let lg = cfg.lambda_gan;
    let [pred_rec, pred_mix]: [Tensor<2>; 2] = d
        .forward_many(vec![rec, mix.clone()])
        .try_into()
        .expect("two batches in, two out");
    let gan_rec = gan_loss(pred_rec, true) * (0.5 * lg);
    let gan_mix = gan_loss(pred_mix, true) * lg;
    let agg = cfg.patch_use_aggregation;
    // Separate passes here: the reference features take no gradient, and in one pass with the
    // swapped crops backward would run through their rows as well.
    let reference = dp
        .extract_features(crops(sampler, real, rnd)?, agg)
        .detach();
    let fake = dp.extract_features(crops(sampler, mix, rnd)?, false);
    let g_mix = gan_loss(dp.discriminate_features(reference, fake), true) * cfg.lambda_patch_gan;
    Ok(Losses {
        terms: vec![
            ("G_L1", l1 * cfg.lambda_l1),
            ("G_GAN_rec", gan_rec),
            ("G_GAN_mix", gan_mix),
            ("G_mix", g_mix),
        ],
        metrics: vec![("L1_dist", l1_dist)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(b: usize, c: usize, h: usize, w: usize) -> (Vec<f32>, Tensor<4>) {
        let v: Vec<f32> = (0..b * c * h * w).map(|i| i as f32 * 0.01 - 1.0).collect();
        let device = Default::default();
        let t = Tensor::from_data(TensorData::new(v.clone(), [b, c, h, w]), &device);
        (v, t)
    }

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn colour_jitter_permutes_and_negates_each_images_channels() {
        let (v, x) = image(3, 3, 2, 2);
        // Map 0: identity; 8·3 + 0b101: order [1, 2, 0], channels 0 and 2 negated; 47: order
        // [2, 1, 0], all negated.
        let y = values(colour_jitter(x, &[0, 8 * 3 + 0b101, 47]).unwrap());
        let px = 4;
        let at = |b: usize, c: usize| &v[(b * 3 + c) * px..][..px];
        let neg = |s: &[f32]| s.iter().map(|x| -x).collect::<Vec<_>>();
        let want: Vec<f32> = [
            at(0, 0).to_vec(),
            at(0, 1).to_vec(),
            at(0, 2).to_vec(),
            neg(at(1, 1)),
            at(1, 2).to_vec(),
            neg(at(1, 0)),
            neg(at(2, 2)),
            neg(at(2, 1)),
            neg(at(2, 0)),
        ]
        .concat();
        assert_eq!(y, want);
        // Every map keeps [−1, 1] and is one of 48 distinct maps.
        let (_, x) = image(1, 3, 1, 1);
        let maps: std::collections::BTreeSet<Vec<u32>> = (0..COLOUR_MAPS)
            .map(|m| {
                let y = values(colour_jitter(x.clone(), &[m]).unwrap());
                assert!(y.iter().all(|v| v.abs() <= 1.0));
                y.iter().map(|v| v.to_bits()).collect()
            })
            .collect();
        assert_eq!(maps.len(), COLOUR_MAPS);
    }

    #[test]
    fn colour_jitter_refuses_what_is_not_one_rgb_map_per_image() {
        let (_, gray) = image(2, 1, 2, 2);
        let err = colour_jitter(gray, &[0, 1]).unwrap_err().to_string();
        assert!(err.contains("have 1"), "{err}");
        let (_, x) = image(2, 3, 2, 2);
        assert!(matches!(
            colour_jitter(x, &[0]),
            Err(LossError::Draws {
                want: 2,
                got: 1,
                ..
            })
        ));
    }
}
