//! The official training transform (`data/base_dataset.py::get_transform` with
//! `isTrain=True`).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use image::imageops::{self, FilterType};
use rand::Rng;
use sae_model::image_io::{
    ImageTensor, Preprocess, ResizeMode, RgbImage, make_power_2_side, normalize_u8,
    preprocess_dims, resize_like_pil,
};
use serde::{Deserialize, Serialize};

use super::DataError;

/// The crop step of a `preprocess` string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CropMode {
    /// No crop.
    None,
    /// `crop`: a uniformly random `crop_size` square (`torchvision.RandomCrop`, no padding).
    Random,
    /// `centercrop`: the centred square of the short side (not `crop_size`: the official
    /// `__centercrop` ignores it).
    Center,
}

/// A parsed `preprocess` string: `none`, a resize, a crop, or `<resize>_and_<crop>`, e.g.
/// `scale_shortside_and_crop` (LSUN), `resize` (FFHQ 512, AFHQ), `resize_and_crop`
/// (FFHQ 1024), `scale_width_and_crop` (the official default).
///
/// It is written back in that canonical form by [`fmt::Display`] and serialised as that
/// string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Preprocessing {
    /// The resize step.
    pub resize: ResizeMode,
    /// The crop step.
    pub crop: CropMode,
}

impl FromStr for Preprocessing {
    type Err = DataError;

    /// Parses the `_and_`-separated steps. Each step may appear once, the resize before the
    /// crop; the official options that this port does not implement (`scale_longside`,
    /// `zoom`, `patch`, `trim`, `fixsize`) and unknown steps are errors naming the value.
    fn from_str(value: &str) -> Result<Self, DataError> {
        let bad = |reason: String| DataError::BadPreprocess {
            value: value.to_string(),
            reason,
        };
        let mut out = Preprocessing {
            resize: ResizeMode::None,
            crop: CropMode::None,
        };
        if value == "none" {
            return Ok(out);
        }
        if value.is_empty() {
            return Err(bad(
                "empty; use `none` for no resize and no crop".to_string()
            ));
        }
        for step in value.split("_and_") {
            let resize = ResizeMode::from_step_name(step);
            let crop = match step {
                "crop" => Some(CropMode::Random),
                "centercrop" => Some(CropMode::Center),
                _ => None,
            };
            match (resize, crop) {
                (Some(r), _) => {
                    if out.resize != ResizeMode::None || out.crop != CropMode::None {
                        return Err(bad(format!(
                            "resize step {step:?} must come once, before any crop"
                        )));
                    }
                    out.resize = r;
                }
                (None, Some(c)) => {
                    if out.crop != CropMode::None {
                        return Err(bad(format!("more than one crop step ({step:?})")));
                    }
                    out.crop = c;
                }
                (None, None) => {
                    let reason = if matches!(
                        step,
                        "scale_longside" | "zoom" | "patch" | "trim" | "fixsize" | "none"
                    ) {
                        format!("step {step:?} is not supported by the training transform")
                    } else {
                        format!("unknown step {step:?}")
                    };
                    return Err(bad(format!(
                        "{reason}; expected `none` or `<resize>_and_<crop>` with resize \
                         `resize`, `scale_width` or `scale_shortside` and crop `crop` or \
                         `centercrop` (either may be left out)"
                    )));
                }
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Preprocessing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let resize = self.resize.step_name();
        let crop = match self.crop {
            CropMode::None => None,
            CropMode::Random => Some("crop"),
            CropMode::Center => Some("centercrop"),
        };
        match (resize, crop) {
            (None, None) => f.write_str("none"),
            (Some(r), None) => f.write_str(r),
            (None, Some(c)) => f.write_str(c),
            (Some(r), Some(c)) => write!(f, "{r}_and_{c}"),
        }
    }
}

impl TryFrom<String> for Preprocessing {
    type Error = DataError;

    fn try_from(value: String) -> Result<Self, DataError> {
        value.parse()
    }
}

impl From<Preprocessing> for String {
    fn from(p: Preprocessing) -> String {
        p.to_string()
    }
}

/// The random choices of one application of a [`TrainTransform`], so that a transform can be
/// replayed exactly (tests against PIL, debugging).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Augment {
    /// Left edge of the random crop in the resized image (ignored without a random crop).
    pub crop_x: usize,
    /// Top edge of the random crop in the resized image (ignored without a random crop).
    pub crop_y: usize,
    /// Whether to flip horizontally.
    pub flip: bool,
}

/// The training transform of the official `get_transform`, in the official order:
///
/// 1. the `preprocess` resize to `load_size` (PIL bicubic);
/// 2. the random `crop_size` crop (no padding) or the centre square crop;
/// 3. `make_power_2(base=16)`: each side to `round(side/16)·16` (bicubic), if not already;
/// 4. a horizontal flip with probability ½ when `flip` (`isTrain and not no_flip`);
/// 5. `[-1, 1]` normalisation `2·(v/255) − 1` of the 8-bit result, CHW.
///
/// Resampling is [`sae_model::image_io`]'s PIL-exact two-pass bicubic, and the image goes
/// through 8 bits between steps as with PIL, so the output matches torchvision's pipeline on
/// the fixtures of `tests/transforms.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainTransform {
    /// The resize and crop steps.
    pub preprocess: Preprocessing,
    /// The resize target (`--load_size`); unused without a resize step.
    pub load_size: usize,
    /// The random crop size (`--crop_size`); unused without a random crop.
    pub crop_size: usize,
    /// Random horizontal flips (`not --no_flip`).
    pub flip: bool,
}

