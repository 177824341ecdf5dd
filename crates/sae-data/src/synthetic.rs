//! A generated dataset whose images are a *structure* rendered with an independent *texture*,
//! for quick training runs and tests without downloading anything.

use std::fs;
use std::path::Path;

use image::Rgb;
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use sae_model::image_io::{RgbImage, encode_png, save_rgb_png};

use super::DataError;
use super::dataset::Dataset;
use super::loader::mix;
use super::transform::below;

/// Domain tags that keep the structure and texture streams of one image independent.
const STRUCTURE_DOMAIN: u64 = 0x5354_5255_4354; // "STRUCT"
const TEXTURE_DOMAIN: u64 = 0x5445_5854; // "TEXT"

/// Regions of a structure: sky, ground, then up to four shapes.
const MAX_LABELS: usize = 6;

/// Deterministic generated RGB images, `count` of them, `size × size` pixels.
///
/// Each image combines two independently seeded parts, so that a swapping autoencoder trained
/// on them can be checked by eye (and against [`SyntheticShapes::render_parts`], the ground
/// truth of a swap, and [`SyntheticShapes::score_swap`]):
///
/// - the **structure** is a label map: a sloped horizon splitting sky from ground, and two to
///   four rectangles or discs at seeded positions and sizes (one larger shape in the
///   [`SyntheticStyle::Flat`] style);
/// - the **texture** gives each label a colour from a seeded palette and, in the default
///   [`SyntheticStyle::Patterned`] style, modulates all regions with one seeded pattern
///   (stripes at one of six angles, a checkerboard, or blocky noise) of a seeded period and
///   contrast.
///
/// Rendering uses integer arithmetic only, so the images are identical on every platform.
/// As a [`Dataset`] the keys are `000000.png`, ...; [`Dataset::read`] gives PNG bytes and
/// [`Dataset::decode`] renders directly, without the PNG round trip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticShapes {
    count: usize,
    size: usize,
    seed: u64,
    style: SyntheticStyle,
    /// Base colours drawn from the first this many of [`DISTINCT_COLOURS`] (distinct per
    /// image) instead of any RGB colour.
    named_colours: Option<usize>,
}

/// Well-separated colours for [`SyntheticShapes::with_named_colours`] (Sasha Trubetskoy's
/// list of distinct colours, most distinct first).
pub const DISTINCT_COLOURS: [[u8; 3]; 12] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [250, 190, 212],
    [0, 128, 128],
    [170, 110, 40],
    [128, 0, 0],
];

/// How much a [`SyntheticShapes`] image holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyntheticStyle {
    /// Two to four shapes; each region's colour is modulated by a stripe, checker or noise
    /// pattern (the default: harder, closer to real textures).
    #[default]
    Patterned,
    /// One large shape; sky, ground and shape in flat colours. A small model learns to
    /// separate layout from colours within minutes on a CPU (the quickstart's data).
    Flat,
}

/// How [`SyntheticShapes::score_swap`] judged one or more swaps; add scores with `+=`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwapScore {
    /// Swaps scored.
    pub swaps: usize,
    /// Swaps whose edges follow the structure image's region boundaries more closely than the
    /// texture image's (Pearson correlation of the two maps).
    pub layout_from_structure: usize,
    /// Swaps whose mean colour is nearer the texture image's than the structure image's.
    pub colours_from_texture: usize,
    /// Pixels whose nearest palette colour is the one the structure's layout asks for.
    pub right: usize,
    /// Pixels scored.
    pub pixels: usize,
    /// `right`, counting only pixels where the structure's and the texture's layouts differ.
    pub right_where_layouts_differ: usize,
    /// Pixels where the two layouts differ.
    pub pixels_where_layouts_differ: usize,
}

impl SwapScore {
    /// Share of pixels right.
    pub fn accuracy(&self) -> f64 {
        self.right as f64 / self.pixels.max(1) as f64
    }

    /// Share of pixels right where the two layouts differ.
    pub fn accuracy_where_layouts_differ(&self) -> f64 {
        self.right_where_layouts_differ as f64 / self.pixels_where_layouts_differ.max(1) as f64
    }
}

impl std::ops::AddAssign for SwapScore {
    fn add_assign(&mut self, o: Self) {
        self.swaps += o.swaps;
        self.layout_from_structure += o.layout_from_structure;
        self.colours_from_texture += o.colours_from_texture;
        self.right += o.right;
        self.pixels += o.pixels;
        self.right_where_layouts_differ += o.right_where_layouts_differ;
        self.pixels_where_layouts_differ += o.pixels_where_layouts_differ;
    }
}

