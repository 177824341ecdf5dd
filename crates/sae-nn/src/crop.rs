//! The patch sampler of the co-occurrence discriminator (the official
//! `util/util.py::apply_random_crop`).
//!
//! Each image gets `num_crops` axis-aligned crops with independent x/y scales in
//! `[min_scale, max_scale]` of the side, a random offset and a random horizontal flip, resampled
//! to `patch_size × patch_size` with `grid_sample(bilinear, zeros, align_corners=False)`
//! semantics. Because the crops are axis-aligned, bilinear sampling is separable: crop `n` is
//! `A_y[n] · x · A_x[n]ᵀ` with sparse `[P, H]` and `[P, W]` interpolation matrices. Two batched
//! matmuls compute every crop of the batch exactly as `grid_sample` would (zero padding
//! included), differentiate on every backend, and cost far less than Burn's gather-based
//! `grid_sample` on CPU.

use burn::config::Config;
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::shape::check_nonempty;

/// An invalid sampler configuration or a draw set that does not fit the batch.
#[derive(Debug, Error, PartialEq)]
pub enum CropError {
    /// A configuration value is out of range.
    #[error("patch sampler: {field} = {value} is invalid: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        reason: &'static str,
    },
    /// The draws were made for another number of crops.
    #[error(
        "patch sampler: the draws hold {found} crops but the batch needs {expected} ({batch} images × {num_crops} crops)"
    )]
    DrawCount {
        /// `batch · num_crops`.
        expected: usize,
        /// Crops in the draws.
        found: usize,
        /// Batch size.
        batch: usize,
        /// Crops per image.
        num_crops: usize,
    },
    /// The draw vectors disagree in length.
    #[error("patch sampler: inconsistent draws: {flip} flips, {scale} scales, {offset} offsets")]
    Ragged {
        /// Number of flips.
        flip: usize,
        /// Number of scales.
        scale: usize,
        /// Number of offsets.
        offset: usize,
    },
    /// The draws do not split into the requested shards.
    #[error("patch sampler: {draws} crops do not split into shard {index} of {of} equal shards")]
    Shard {
        /// The shard asked for.
        index: usize,
        /// The number of shards.
        of: usize,
        /// Crops in the draws.
        draws: usize,
    },
}

/// Configuration of a [`PatchSampler`] (official defaults: 8 crops of 1/8 to 1/4 of the side,
/// resampled to 128 px).
#[derive(Config, Debug)]
pub struct PatchSamplerConfig {
    /// Side of the output patches (`patch_size`).
    #[config(default = 128)]
    pub patch_size: usize,
    /// Crops per image (`patch_num_crops`).
    #[config(default = 8)]
    pub num_crops: usize,
    /// Smallest crop side as a fraction of the image side (`patch_min_scale`).
    #[config(default = 0.125)]
    pub min_scale: f32,
    /// Largest crop side as a fraction of the image side (`patch_max_scale`).
    #[config(default = 0.25)]
    pub max_scale: f32,
}

impl PatchSamplerConfig {
    /// Validates the configuration.
    pub fn init(&self) -> Result<PatchSampler, CropError> {
        let bad = |field, value: String, reason| {
            Err(CropError::InvalidConfig {
                field,
                value,
                reason,
            })
        };
        if self.patch_size == 0 {
            return bad("patch_size", "0".into(), "must be at least 1");
        }
        if self.num_crops == 0 {
            return bad("num_crops", "0".into(), "must be at least 1");
        }
        if !(self.min_scale > 0.0 && self.min_scale <= 1.0) {
            return bad("min_scale", self.min_scale.to_string(), "must be in (0, 1]");
        }
        if !(self.max_scale >= self.min_scale && self.max_scale <= 1.0) {
            return bad(
                "max_scale",
                self.max_scale.to_string(),
                "must be in [min_scale, 1]",
            );
        }
        Ok(PatchSampler {
            config: self.clone(),
        })
    }
}

/// The random choices of one `apply_random_crop` call, crop `j` of image `i` at index
/// `i·num_crops + j`. A plain serialisable value, so a test can replay the official draws and a
/// checkpoint can record them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CropDraws {
    /// Horizontal flip per crop, `−1` or `+1`.
    pub flip: Vec<f32>,
    /// `(x, y)` scale per crop, as a fraction of the side.
    pub scale: Vec<[f32; 2]>,
    /// `(x, y)` centre offset per crop in normalised coordinates, already multiplied by
    /// `1 − scale` so the crop stays inside the image.
    pub offset: Vec<[f32; 2]>,
}

impl CropDraws {
    /// Number of crops.
    pub fn len(&self) -> usize {
        self.flip.len()
    }

    /// Whether there are no crops.
    pub fn is_empty(&self) -> bool {
        self.flip.is_empty()
    }