impl TrainTransform {
    /// Parses `preprocess` and checks the sizes it needs.
    ///
    /// # Errors
    ///
    /// [`DataError::BadPreprocess`] naming a bad `preprocess` value, [`DataError::BadConfig`]
    /// if a used size is zero.
    pub fn new(
        preprocess: &str,
        load_size: usize,
        crop_size: usize,
        flip: bool,
    ) -> Result<Self, DataError> {
        Self::from_preprocessing(preprocess.parse()?, load_size, crop_size, flip)
    }

    /// [`TrainTransform::new`] with a parsed `preprocess`.
    ///
    /// # Errors
    ///
    /// [`DataError::BadConfig`] if a used size is zero.
    pub fn from_preprocessing(
        preprocess: Preprocessing,
        load_size: usize,
        crop_size: usize,
        flip: bool,
    ) -> Result<Self, DataError> {
        let t = Self {
            preprocess,
            load_size,
            crop_size,
            flip,
        };
        t.validate()?;
        Ok(t)
    }

    /// Checks that the sizes the steps use are non-zero.
    ///
    /// # Errors
    ///
    /// [`DataError::BadConfig`] naming the zero size.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.preprocess.resize != ResizeMode::None && self.load_size == 0 {
            return Err(DataError::BadConfig {
                reason: format!("preprocess {} needs a load_size above 0", self.preprocess),
            });
        }
        if self.preprocess.crop == CropMode::Random && self.crop_size == 0 {
            return Err(DataError::BadConfig {
                reason: format!("preprocess {} needs a crop_size above 0", self.preprocess),
            });
        }
        Ok(())
    }

    /// The image_io resize of the `preprocess` step.
    fn resize_step(&self) -> Preprocess {
        Preprocess {
            resize: self.preprocess.resize,
            load_size: self.load_size,
        }
    }

    /// The size `(width, height)` after the `preprocess` resize, with the official formulas
    /// (a side may come out as 0, which [`TrainTransform::apply_with`] refuses).
    pub fn resized_size(&self, width: usize, height: usize) -> (usize, usize) {
        preprocess_dims(width, height, self.resize_step())
    }

    /// Draws the random choices for an image of `width × height` (before the resize): the
    /// crop's left and top edges uniformly in `0..=resized − crop_size` (0 where the image is
    /// not larger), then the flip with probability ½ if enabled.
    ///
    /// Exactly three values are drawn from `rng` whatever the settings, so a transform change
    /// does not shift later draws.
    pub fn draw<R: Rng + ?Sized>(&self, width: usize, height: usize, rng: &mut R) -> Augment {
        let (w, h) = self.resized_size(width, height);
        let room_x = w.saturating_sub(self.crop_size) as u64;
        let room_y = h.saturating_sub(self.crop_size) as u64;
        let crop_x = below(rng, room_x + 1) as usize;
        let crop_y = below(rng, room_y + 1) as usize;
        let coin = rng.next_u64() >> 63 == 1;
        let random_crop = self.preprocess.crop == CropMode::Random;
        Augment {
            crop_x: if random_crop { crop_x } else { 0 },
            crop_y: if random_crop { crop_y } else { 0 },
            flip: self.flip && coin,
        }
    }

    /// [`TrainTransform::draw`] then [`TrainTransform::apply_with`].
    ///
    /// # Errors
    ///
    /// As [`TrainTransform::apply_with`].
    pub fn apply<R: Rng + ?Sized>(
        &self,
        img: &RgbImage,
        rng: &mut R,
        key: &str,
    ) -> Result<ImageTensor, DataError> {
        let aug = self.draw(img.width() as usize, img.height() as usize, rng);
        self.apply_with(img, aug, key)
    }

    /// Applies the transform with the given random choices. `aug.flip` is applied as given,
    /// even if `self.flip` is off, so that any recorded choice can be replayed.
    ///
    /// # Errors
    ///
    /// [`DataError::TooSmall`] (naming `key`) if the resize would give a zero side (where PIL
    /// fails) or the resized image is smaller than the random crop (where
    /// `torchvision.RandomCrop` fails); [`DataError::BadConfig`] if the crop in `aug` does
    /// not fit the resized image.
    pub fn apply_with(
        &self,
        img: &RgbImage,
        aug: Augment,
        key: &str,
    ) -> Result<ImageTensor, DataError> {
        let too_small = |width: usize, height: usize, problem: String| DataError::TooSmall {
            key: key.to_string(),
            width,
            height,
            transform: format!(
                "{} load_size {} crop_size {}",
                self.preprocess, self.load_size, self.crop_size
            ),
            problem,
        };
        let (w0, h0) = (img.width() as usize, img.height() as usize);
        let (w, h) = self.resized_size(w0, h0);
        if w == 0 || h == 0 {
            return Err(too_small(w0, h0, format!("the resize would give {w}x{h}")));
        }
        let resized = resize_like_pil(Cow::Borrowed(img), to_u32(w), to_u32(h), BICUBIC);
        let cropped = match self.preprocess.crop {
            CropMode::None => resized,
            CropMode::Random => {
                let c = self.crop_size;
                if w < c || h < c {
                    return Err(too_small(
                        w,
                        h,
                        format!("the random crop needs at least {c}x{c}"),
                    ));
                }
                if aug.crop_x > w - c || aug.crop_y > h - c {
                    return Err(DataError::BadConfig {
                        reason: format!(
                            "crop of {c} at ({}, {}) does not fit image {key} resized to {w}x{h}",
                            aug.crop_x, aug.crop_y
                        ),
                    });
                }
                crop(resized, aug.crop_x, aug.crop_y, c, c)
            }
            CropMode::Center => {
                // `__centercrop`: ((ow − s)//2, (oh − s)//2) with s the short side.
                let s = w.min(h);
                crop(resized, (w - s) / 2, (h - s) / 2, s, s)
            }
        };
        let (cw, ch) = cropped.dimensions();
        let (fw, fh) = (
            make_power_2_side(cw as usize),
            make_power_2_side(ch as usize),
        );
        let out = resize_like_pil(cropped, to_u32(fw), to_u32(fh), BICUBIC);
        Ok(to_tensor(&out, aug.flip))
    }
}

