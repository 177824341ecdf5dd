//! A generated dataset whose images are a *structure* rendered with an independent *texture*,
//! for quick training runs and tests without downloading anything.

use std::fs;
use std::path::Path;

use image::Rgb;
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use sae_model::image_io::{RgbImage, save_rgb8};

use super::DataError;
use super::dataset::Dataset;
use super::loader::mix;
use super::transform::below;
use super::zip::encode_png;

/// Domain tags that keep the structure and texture streams of one image independent.
const STRUCTURE_DOMAIN: u64 = 0x5354_5255_4354; // "STRUCT"
const TEXTURE_DOMAIN: u64 = 0x5445_5854; // "TEXT"

/// Regions of a structure: sky, ground, then up to four shapes.
const MAX_LABELS: usize = 6;

/// Deterministic generated RGB images, `count` of them, `size × size` pixels.
///
/// Each image combines two independently seeded parts, so that a swapping autoencoder trained
/// on them can be checked by eye (and against [`SyntheticShapes::render_parts`], the ground
/// truth of a swap):
///
/// - the **structure** is a label map: a sloped horizon splitting sky from ground, and two to
///   four rectangles or discs at seeded positions and sizes;
/// - the **texture** gives each label a colour from a seeded palette and modulates all
///   regions with one seeded pattern (stripes at one of six angles, a checkerboard, or blocky
///   noise) of a seeded period and contrast.
///
/// Rendering uses integer arithmetic only, so the images are identical on every platform.
/// As a [`Dataset`] the keys are `000000.png`, ...; [`Dataset::read`] gives PNG bytes and
/// [`Dataset::decode`] renders directly, without the PNG round trip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticShapes {
    count: usize,
    size: usize,
    seed: u64,
}

/// The geometry of one structure.
struct Structure {
    /// Horizon height at the left and right edges.
    horizon: (i64, i64),
    /// `(is_disc, centre x, centre y, half size or radius)` per shape, painted in order.
    shapes: Vec<(bool, i64, i64, i64)>,
}

/// The look of one texture.
struct Texture {
    /// Base colour per label.
    palette: [[u8; 3]; MAX_LABELS],
    /// 0: stripes, 1: checkerboard, 2: blocky noise.
    kind: u64,
    /// Stripe direction (x and y weights).
    direction: (i64, i64),
    /// Pattern period in pixels.
    period: i64,
    /// How far the pattern's second phase moves each colour channel.
    contrast: i64,
    /// Seed of the noise pattern.
    noise_seed: u64,
}

impl SyntheticShapes {
    /// A dataset of `count` images of `size × size` pixels generated from `seed`.
    ///
    /// # Errors
    ///
    /// [`DataError::BadConfig`] if `count` is 0 or `size` is below 8 or above 8192.
    pub fn new(count: usize, size: usize, seed: u64) -> Result<Self, DataError> {
        if count == 0 || !(8..=8192).contains(&size) {
            return Err(DataError::BadConfig {
                reason: format!(
                    "synthetic dataset needs at least one image of 8 to 8192 pixels, got \
                     {count} images of {size} pixels"
                ),
            });
        }
        Ok(Self { count, size, seed })
    }

    /// The side of the images in pixels.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Image `index`: its own structure with its own texture.
    pub fn render(&self, index: usize) -> RgbImage {
        self.render_parts(index, index)
    }

    /// The structure of image `structure_of` rendered with the texture of image
    /// `texture_of`: what a perfect swap of those two images would look like.
    pub fn render_parts(&self, structure_of: usize, texture_of: usize) -> RgbImage {
        let structure = self.structure(structure_of);
        let texture = self.texture(texture_of);
        let s = self.size as u32;
        RgbImage::from_fn(s, s, |x, y| {
            let (x, y) = (i64::from(x), i64::from(y));
            Rgb(texture.colour(structure.label(x, y, self.size as i64), x, y))
        })
    }

    fn structure(&self, index: usize) -> Structure {
        let mut rng =
            Xoshiro256PlusPlus::seed_from_u64(mix(STRUCTURE_DOMAIN, self.seed, index as u64, 0));
        let size = self.size as u64;
        let mut pick = |lo: u64, hi: u64| (lo + below(&mut rng, hi - lo + 1)) as i64;
        let horizon = (
            pick(size * 3 / 10, size * 7 / 10),
            pick(size * 3 / 10, size * 7 / 10),
        );
        let n = pick(2, 4) as usize;
        let shapes = (0..n)
            .map(|_| {
                let disc = pick(0, 1) == 1;
                let cx = pick(size / 8, size * 7 / 8);
                let cy = pick(size / 8, size * 7 / 8);
                let r = pick((size / 12).max(2), (size / 5).max(2));
                (disc, cx, cy, r)
            })
            .collect();
        Structure { horizon, shapes }
    }

