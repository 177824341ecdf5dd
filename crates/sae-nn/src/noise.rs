//! Per-pixel noise injection (official `models/networks/stylegan2_layers.py::NoiseInjection`)
//! and the three ways a caller feeds it.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::resample::nearest_resize;
use crate::shape::check_nonempty;

/// A seeded, serialisable source of `N(0, 1)` noise.
///
/// Noise is drawn on the host and uploaded, so the same seed gives the same noise on every
/// backend (a swap computed on CPU and on a GPU differs only by float rounding), and the RNG
/// state can be checkpointed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseRng {
    rng: Xoshiro256PlusPlus,
}

impl NoiseRng {
    /// A generator seeded with `seed`.
    pub fn seed(seed: u64) -> Self {
        Self {
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
        }
    }

    /// `[b, 1, h, w]` standard normal noise on `device`.
    pub fn sample(&mut self, shape: [usize; 4], device: &Device) -> Tensor<4> {
        self.sample_shard(shape, 0, 1, device)
    }

    /// Rows `index·b .. (index+1)·b` of the `[of·b, 1, h, w]` noise that [`NoiseRng::sample`]
    /// would draw for the whole batch (`shape` is `[b, 1, h, w]`, one shard): a data-parallel
    /// replica holding shard `index` of `of` equal shards gets exactly the noise its images get
    /// in one pass over the whole batch. The generator advances as for the whole batch.
    ///
    /// # Panics
    /// If `index >= of`.
    pub fn sample_shard(
        &mut self,
        shape: [usize; 4],
        index: usize,
        of: usize,
        device: &Device,
    ) -> Tensor<4> {
        assert!(index < of, "noise shard {index} of {of}");
        let n: usize = shape.iter().product();
        let mut values: Vec<f32> = (0..n * of)
            .map(|_| StandardNormal.sample(&mut self.rng))
            .collect();
        values.drain(..index * n);
        values.truncate(n);
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}

/// What a [`NoiseInjection`] adds: the caller's choice, per call.
pub enum Noise<'a> {
    /// Fresh `N(0, 1)` noise `[batch, 1, h, w]` from this generator (the official behaviour in
    /// training and in most evaluators).
    Random(&'a mut NoiseRng),
    /// Shard `index` of `of` of the noise `Random` would draw for `of` times this batch (see
    /// [`NoiseRng::sample_shard`]): data-parallel training, one shard per device.
    Shard {
        /// The generator, advanced as for the whole batch.
        rng: &'a mut NoiseRng,
        /// Which shard this batch is.
        index: usize,
        /// How many equal shards the whole batch has.
        of: usize,
    },
    /// A caller-supplied `[1 or batch, 1, h', w']` tensor, nearest-resized to the layer's size
    /// when it differs (the official `fix_noise`).
    Fixed(&'a Tensor<4>),
    /// No noise (numerically the same as zero noise; also what `use_noise = false` does).
    None,
}

impl Noise<'_> {
    /// Re-borrows, so one `Noise` can be passed to several layers in turn.
    pub fn reborrow(&mut self) -> Noise<'_> {
        match self {
            Noise::Random(rng) => Noise::Random(rng),
            Noise::Shard { rng, index, of } => Noise::Shard {
                rng,
                index: *index,
                of: *of,
            },
            Noise::Fixed(t) => Noise::Fixed(t),
            Noise::None => Noise::None,
        }
    }
}

/// Configuration of a [`NoiseInjection`] (it has no options; the official layer has none).
#[derive(Config, Debug)]
pub struct NoiseInjectionConfig {}

impl NoiseInjectionConfig {
    /// The noise strength starts at 0, as in the official code.
    pub fn init(&self, device: &Device) -> NoiseInjection {
        NoiseInjection {
            weight: Initializer::Zeros.init([1], device),
        }
    }
}

/// The official `NoiseInjection`: `x + weight · n`, one noise channel broadcast over all
/// channels. State key: `weight` `[1]`.
#[derive(Module, Debug)]
pub struct NoiseInjection {
    /// Learned noise strength, shape `[1]`.
    pub weight: Param<Tensor<1>>,
}

impl NoiseInjection {
    /// Adds the noise.
    ///
    /// # Shapes
    /// - `x`: `[batch, channels, h, w]`; output: same
    /// - fixed noise: `[1 or batch, 1, h', w']`
    ///
    /// # Panics
    /// If fixed noise has more than one channel or a batch that is neither 1 nor `batch`.
    pub fn forward(&self, x: Tensor<4>, noise: Noise<'_>) -> Tensor<4> {
        check_nonempty("NoiseInjection", "x", &x.dims());
        let [b, _, h, w] = x.dims();
        let n = match noise {
            Noise::None => return x,
            Noise::Random(rng) => rng.sample([b, 1, h, w], &x.device()),
            Noise::Shard { rng, index, of } => {
                rng.sample_shard([b, 1, h, w], index, of, &x.device())
            }
            Noise::Fixed(t) => {
                let [nb, nc, _, _] = t.dims();
                assert!(
                    nc == 1 && (nb == 1 || nb == b),
                    "NoiseInjection: fixed noise must be [1 or {b}, 1, h, w], got {:?}",
                    t.dims()
                );
                nearest_resize(t.clone(), [h, w])
            }
        };
        x + n * self.weight.val().reshape([1, 1, 1, 1])
    }
}