/// PIL's `BICUBIC` in image_io's two-pass scheme.
const BICUBIC: FilterType = FilterType::CatmullRom;

/// Saturating `usize` → `u32`; a side that large could not be allocated anyway.
fn to_u32(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The `width × height` window at `(x, y)`, or the image itself when the window is all of it.
fn crop(
    img: Cow<'_, RgbImage>,
    x: usize,
    y: usize,
    width: usize,
    height: usize,
) -> Cow<'_, RgbImage> {
    if x == 0 && y == 0 && (width, height) == (img.width() as usize, img.height() as usize) {
        return img;
    }
    let view = imageops::crop_imm(
        img.as_ref(),
        to_u32(x),
        to_u32(y),
        to_u32(width),
        to_u32(height),
    );
    Cow::Owned(view.to_image())
}

/// `[-1, 1]` CHW values of `img` (mirrored left–right if `flip`), with image_io's
/// normalisation.
fn to_tensor(img: &RgbImage, flip: bool) -> ImageTensor {
    // The 256 possible values, computed once with the shared f32 normalisation.
    let lut: [f32; 256] = std::array::from_fn(|v| normalize_u8(v as u8));
    let (width, height) = (img.width() as usize, img.height() as usize);
    // Filled plane by plane with pushes: no zeroing pass over the 12 bytes per pixel.
    let mut data = Vec::with_capacity(3 * width * height);
    for c in 0..3 {
        for row in img.as_raw().chunks_exact(3 * width) {
            let channel = row[c..].iter().step_by(3).map(|&v| lut[usize::from(v)]);
            if flip {
                data.extend(channel.rev());
            } else {
                data.extend(channel);
            }
        }
    }
    ImageTensor {
        height,
        width,
        data,
    }
}