    /// Block `index` of `of` equal blocks: the draws of one data-parallel shard of the batch
    /// (crops are stored image by image, so a contiguous block of images is a contiguous block
    /// of draws).
    ///
    /// # Errors
    /// [`CropError::Shard`] if `index >= of` or the draws do not split into `of` equal blocks.
    pub fn shard(&self, index: usize, of: usize) -> Result<CropDraws, CropError> {
        let n = self.len();
        if self.scale.len() != n || self.offset.len() != n {
            return Err(CropError::Ragged {
                flip: n,
                scale: self.scale.len(),
                offset: self.offset.len(),
            });
        }
        if index >= of || !n.is_multiple_of(of) {
            return Err(CropError::Shard {
                index,
                of,
                draws: n,
            });
        }
        let r = index * n / of..(index + 1) * n / of;
        Ok(CropDraws {
            flip: self.flip[r.clone()].to_vec(),
            scale: self.scale[r.clone()].to_vec(),
            offset: self.offset[r].to_vec(),
        })
    }
}

/// The patch sampler; see the module docs.
#[derive(Clone, Debug)]
pub struct PatchSampler {
    config: PatchSamplerConfig,
}

/// `torch.linspace(-1, 1, n)`.
fn linspace(n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![-1.0];
    }
    let step = 2.0 / (n - 1) as f32;
    (0..n)
        .map(|i| {
            // torch fills the second half from the end, so the last sample is exactly +1.
            if i < n / 2 {
                -1.0 + step * i as f32
            } else {
                1.0 - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// Adds one crop's `[P, len]` bilinear weights (zero padding outside the image) to `m`.
fn add_axis_weights(m: &mut [f32], coords: impl Iterator<Item = f32>, len: usize) {
    for (row, g) in coords.enumerate() {
        let pos = ((g + 1.0) * len as f32 - 1.0) / 2.0;
        let i0 = pos.floor();
        let frac = pos - i0;
        for (idx, wt) in [(i0 as i64, 1.0 - frac), (i0 as i64 + 1, frac)] {
            if idx >= 0 && (idx as usize) < len {
                m[row * len + idx as usize] += wt;
            }
        }
    }
}

impl PatchSampler {
    /// The configuration.
    pub fn config(&self) -> &PatchSamplerConfig {
        &self.config
    }

    /// Draws the crops of a batch, in the official order: every flip, then every scale, then
    /// every offset.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R, batch: usize) -> CropDraws {
        let n = batch * self.config.num_crops;
        let (lo, hi) = (self.config.min_scale, self.config.max_scale);
        let flip = (0..n)
            .map(|_| rng.random::<f32>().round() * 2.0 - 1.0)
            .collect();
        let scale: Vec<[f32; 2]> = (0..n)
            .map(|_| [0; 2].map(|_| rng.random::<f32>() * (hi - lo) + lo))
            .collect();
        let offset = scale
            .iter()
            .map(|s| {
                let u = [rng.random::<f32>(), rng.random::<f32>()];
                [
                    (u[0] * 2.0 - 1.0) * (1.0 - s[0]),
                    (u[1] * 2.0 - 1.0) * (1.0 - s[1]),
                ]
            })
            .collect();
        CropDraws {
            flip,
            scale,
            offset,
        }
    }

    /// Resamples the crops described by `draws`.
    ///
    /// # Shapes
    /// - `x`: `[batch, channels, h, w]`
    /// - output: `[batch, num_crops, channels, patch_size, patch_size]`
    ///
    /// # Errors
    /// If `draws` does not hold `batch · num_crops` consistent entries.
    ///
    /// # Panics
    /// If `x` has a zero-size dimension.
    pub fn apply(&self, x: Tensor<4>, draws: &CropDraws) -> Result<Tensor<5>, CropError> {
        check_nonempty("PatchSampler", "x", &x.dims());
        let [b, c, h, w] = x.dims();
        let (t, p) = (self.config.num_crops, self.config.patch_size);
        let n = b * t;
        if draws.scale.len() != draws.len() || draws.offset.len() != draws.len() {
            return Err(CropError::Ragged {
                flip: draws.len(),
                scale: draws.scale.len(),
                offset: draws.offset.len(),
            });
        }
        if draws.len() != n {
            return Err(CropError::DrawCount {
                expected: n,
                found: draws.len(),
                batch: b,
                num_crops: t,
            });
        }
        let u = linspace(p);
        let mut ax = vec![0.0f32; n * p * w];
        let mut ay = vec![0.0f32; n * p * h];
        for i in 0..n {
            let ([sx, sy], [ox, oy], flip) = (draws.scale[i], draws.offset[i], draws.flip[i]);
            let xs = u.iter().map(|&v| v * flip * sx + ox);
            add_axis_weights(&mut ax[i * p * w..(i + 1) * p * w], xs, w);
            let ys = u.iter().map(|&v| v * sy + oy);
            add_axis_weights(&mut ay[i * p * h..(i + 1) * p * h], ys, h);
        }
        let device: Device = x.device();
        let ax: Tensor<5> = Tensor::from_data(TensorData::new(ax, [b, t, 1, p, w]), &device);
        let ay: Tensor<5> = Tensor::from_data(TensorData::new(ay, [b, t, 1, p, h]), &device);
        // [b,1,c,h,w] · [b,t,1,w,p] → [b,t,c,h,p]; then [b,t,1,p,h] · that → [b,t,c,p,p].
        let cols = x.reshape([b, 1, c, h, w]).matmul(ax.swap_dims(3, 4));
        Ok(ay.matmul(cols))
    }
}