    fn texture(&self, index: usize) -> Texture {
        let mut rng =
            Xoshiro256PlusPlus::seed_from_u64(mix(TEXTURE_DOMAIN, self.seed, index as u64, 0));
        let mut pick = |lo: u64, hi: u64| lo + below(&mut rng, hi - lo + 1);
        let palette = std::array::from_fn(|_| std::array::from_fn(|_| pick(0, 255) as u8));
        let kind = pick(0, 2);
        const DIRECTIONS: [(i64, i64); 6] = [(1, 0), (0, 1), (1, 1), (1, -1), (2, 1), (1, 2)];
        let direction = DIRECTIONS[pick(0, 5) as usize];
        let size = self.size as u64;
        let period = pick((size / 16).max(2), (size / 5).max(2)) as i64;
        let contrast = pick(30, 80) as i64;
        let noise_seed = pick(0, u64::MAX - 1);
        Texture {
            palette,
            kind,
            direction,
            period,
            contrast,
            noise_seed,
        }
    }
}

impl Structure {
    /// The region label at `(x, y)`: the last shape covering it, else ground or sky.
    fn label(&self, x: i64, y: i64, size: i64) -> usize {
        for (k, &(disc, cx, cy, r)) in self.shapes.iter().enumerate().rev() {
            let (dx, dy) = (x - cx, y - cy);
            let inside = if disc {
                dx * dx + dy * dy <= r * r
            } else {
                dx.abs() <= r && dy.abs() <= r
            };
            if inside {
                return 2 + k;
            }
        }
        // Ground below the line from (0, left) to (size, right), in exact integers.
        let (left, right) = self.horizon;
        if y * size >= left * size + (right - left) * x {
            1
        } else {
            0
        }
    }
}

impl Texture {
    /// The colour of label `label` at `(x, y)`.
    fn colour(&self, label: usize, x: i64, y: i64) -> [u8; 3] {
        let p = self.period;
        let phase = match self.kind {
            0 => (x * self.direction.0 + y * self.direction.1).div_euclid(p) % 2 != 0,
            1 => (x.div_euclid(p) + y.div_euclid(p)) % 2 != 0,
            _ => {
                mix(
                    self.noise_seed,
                    x.div_euclid(p) as u64,
                    y.div_euclid(p) as u64,
                    0,
                ) & 1
                    != 0
            }
        };
        let base = self.palette[label];
        if !phase {
            return base;
        }
        // The second phase moves each channel toward the far end of its range, so it stays
        // visible on dark and bright colours alike.
        base.map(|v| {
            let v = i64::from(v);
            let moved = if v < 128 {
                v + self.contrast
            } else {
                v - self.contrast
            };
            moved.clamp(0, 255) as u8
        })
    }
}

impl Dataset for SyntheticShapes {
    fn len(&self) -> usize {
        self.count
    }

    fn key(&self, index: usize) -> String {
        format!("{index:06}.png")
    }

    fn read(&self, index: usize) -> Result<Vec<u8>, DataError> {
        encode_png(&self.render(index)).map_err(|e| DataError::BadConfig {
            reason: format!("cannot encode synthetic image {index} as PNG: {e}"),
        })
    }

    fn decode(&self, index: usize) -> Result<RgbImage, DataError> {
        Ok(self.render(index))
    }

    fn describe(&self) -> String {
        format!(
            "synthetic shapes ({} images of {}x{}, seed {})",
            self.count, self.size, self.size, self.seed
        )
    }
}

/// Writes the `count` images of `SyntheticShapes::new(count, size, seed)` as PNG files
/// `dir/000000.png`, ... (creating `dir`), and returns how many it wrote.
///
/// Each file is written atomically (image_io's temporary-file-and-rename writer).
///
/// # Errors
///
/// [`DataError::BadConfig`] for a bad count or size, [`DataError::Io`] if `dir` cannot be
/// created, [`DataError::Image`] if a file cannot be written.
pub fn write_synthetic_folder(
    dir: &Path,
    count: usize,
    size: usize,
    seed: u64,
) -> Result<usize, DataError> {
    let shapes = SyntheticShapes::new(count, size, seed)?;
    fs::create_dir_all(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for index in 0..count {
        save_rgb8(&shapes.render(index), &dir.join(shapes.key(index)))?;
    }
    Ok(count)
}