/// Pearson correlation of two equally long maps (0 when either is constant).
fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        ab += (x - ma) * (y - mb);
        aa += (x - ma) * (x - ma);
        bb += (y - mb) * (y - mb);
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa * bb).sqrt()
    }
}

/// Per pixel, how much it differs from its right and lower neighbours under `differ`.
fn edge_map(n: usize, differ: impl Fn(usize, usize) -> f64) -> Vec<f64> {
    (0..n * n)
        .map(|p| {
            let (x, y) = (p % n, p / n);
            let right = if x + 1 < n { differ(p, p + 1) } else { 0.0 };
            let down = if y + 1 < n { differ(p, p + n) } else { 0.0 };
            right + down
        })
        .collect()
}

/// Mean colour of an image.
fn mean_colour(img: &RgbImage) -> [f64; 3] {
    let mut sum = [0.0; 3];
    for p in img.pixels() {
        for (total, &v) in sum.iter_mut().zip(&p.0) {
            *total += f64::from(v);
        }
    }
    sum.map(|v| v / f64::from(img.width() * img.height()))
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
        Ok(Self {
            count,
            size,
            seed,
            style: SyntheticStyle::Patterned,
            named_colours: None,
        })
    }

    /// The same layouts with other textures: each region's (base) colour is drawn from the
    /// first `count` of [`DISTINCT_COLOURS`], no two regions of one image alike, instead of
    /// any RGB colour (`count` is clamped to `6..=12`: six labels need six colours). The
    /// texture's other draws follow in the same stream, so in the
    /// [`SyntheticStyle::Patterned`] style the patterns differ from the any-colour images'
    /// too; [`SyntheticStyle::Flat`] images have none.
    pub fn with_named_colours(mut self, count: usize) -> Self {
        self.named_colours = Some(count.clamp(MAX_LABELS, DISTINCT_COLOURS.len()));
        self
    }

    /// The same count, size and seed in another [`SyntheticStyle`] (the styles draw different
    /// shapes from the same seeds).
    pub fn with_style(mut self, style: SyntheticStyle) -> Self {
        self.style = style;
        self
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

    /// The region label of every pixel of image `structure_of`'s structure, row by row: 0 sky,
    /// 1 ground, `2 + k` shape `k`.
    pub fn labels(&self, structure_of: usize) -> Vec<u8> {
        let structure = self.structure(structure_of);
        let n = self.size as i64;
        (0..n)
            .flat_map(|y| (0..n).map(move |x| (x, y)))
            .map(|(x, y)| structure.label(x, y, n) as u8)
            .collect()
    }

    /// Scores `image` as a swap of the structure of image `structure_of` and the texture of
    /// image `texture_of`, for the [`SyntheticStyle::Flat`] style (whose regions are exactly
    /// their palette colours), in two ways:
    ///
    /// - **which input each part came from:** the layout counts as the structure image's when
    ///   `image`'s edges correlate better with that image's region boundaries than with the
    ///   texture image's; the colours count as the texture image's when `image`'s mean colour
    ///   is nearer to it than to the structure image's. Copying either input gets one of the
    ///   two; a swap that separates gets both.
    /// - **pixel by pixel:** each pixel is given the label whose colour in `texture_of`'s
    ///   palette is nearest (among the labels either image uses) and is right when that is the
    ///   label of `structure_of`'s layout there. Copying the texture image scores 0 where the
    ///   two layouts differ, copying the structure image about chance, a perfect swap 1.
    ///
    /// # Errors
    ///
    /// [`DataError::BadConfig`] if `image` is not `size × size`.
    pub fn score_swap(
        &self,
        image: &RgbImage,
        structure_of: usize,
        texture_of: usize,
    ) -> Result<SwapScore, DataError> {
        let n = self.size;
        if image.dimensions() != (n as u32, n as u32) {
            return Err(DataError::BadConfig {
                reason: format!(
                    "a swap of {n}x{n} images cannot be {}x{}",
                    image.width(),
                    image.height()
                ),
            });
        }
        let (want, other) = (self.labels(structure_of), self.labels(texture_of));
        let raw = image.as_raw();
        let edges = edge_map(n, |p, q| {
            (0..3)
                .map(|k| f64::from(raw[3 * p + k].abs_diff(raw[3 * q + k])))
                .sum()
        });
        let boundaries = |labels: &[u8]| edge_map(n, |p, q| f64::from(labels[p] != labels[q]));
        let distance =
            |a: [f64; 3], b: [f64; 3]| -> f64 { (0..3).map(|k| (a[k] - b[k]).powi(2)).sum() };
        let colour = mean_colour(image);
        let mut score = SwapScore {
            swaps: 1,
            layout_from_structure: usize::from(
                correlation(&edges, &boundaries(&want)) > correlation(&edges, &boundaries(&other)),
            ),
            colours_from_texture: usize::from(
                distance(colour, mean_colour(&self.render(texture_of)))
                    < distance(colour, mean_colour(&self.render(structure_of))),
            ),
            ..SwapScore::default()
        };
        let mut used: Vec<u8> = want.iter().chain(&other).copied().collect();
        used.sort_unstable();
        used.dedup();
        let palette = self.texture(texture_of).palette;
        for ((pixel, &w), &o) in image.pixels().zip(&want).zip(&other) {
            let distance = |&l: &u8| -> u32 {
                let c = palette[l as usize];
                (0..3).map(|k| u32::from(pixel.0[k].abs_diff(c[k]))).sum()
            };
            let nearest = *used.iter().min_by_key(|l| distance(l)).expect("labels");
            let right = usize::from(nearest == w);
            score.right += right;
            score.pixels += 1;
            if w != o {
                score.right_where_layouts_differ += right;
                score.pixels_where_layouts_differ += 1;
            }
        }
        Ok(score)
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
        let flat = self.style == SyntheticStyle::Flat;
        let n = if flat { 1 } else { pick(2, 4) as usize };
        let (r_lo, r_hi) = if flat {
            (size / 8, size / 4)
        } else {
            (size / 12, size / 5)
        };
        let shapes = (0..n)
            .map(|_| {
                let disc = pick(0, 1) == 1;
                let cx = pick(size / 8, size * 7 / 8);
                let cy = pick(size / 8, size * 7 / 8);
                let r = pick(r_lo.max(2), r_hi.max(2));
                (disc, cx, cy, r)
            })
            .collect();
        Structure { horizon, shapes }
    }

    fn texture(&self, index: usize) -> Texture {
        let mut rng =
            Xoshiro256PlusPlus::seed_from_u64(mix(TEXTURE_DOMAIN, self.seed, index as u64, 0));
        let mut pick = |lo: u64, hi: u64| lo + below(&mut rng, hi - lo + 1);
        let palette = match self.named_colours {
            None => std::array::from_fn(|_| std::array::from_fn(|_| pick(0, 255) as u8)),
            Some(count) => {
                // A partial Fisher-Yates shuffle: the first MAX_LABELS of a permutation.
                let mut order: Vec<usize> = (0..count).collect();
                for i in 0..MAX_LABELS {
                    let j = i + pick(0, (count - 1 - i) as u64) as usize;
                    order.swap(i, j);
                }
                std::array::from_fn(|l| DISTINCT_COLOURS[order[l]])
            }
        };
        let kind = pick(0, 2);
        const DIRECTIONS: [(i64, i64); 6] = [(1, 0), (0, 1), (1, 1), (1, -1), (2, 1), (1, 2)];
        let direction = DIRECTIONS[pick(0, 5) as usize];
        let size = self.size as u64;
        let period = pick((size / 16).max(2), (size / 5).max(2)) as i64;
        let contrast = match self.style {
            SyntheticStyle::Patterned => pick(30, 80) as i64,
            SyntheticStyle::Flat => 0,
        };
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

impl SyntheticShapes {
    /// Writes every image as a PNG file `dir/000000.png`, ... (creating `dir`), and returns
    /// how many it wrote. Each file is written atomically (image_io's temporary-file-and-rename
    /// writer).
    ///
    /// # Errors
    ///
    /// [`DataError::Io`] if `dir` cannot be created, [`DataError::Image`] if a file cannot be
    /// written.
    pub fn write_folder(&self, dir: &Path) -> Result<usize, DataError> {
        fs::create_dir_all(dir).map_err(|source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        for index in 0..self.count {
            save_rgb_png(&self.render(index), &dir.join(self.key(index)))?;
        }
        Ok(self.count)
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
        let colours = match self.named_colours {
            Some(k) => format!(", {k} named colours"),
            None => String::new(),
        };
        format!(
            "synthetic shapes ({} {:?} images of {}x{}, seed {}{colours})",
            self.count, self.style, self.size, self.size, self.seed
        )
    }
}

/// Writes the `count` images of `SyntheticShapes::new(count, size, seed)` (the patterned
/// style) to `dir`: see [`SyntheticShapes::write_folder`].
///
/// # Errors
///
/// [`DataError::BadConfig`] for a bad count or size, and the errors of
/// [`SyntheticShapes::write_folder`].
pub fn write_synthetic_folder(
    dir: &Path,
    count: usize,
    size: usize,
    seed: u64,
) -> Result<usize, DataError> {
    SyntheticShapes::new(count, size, seed)?.write_folder(dir)
}