/// A uniform integer in `0..n` (`n ≥ 1`) from 64-bit draws, by Lemire's multiply-and-reject
/// method: exact (no modulo bias) and independent of the `rand` version's range sampler, so
/// that crops and shuffles stay the same across dependency updates.
pub(crate) fn below<R: Rng + ?Sized>(rng: &mut R, n: u64) -> u64 {
    debug_assert!(n > 0);
    let n = n.max(1);
    // Values of the low half below `threshold` would over-represent some results.
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = u128::from(rng.next_u64()) * u128::from(n);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::Xoshiro256PlusPlus;

    #[test]
    fn preprocess_strings_round_trip_and_bad_ones_are_named() {
        for s in [
            "none",
            "resize",
            "scale_width",
            "scale_shortside",
            "crop",
            "centercrop",
            "resize_and_crop",
            "scale_width_and_crop",
            "scale_shortside_and_crop",
            "scale_shortside_and_centercrop",
        ] {
            let p: Preprocessing = s.parse().expect(s);
            assert_eq!(p.to_string(), s);
        }
        for bad in [
            "",
            "resize_and_scale_width",
            "crop_and_resize",
            "crop_and_centercrop",
            "scale_longside",
            "zoom_and_crop",
            "none_and_crop",
            "resize_and_crap",
            "Resize",
        ] {
            let err = bad.parse::<Preprocessing>().expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let json =
            serde_json::to_string(&TrainTransform::new("resize_and_crop", 8, 4, true).unwrap())
                .unwrap();
        assert!(json.contains("\"resize_and_crop\""), "{json}");
        let back: TrainTransform = serde_json::from_str(&json).unwrap();
        assert_eq!(back.preprocess.crop, CropMode::Random);
        assert!(serde_json::from_str::<Preprocessing>("\"zoom\"").is_err());
    }

    #[test]
    fn zero_sizes_are_refused() {
        assert!(matches!(
            TrainTransform::new("resize", 0, 4, false),
            Err(DataError::BadConfig { .. })
        ));
        assert!(matches!(
            TrainTransform::new("crop", 0, 0, false),
            Err(DataError::BadConfig { .. })
        ));
        assert!(TrainTransform::new("none", 0, 0, false).is_ok());
    }

    #[test]
    fn below_is_uniform_and_in_range() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[below(&mut rng, 3) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(below(&mut rng, 1), 0);
    }

    #[test]
    fn crops_too_large_and_empty_resizes_are_typed_errors() {
        let img = RgbImage::new(20, 10);
        let t = TrainTransform::new("crop", 0, 16, false).unwrap();
        let err = t
            .apply_with(
                &img,
                Augment {
                    crop_x: 0,
                    crop_y: 0,
                    flip: false,
                },
                "k.png",
            )
            .expect_err("10 < 16");
        assert!(matches!(err, DataError::TooSmall { .. }), "{err:?}");
        assert!(err.to_string().contains("k.png"), "{err}");
        let t = TrainTransform::new("scale_width", 4, 0, false).unwrap();
        let err = t
            .apply_with(
                &RgbImage::new(40, 1),
                Augment {
                    crop_x: 0,
                    crop_y: 0,
                    flip: false,
                },
                "w",
            )
            .expect_err("int(4/40) = 0");
        assert!(matches!(err, DataError::TooSmall { .. }), "{err:?}");
        let t = TrainTransform::new("crop", 0, 8, false).unwrap();
        let err = t
            .apply_with(
                &img,
                Augment {
                    crop_x: 13,
                    crop_y: 0,
                    flip: false,
                },
                "k",
            )
            .expect_err("13 + 8 > 20");
        assert!(matches!(err, DataError::BadConfig { .. }), "{err:?}");
    }

    #[test]
    fn flip_mirrors_columns() {
        let img = RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 10, y as u8, 0]));
        let t = TrainTransform::new("none", 0, 0, true).unwrap();
        let plain = t
            .apply_with(
                &img,
                Augment {
                    crop_x: 0,
                    crop_y: 0,
                    flip: false,
                },
                "k",
            )
            .unwrap();
        let flipped = t
            .apply_with(
                &img,
                Augment {
                    crop_x: 0,
                    crop_y: 0,
                    flip: true,
                },
                "k",
            )
            .unwrap();
        assert_eq!(plain, ImageTensor::from_rgb8(&img));
        for y in 0..16 {
            for x in 0..16 {
                assert_eq!(flipped.data[y * 16 + x], plain.data[y * 16 + 15 - x]);
            }
        }
    }
}
