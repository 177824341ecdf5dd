//! Image input and output for the test-time pipeline, without Burn.
//!
//! This module reproduces what the official code (taesungp/swapping-autoencoder-pytorch) does
//! with PIL and torchvision around the networks (`data/base_dataset.py`, `util/util.py`):
//!
//! - [`load_rgb`] is `PIL.Image.open(path).convert('RGB')`.
//! - [`test_transform`] and [`load_image`] are `data/base_dataset.py::get_transform` in the
//!   test phase: the `preprocess` resize, `__make_power_2(base=16)`, `ToTensor`,
//!   `Normalize(0.5, 0.5)`.
//! - [`to_rgb8`] and [`save_png`] are `util.tensor2im`, which truncates instead of rounding.
//! - [`hconcat`] and [`grid`] build the side-by-side strips and the swapping grid.
//! - [`load_mask`] reads a `[0, 1]` mask for region edits (not in the official code).
//!
//! Tensors are plain `Vec<f32>` in CHW order ([`ImageTensor`]) so that this file depends only
//! on the `image` crate; the Burn side turns them into `[1, 3, H, W]` tensors.
//!
//! # Resampling compared with PIL
//!
//! PIL's `BICUBIC` is a separable cubic convolution with `a = -0.5` whose support is widened by
//! the scale factor when downscaling (antialiasing). `image`'s `FilterType::CatmullRom` is the
//! same kernel (Mitchell–Netravali `B = 0, C = 0.5`), and `imageops::resize` widens the support
//! in the same way (`support · max(1, in/out)`, kernel evaluated at `distance / max(1, in/out)`),
//! with the same pixel-centre convention and the same renormalisation of the weights that are
//! clipped at the borders. What remains different, and how [`test_transform`] handles it:
//!
//! 1. **Pass order and intermediate rounding.** PIL resamples the rows (width) first, rounds
//!    and clips that intermediate to 8 bits, then resamples the columns (height). `image` does
//!    the height first and keeps an unrounded `f32` intermediate. We call `imageops::resize`
//!    twice, once per axis, in PIL's order, so that the intermediate is rounded to 8 bits
//!    exactly where PIL rounds it. (A pass whose size is unchanged is an exact identity in
//!    `image`: the kernel is 1 at 0 and 0 at ±1, ±2.)
//! 2. **Arithmetic.** PIL uses `f64` weights converted to 22-bit fixed point and rounds half
//!    up; `image` uses `f32` weights and rounds half away from zero. This leaves rare
//!    one-level differences per pass where a sum lands close to `.5` (rarely two after both
//!    passes). PIL's own fixed-point result differs from exact `f64` arithmetic by up to one
//!    level as well, so this residue is at the level of PIL's own rounding noise.
//!
//! Measured against PIL 11.3:
//!
//! - The fixture `tests/fixtures/images/bicubic_src.png` (37×29: gradients, hard edges,
//!   noise) through the whole test transform with six preprocess settings (the test
//!   `bicubic_matches_pil_within_one_level`): the two-pass scheme is **bit-identical** to PIL.
//!   One `imageops::resize` call per step instead differs by up to 8 levels on 11–18 % of the
//!   values, because its unclipped `f32` intermediate keeps the cubic overshoot PIL clips.
//! - A one-off sweep of 300 random resizes (1–120 px to 1–160 px per side, noise and smooth
//!   images): two-pass max difference **2** levels, 0.13 % of the values differ (per image:
//!   max 0 for 104, 1 for 192, 2 for 4); one call: max 26 levels, 14 % of the values.

use std::borrow::Cow;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::codecs::png::PngEncoder;
use image::imageops::{self, FilterType};
use image::{
    DynamicImage, GrayImage, ImageBuffer, ImageEncoder, ImageFormat, ImageReader, Luma, Pixel, Rgb,
};

use crate::atomic::{WriteError, write_atomic};

/// The 8-bit RGB image type of the `image` crate, re-exported for the callers of this module.
pub use image::RgbImage;

/// The multiple that `__make_power_2(base=16)` rounds every side to.
const POWER_2_BASE: usize = 16;

/// An RGB image as planar `f32` values in `[-1, 1]`, channel-major (CHW), the official
/// normalisation `2·(v/255) − 1`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageTensor {
    /// Number of rows.
    pub height: usize,
    /// Number of columns.
    pub width: usize,
    /// `3 · height · width` values: the whole R plane, then G, then B, each row-major.
    pub data: Vec<f32>,
}

impl ImageTensor {
    /// Normalises an 8-bit image without resizing it: `ToTensor()` then
    /// `Normalize(0.5, 0.5)`.
    ///
    /// This is what `swapping_for_eval` uses (its inputs are loaded with no resize at all); the
    /// other evaluators go through [`test_transform`].
    pub fn from_rgb8(img: &RgbImage) -> Self {
        let (width, height) = (img.width() as usize, img.height() as usize);
        let plane = width * height;
        let mut data = vec![0.0f32; 3 * plane];
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                data[c * plane + i] = normalize_u8(px[c]);
            }
        }
        Self {
            height,
            width,
            data,
        }
    }
}

/// Maps an 8-bit value to `[-1, 1]` with torchvision's own `f32` operations.
///
/// `ToTensor` divides by 255 and `Normalize` computes `(x − 0.5) / 0.5`; written this way the
/// result is bit-identical to the official tensors (it equals `2·(v/255) − 1` in `f32` too).
pub fn normalize_u8(v: u8) -> f32 {
    (f32::from(v) / 255.0 - 0.5) / 0.5
}

/// Everything that can go wrong while reading, converting or writing images.
///
/// Each message names the file (where there is one) and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read, or the output could not be written or renamed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes are not an image that the enabled decoders can read (PNG and JPEG here; WebP,
    /// BMP, PNM and TIFF too when a crate such as `sae-train` enables those `image` features),
    /// or the file is truncated or corrupt.
    #[error("cannot decode {} as an image: {reason}", path.display())]
    Decode {
        /// The file that failed to decode.
        path: PathBuf,
        /// What the decoder reported.
        reason: String,
    },
    /// The image decoded to zero pixels.
    #[error("image {} is empty (zero width or height)", path.display())]
    Empty {
        /// The empty image's file.
        path: PathBuf,
    },
    /// A preprocess resize would give a side of zero pixels.
    ///
    /// The official code fails inside PIL in this case (`load_size` 0, or `scale_width` of an
    /// image more than `load_size` times wider than tall); [`load_image`] reports it instead.
    #[error(
        "image {} ({width}x{height}) is too small for {pre:?}: the resized image would be \
         {new_width}x{new_height}",
        path.display()
    )]
    TooSmall {
        /// The image's file.
        path: PathBuf,
        /// The decoded width.
        width: usize,
        /// The decoded height.
        height: usize,
        /// The preprocess setting that was asked for.
        pre: Preprocess,
        /// The width the preprocess resize would give.
        new_width: usize,
        /// The height the preprocess resize would give.
        new_height: usize,
    },
    /// The image would be larger than the pixel budget after preprocessing.
    #[error(
        "image {} would be {width}x{height} after preprocessing, over the budget of \
         {max_pixels} pixels",
        path.display()
    )]
    TooManyPixels {
        /// The image's file.
        path: PathBuf,
        /// The width after preprocessing.
        width: usize,
        /// The height after preprocessing.
        height: usize,
        /// The budget.
        max_pixels: usize,
    },
    /// A mask was requested at a size with a zero side.
    #[error("cannot resize mask {} to {height}x{width}: a side is zero", path.display())]
    BadSize {
        /// The mask's file.
        path: PathBuf,
        /// The requested height.
        height: usize,
        /// The requested width.
        width: usize,
    },
    /// An [`ImageTensor`] whose `data` does not hold `3 · height · width` values, or whose
    /// height or width is zero.
    #[error(
        "image tensor 3x{height}x{width} is malformed: it needs a non-zero size and \
         {expected} values, but holds {len}"
    )]
    BadShape {
        /// The tensor's height.
        height: usize,
        /// The tensor's width.
        width: usize,
        /// `3 · height · width`.
        expected: usize,
        /// `data.len()`.
        len: usize,
    },
    /// An [`ImageTensor`] value is NaN, which has no 8-bit value (infinities are clamped).
    #[error("image tensor value at channel {channel}, row {y}, column {x} is NaN")]
    NotANumber {
        /// Channel index, 0 = R.
        channel: usize,
        /// Row.
        y: usize,
        /// Column.
        x: usize,
    },
    /// The output path holds something other than a regular file (file-system failures are
    /// [`ImageError::Io`]).
    #[error(transparent)]
    Write(WriteError),
    /// The PNG encoder failed, or the tensor could not be converted for writing.
    #[error("cannot write PNG {}: {reason}", path.display())]
    Encode {
        /// The file that was being written.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl From<WriteError> for ImageError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Io { path, source } => ImageError::Io { path, source },
            other => ImageError::Write(other),
        }
    }
}

/// The resize step of the official `--preprocess` option (`data/base_dataset.py::get_transform`;
/// the official code tests `resize`, then `scale_width`, then `scale_shortside`). The size it
/// resizes to is [`Preprocess::load_size`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResizeMode {
    /// No resize.
    None,
    /// `resize`: squash to `load_size × load_size`.
    Resize,
    /// `scale_width`: width to `load_size`, height `int(load_size·h/w)`.
    ScaleWidth,
    /// `scale_shortside`: short side to `load_size`, the other `round(side·scale)`.
    ScaleShortside,
}

impl ResizeMode {
    /// The official step name (`resize`, `scale_width`, `scale_shortside`); `None` for no
    /// resize.
    pub fn step_name(self) -> Option<&'static str> {
        match self {
            ResizeMode::None => None,
            ResizeMode::Resize => Some("resize"),
            ResizeMode::ScaleWidth => Some("scale_width"),
            ResizeMode::ScaleShortside => Some("scale_shortside"),
        }
    }

    /// The mode of an official step name.
    pub fn from_step_name(step: &str) -> Option<Self> {
        [
            ResizeMode::Resize,
            ResizeMode::ScaleWidth,
            ResizeMode::ScaleShortside,
        ]
        .into_iter()
        .find(|m| m.step_name() == Some(step))
    }
}

/// The resize of the test transform: a [`ResizeMode`] and the `load_size` it resizes to. Crop
/// steps are train-only (`sae-data`'s `Preprocessing`). Every resize ends with
/// `make_power_2(base=16)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Preprocess {
    /// The resize.
    pub resize: ResizeMode,
    /// `--load_size` (unused by [`ResizeMode::None`]).
    pub load_size: usize,
}

impl Preprocess {
    /// Keep the size, only round each side to a multiple of 16.
    pub const NONE: Preprocess = Preprocess {
        resize: ResizeMode::None,
        load_size: 0,
    };

    /// [`ResizeMode::Resize`] to `load_size`.
    pub const fn resize(load_size: usize) -> Self {
        Preprocess {
            resize: ResizeMode::Resize,
            load_size,
        }
    }

    /// [`ResizeMode::ScaleWidth`] to `load_size`.
    pub const fn scale_width(load_size: usize) -> Self {
        Preprocess {
            resize: ResizeMode::ScaleWidth,
            load_size,
        }
    }

    /// [`ResizeMode::ScaleShortside`] to `load_size`.
    pub const fn scale_shortside(load_size: usize) -> Self {
        Preprocess {
            resize: ResizeMode::ScaleShortside,
            load_size,
        }
    }
}

/// Reads a PNG or JPEG file as 8-bit RGB, as `PIL.Image.open(path).convert('RGB')` does.
///
/// - Grayscale is replicated to three channels; alpha is dropped without compositing (PIL's
///   `convert('RGB')` ignores it too); palettes are expanded.
/// - 16-bit samples keep their high byte (`v >> 8`). That is what PIL does for 16-bit RGB,
///   RGBA and gray+alpha PNGs. For 16-bit *grayscale* PIL opens mode `I;16` and its
///   `convert('RGB')` clips every value above 255 to 255, giving an almost white image; we
///   deliberately keep the high byte there as well.
/// - The format is sniffed from the content (as PIL does); the extension only breaks ties.
/// - EXIF orientation and ICC profiles are ignored, as in the official loader.
/// - JPEG is decoded by zune-jpeg, PIL uses libjpeg-turbo; they agree to within 2 levels
///   without chroma subsampling, but upsample 4:2:0 chroma differently: 3 levels at most on
///   the smooth fixture `photo.jpg`, up to 19 levels (mean 0.5) on pure noise.
/// - A JPEG cut before its end-of-image marker is refused, as PIL refuses it (zune-jpeg
///   alone would decode it). PNGs are checked a little more strictly than by PIL: one cut
///   inside the CRC of its last data chunk is an error here but loads with PIL; one cut
///   only inside the final IEND chunk loads with both.
///
/// # Errors
///
/// [`ImageError::Io`] if the file cannot be read, [`ImageError::Decode`] if it is not a
/// decodable image (including truncated files), [`ImageError::Empty`] for a 0-pixel image
/// (the PNG and JPEG decoders already refuse zero sizes as [`ImageError::Decode`]; the check
/// guards the other layers).
pub fn load_rgb(path: &Path) -> Result<RgbImage, ImageError> {
    // An encoded image over 512 MiB is refused before it is read (`/dev/zero` included).
    let bytes = crate::atomic::read_bounded(path, 512 << 20).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_rgb(&bytes, path)
}

/// The `(width, height)` of an image file, from its header (nothing is decoded).
///
/// # Errors
/// [`ImageError::Io`] if the file cannot be read, [`ImageError::Decode`] if its header is not
/// that of an image.
pub fn image_dimensions(path: &Path) -> Result<(usize, usize), ImageError> {
    let decode_err = |reason: String| ImageError::Decode {
        path: path.to_path_buf(),
        reason: reason.trim_end().to_string(),
    };
    let reader = ImageReader::open(path)
        .map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .with_guessed_format()
        .map_err(|e| decode_err(e.to_string()))?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| decode_err(e.to_string()))?;
    Ok((w as usize, h as usize))
}

/// Decodes an encoded image held in memory as 8-bit RGB, exactly as [`load_rgb`] does for a
/// file (same conversions, same refusal of truncated JPEGs).
///
/// `name` is only used to report errors and, through its extension, to break ties in format
/// sniffing; for images inside a zip archive or an LMDB it is the entry name or key.
///
/// # Errors
///
/// [`ImageError::Decode`] if the bytes are not a decodable image (including truncated data),
/// [`ImageError::Empty`] for a 0-pixel image.
pub fn decode_rgb(bytes: &[u8], name: &Path) -> Result<RgbImage, ImageError> {
    // Some decoder messages end with a newline; trimmed so the error stays one line.
    let decode_err = |reason: String| ImageError::Decode {
        path: name.to_path_buf(),
        reason: reason.trim_end().to_string(),
    };
    if image::guess_format(bytes).ok() == Some(ImageFormat::Jpeg) && jpeg_lacks_end(bytes) {
        return Err(decode_err(
            "truncated JPEG: the data ends before the end-of-image marker".to_string(),
        ));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes));
    // The extension is only a fallback: `with_guessed_format` overrides it when the magic
    // bytes are recognised, so a JPEG named `.png` still loads, as with PIL.
    if let Ok(format) = ImageFormat::from_path(name) {
        reader.set_format(format);
    }
    let reader = reader
        .with_guessed_format()
        .map_err(|e| decode_err(e.to_string()))?;
    if reader.format().is_none() {
        return Err(decode_err(
            "unrecognised image format (not one of the enabled decoders)".to_string(),
        ));
    }
    let decoded = reader.decode().map_err(|e| decode_err(e.to_string()))?;
    if decoded.width() == 0 || decoded.height() == 0 {
        return Err(ImageError::Empty {
            path: name.to_path_buf(),
        });
    }
    Ok(dynamic_to_rgb8(decoded))
}

/// Whether a JPEG stream ends before its end-of-image marker.
///
/// zune-jpeg decodes a JPEG cut inside its entropy-coded data without complaint, filling the
/// rest with whatever its state holds, while PIL refuses it ("image file is truncated"). This
/// walks the marker segments by their lengths (so an EXIF thumbnail inside APP1 is skipped
/// whole) and the entropy-coded data of each scan (where a data `FF` is always followed by
/// `00` or a restart marker), and reports `true` only when the bytes run out before EOI.
/// Anything after EOI (Motion Photo video, a second MPF picture) is never looked at, and a
/// stream it cannot follow is left to the decoder (`false`).
fn jpeg_lacks_end(bytes: &[u8]) -> bool {
    let mut i = 2; // just past SOI
    loop {
        match bytes.get(i) {
            None => return true,
            Some(0xFF) => {}
            Some(_) => return false, // not at a marker: malformed, the decoder will say how
        }
        // Any number of 0xFF fill bytes may precede a marker code.
        while bytes.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return true;
        };
        i += 1;
        match marker {
            0xD9 => return false,           // EOI
            0x01 | 0xD0..=0xD7 => continue, // TEM and RSTn stand alone
            _ => {}
        }
        let Some(len) = bytes.get(i..i + 2) else {
            return true;
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len < 2 {
            return false;
        }
        i += len;
        if marker == 0xDA {
            // Entropy-coded data follows the SOS header up to the next real marker.
            loop {
                let Some(ff) = bytes
                    .get(i..)
                    .and_then(|rest| rest.iter().position(|&v| v == 0xFF))
                else {
                    return true;
                };
                i += ff;
                match bytes.get(i + 1) {
                    None => return true,
                    Some(0x00 | 0xD0..=0xD7) => i += 2,
                    Some(_) => break,
                }
            }
        }
    }
}

/// Converts any decoded image to 8-bit RGB the way PIL's `convert('RGB')` would (16-bit
/// samples keep their high byte, gray is replicated, alpha is dropped; see [`load_rgb`]).
pub fn dynamic_to_rgb8(img: DynamicImage) -> RgbImage {
    // `image`'s own 16 → 8-bit conversion rounds `v·255/65535`, which differs from PIL's
    // high byte by one level on many values, so the 16-bit layouts are handled here.
    let high = |v: u16| (v >> 8) as u8;
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma16(g) => RgbImage::from_fn(g.width(), g.height(), |x, y| {
            let v = high(g.get_pixel(x, y)[0]);
            Rgb([v, v, v])
        }),
        DynamicImage::ImageLumaA16(g) => RgbImage::from_fn(g.width(), g.height(), |x, y| {
            let v = high(g.get_pixel(x, y)[0]);
            Rgb([v, v, v])
        }),
        DynamicImage::ImageRgb16(c) => RgbImage::from_fn(c.width(), c.height(), |x, y| {
            let p = c.get_pixel(x, y);
            Rgb([high(p[0]), high(p[1]), high(p[2])])
        }),
        DynamicImage::ImageRgba16(c) => RgbImage::from_fn(c.width(), c.height(), |x, y| {
            let p = c.get_pixel(x, y);
            Rgb([high(p[0]), high(p[1]), high(p[2])])
        }),
        // 8-bit gray, gray+alpha and RGBA: `image` replicates gray and drops alpha exactly
        // like PIL. Float layouts cannot come from the PNG and JPEG decoders.
        other => other.to_rgb8(),
    }
}

/// The official size after the `preprocess` step, before `make_power_2`.
///
/// Sides may come out as 0 here, where the official code would fail in PIL.
pub fn preprocess_dims(width: usize, height: usize, pre: Preprocess) -> (usize, usize) {
    let size = pre.load_size;
    match pre.resize {
        ResizeMode::None => (width, height),
        ResizeMode::Resize => (size, size),
        ResizeMode::ScaleWidth => {
            if width == size {
                // The official skip test (`ow == load_size and oh >= crop_size`) cannot change
                // the result: with ow == load_size the new height is oh either way.
                (width, height)
            } else {
                // Python `int(load_size * oh / ow)`: an exact integer product, a correctly
                // rounded true division, then truncation. f64 does the same below 2^53.
                let h = (size as u64 * height as u64) as f64 / width as f64;
                (size, h as usize)
            }
        }
        ResizeMode::ScaleShortside => {
            // Python: `scale = load_size / min(ow, oh)`, then `round(side * scale)` with
            // round-half-to-even, all in f64.
            let scale = size as f64 / width.min(height) as f64;
            let scaled = |side: usize| (side as f64 * scale).round_ties_even() as usize;
            (scaled(width), scaled(height))
        }
    }
}

/// `__make_power_2(base=16)` for one side: `round(side / 16) · 16`, at least 16.
///
/// Python's `round` is half-to-even, so 24 → 32 (round(1.5) = 2) but 40 → 32 (round(2.5) = 2).
/// The official code gives 0 for sides of 8 or less and then fails inside PIL; we use 16, the
/// smallest non-zero multiple of the base, so that tiny inputs still produce an image.
pub fn make_power_2_side(side: usize) -> usize {
    let rounded = ((side as f64 / POWER_2_BASE as f64).round_ties_even() as usize)
        .saturating_mul(POWER_2_BASE);
    rounded.max(POWER_2_BASE)
}

/// Saturating `usize` → `u32` for image sizes; a side that large could not be allocated anyway.
fn to_u32(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Resizes like PIL's `Image.resize`: nothing if the size is unchanged, otherwise the width
/// pass first, rounded to 8 bits, then the height pass (see the module docs for why).
///
/// With `FilterType::CatmullRom` this is PIL's `BICUBIC`, with `FilterType::Triangle` its
/// `BILINEAR`.
pub fn resize_like_pil<P>(
    img: Cow<'_, ImageBuffer<P, Vec<u8>>>,
    width: u32,
    height: u32,
    filter: FilterType,
) -> Cow<'_, ImageBuffer<P, Vec<u8>>>
where
    P: Pixel<Subpixel = u8> + 'static,
{
    let (ow, oh) = img.dimensions();
    let img = if width != ow {
        Cow::Owned(imageops::resize(img.as_ref(), width, oh, filter))
    } else {
        img
    };
    if height != oh {
        Cow::Owned(imageops::resize(img.as_ref(), width, height, filter))
    } else {
        img
    }
}

/// The official test-phase transform (`data/base_dataset.py::get_transform`): the `pre` resize,
/// then `make_power_2(base=16)`, both bicubic, then `[-1, 1]` normalisation of the 8-bit result.
/// No crop, no flip.
///
/// Each resize is PIL-like bicubic (see the module docs: bit-identical to PIL on the fixtures,
/// at most 2 levels apart in a random sweep). The image goes through 8 bits between steps, as
/// with PIL.
///
/// This function cannot fail: a side that the official code would shrink to 0 (`load_size`
/// 0, extreme aspect ratios with `ScaleWidth`) is kept at 1 pixel before `make_power_2`, which
/// then makes it 16; [`load_image`] reports those cases as [`ImageError::TooSmall`] instead.
/// An empty input gives a black 16×16 tensor.
pub fn test_transform(img: &RgbImage, pre: Preprocess) -> ImageTensor {
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width == 0 || height == 0 {
        let side = POWER_2_BASE;
        return ImageTensor::from_rgb8(&RgbImage::new(side as u32, side as u32));
    }
    let (pw, ph) = preprocess_dims(width, height, pre);
    let (pw, ph) = (pw.max(1), ph.max(1));
    let resized = resize_like_pil(
        Cow::Borrowed(img),
        to_u32(pw),
        to_u32(ph),
        FilterType::CatmullRom,
    );
    let (fw, fh) = (make_power_2_side(pw), make_power_2_side(ph));
    let resized = resize_like_pil(resized, to_u32(fw), to_u32(fh), FilterType::CatmullRom);
    ImageTensor::from_rgb8(&resized)
}

/// [`load_rgb`] then [`test_transform`].
///
/// # Errors
///
/// Those of [`load_rgb`], and [`ImageError::TooSmall`] when the `pre` resize would give a
/// zero side (where the official code fails).
pub fn load_image(path: &Path, pre: Preprocess) -> Result<ImageTensor, ImageError> {
    load_image_within(path, pre, usize::MAX)
}

/// [`load_image`] with a budget: an image that would be larger than `max_pixels` after the
/// preprocessing is refused *before* it is resized, so neither a huge file nor a huge
/// `load_size` makes this allocate more than the decoded image.
///
/// # Errors
/// Those of [`load_image`], and [`ImageError::TooManyPixels`] over the budget.
pub fn load_image_within(
    path: &Path,
    pre: Preprocess,
    max_pixels: usize,
) -> Result<ImageTensor, ImageError> {
    let img = load_rgb(path)?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let (new_width, new_height) = preprocess_dims(width, height, pre);
    if new_width == 0 || new_height == 0 {
        return Err(ImageError::TooSmall {
            path: path.to_path_buf(),
            width,
            height,
            pre,
            new_width,
            new_height,
        });
    }
    let (fw, fh) = (make_power_2_side(new_width), make_power_2_side(new_height));
    if fw.checked_mul(fh).is_none_or(|n| n > max_pixels) {
        return Err(ImageError::TooManyPixels {
            path: path.to_path_buf(),
            width: fw,
            height: fh,
            max_pixels,
        });
    }
    Ok(test_transform(&img, pre))
}

/// The official `util.tensor2im`: `clip((x+1)/2·255, 0, 255).astype(uint8)`, which truncates.
///
/// The arithmetic is the official `f32` arithmetic, so the results are bit-identical; values
/// beyond `[-1, 1]` (and infinities) clamp to 0 or 255.
///
/// Note that truncation makes `load → to_rgb8` lossy even in the official code: for `v` in
/// 1..=63, the `f32` value of `2·(v/255) − 1` (near −1, where `f32` steps are 6e-8) maps back
/// to just under `v`, which truncates to `v − 1`. Every other level comes back exactly.
///
/// # Errors
///
/// [`ImageError::BadShape`] if `data` does not hold `3·height·width` values or a side is 0;
/// [`ImageError::NotANumber`] for a NaN, which has no 8-bit value.
pub fn to_rgb8(t: &ImageTensor) -> Result<RgbImage, ImageError> {
    let plane = t.height.checked_mul(t.width);
    let expected = plane.and_then(|p| p.checked_mul(3));
    if t.height == 0 || t.width == 0 || expected != Some(t.data.len()) {
        return Err(ImageError::BadShape {
            height: t.height,
            width: t.width,
            expected: expected.unwrap_or(usize::MAX),
            len: t.data.len(),
        });
    }
    let plane = t.height * t.width;
    if let Some(i) = t.data.iter().position(|v| v.is_nan()) {
        return Err(ImageError::NotANumber {
            channel: i / plane,
            y: (i % plane) / t.width,
            x: i % t.width,
        });
    }
    let (Ok(w), Ok(h)) = (u32::try_from(t.width), u32::try_from(t.height)) else {
        return Err(ImageError::BadShape {
            height: t.height,
            width: t.width,
            expected: 3 * plane,
            len: t.data.len(),
        });
    };
    // `(x + 1) / 2 * 255` in that order, in f32, as numpy evaluates it; `as u8` truncates
    // toward zero like `astype(uint8)`, and the clamp makes the cast exact.
    let level = |x: f32| ((x.clamp(-1.0, 1.0) + 1.0) / 2.0 * 255.0) as u8;
    Ok(RgbImage::from_fn(w, h, |x, y| {
        let i = y as usize * t.width + x as usize;
        Rgb([
            level(t.data[i]),
            level(t.data[plane + i]),
            level(t.data[2 * plane + i]),
        ])
    }))
}

/// Writes `t` as an 8-bit RGB PNG through [`to_rgb8`].
///
/// The file is written to a temporary name in the same directory and renamed over `path`,
/// so a reader never sees a half-written image and an interrupted run leaves no truncated
/// PNG behind. The parent directory must exist.
///
/// # Errors
///
/// [`ImageError::Encode`] if the tensor is malformed or contains NaN, or if encoding fails;
/// [`ImageError::Io`] if the file cannot be created, written or renamed.
pub fn save_png(t: &ImageTensor, path: &Path) -> Result<(), ImageError> {
    let img = to_rgb8(t).map_err(|e| ImageError::Encode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    save_rgb_png(&img, path)
}

/// Encodes an 8-bit RGB image as PNG bytes (the one PNG encoder of the workspace).
///
/// # Errors
/// What the encoder reports (an image too large for PNG).
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes).write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(bytes)
}

/// Atomically writes an 8-bit RGB image (a grid, say) as PNG, as [`save_png`] does.
///
/// # Errors
/// [`ImageError::Encode`] if encoding fails, [`ImageError::Io`] if the file cannot be written,
/// [`ImageError::Write`] if the path holds something other than a regular file.
pub fn save_rgb_png(img: &RgbImage, path: &Path) -> Result<(), ImageError> {
    let bytes = encode_png(img).map_err(|e| ImageError::Encode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &bytes)?;
    Ok(())
}

/// Places images side by side, top-aligned; the strip is as tall as the tallest image and the
/// space below shorter images is filled with `pad_color`. No images give a 0×0 image.
pub fn hconcat(images: &[&RgbImage], pad_color: [u8; 3]) -> RgbImage {
    let width = images
        .iter()
        .fold(0u32, |w, im| w.saturating_add(im.width()));
    let height = images.iter().map(|im| im.height()).max().unwrap_or(0);
    let mut out = RgbImage::from_pixel(width, height, Rgb(pad_color));
    let mut x = 0;
    for im in images {
        imageops::replace(&mut out, *im, i64::from(x), 0);
        x += im.width();
    }
    out
}

/// Lays images out in a grid of `cell = (width, height)` pixels per cell on a white canvas.
///
/// The canvas has `rows.len()` rows and as many columns as the longest row. Each image is
/// placed at the top-left of its cell (and cropped to it if larger); `None` and missing cells
/// stay white, as the blank top-left cell of the official swapping grid.
pub fn grid(rows: &[Vec<Option<&RgbImage>>], cell: (u32, u32)) -> RgbImage {
    let (cw, ch) = cell;
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width = to_u32(cols).saturating_mul(cw);
    let height = to_u32(rows.len()).saturating_mul(ch);
    let mut out = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for (r, row) in rows.iter().enumerate() {
        for (c, im) in row.iter().enumerate() {
            if let Some(im) = im {
                let view = imageops::crop_imm(*im, 0, 0, cw.min(im.width()), ch.min(im.height()));
                let (x, y) = (c as i64 * i64::from(cw), r as i64 * i64::from(ch));
                imageops::replace(&mut out, &*view, x, y);
            }
        }
    }
    out
}

/// PIL's RGB → L conversion (ITU-R 601-2 luma in 16-bit fixed point, rounded), so a mask
/// saved in colour reads as it would with `convert('L')`; gray pixels map to themselves.
fn luma_pil(p: &Rgb<u8>) -> u8 {
    let [r, g, b] = p.0.map(u32::from);
    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
}

/// Loads a mask image (any format [`load_rgb`] reads, gray or colour, as luminance) resized
/// with bilinear filtering to `height × width`; values `v/255` in `[0, 1]`, row-major.
///
/// The resize is PIL-like `BILINEAR` (antialiased when shrinking) on the 8-bit luminance,
/// as `Image.open(p).convert('L').resize((w, h), BILINEAR)` would do (measured on a 37×29
/// noise mask at five sizes: at most 1 level from PIL, on under 2 % of the values). Alpha is
/// ignored.
///
/// # Errors
///
/// Those of [`load_rgb`], and [`ImageError::BadSize`] if `height` or `width` is 0.
pub fn load_mask(path: &Path, height: usize, width: usize) -> Result<Vec<f32>, ImageError> {
    if height == 0 || width == 0 {
        return Err(ImageError::BadSize {
            path: path.to_path_buf(),
            height,
            width,
        });
    }
    let rgb = load_rgb(path)?;
    let gray = GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        Luma([luma_pil(rgb.get_pixel(x, y))])
    });
    let gray = resize_like_pil(
        Cow::Owned(gray),
        to_u32(width),
        to_u32(height),
        FilterType::Triangle,
    );
    Ok(gray
        .as_raw()
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A fixture under `tests/fixtures/images/`.
    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/images")
            .join(name)
    }

    /// A fresh, empty scratch directory per test, so parallel tests never collide.
    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sae-image-io-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    /// The 8-bit pattern of the 5×4 fixtures (`pattern()` in make_image_fixtures.py).
    fn pattern(x: u32, y: u32, c: u32) -> u8 {
        ((x * 50 + y * 13 + c * 80) % 256) as u8
    }

    fn expected_pattern_rgb(gray: bool) -> RgbImage {
        RgbImage::from_fn(5, 4, |x, y| {
            if gray {
                let v = pattern(x, y, 0);
                Rgb([v, v, v])
            } else {
                Rgb([pattern(x, y, 0), pattern(x, y, 1), pattern(x, y, 2)])
            }
        })
    }

    /// The 16-bit samples of the 3×2 fixtures (`SAMPLES16` in make_image_fixtures.py).
    const SAMPLES16: [[[u16; 3]; 3]; 2] = [
        [[0, 255, 256], [383, 384, 65535], [32767, 32768, 32895]],
        [[32896, 65279, 65280], [100, 200, 300], [65534, 1, 128]],
    ];

    fn expected_16bit_high_byte(gray: bool) -> RgbImage {
        RgbImage::from_fn(3, 2, |x, y| {
            let s = SAMPLES16[y as usize][x as usize].map(|v| (v >> 8) as u8);
            if gray { Rgb([s[0]; 3]) } else { Rgb(s) }
        })
    }

    fn max_abs_diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
        assert_eq!(a.dimensions(), b.dimensions());
        let diffs: Vec<u8> = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(p, q)| p.abs_diff(*q))
            .collect();
        let max = diffs.iter().copied().max().unwrap_or(0);
        (max, diffs.iter().filter(|&&d| d > 0).count())
    }

    #[test]
    fn loads_8bit_pngs_like_pil_convert_rgb() {
        let rgb = expected_pattern_rgb(false);
        let gray = expected_pattern_rgb(true);
        for (name, expected) in [
            ("rgb.png", &rgb),
            ("rgba.png", &rgb),
            ("palette.png", &rgb),
            ("gray.png", &gray),
            ("gray_alpha.png", &gray),
        ] {
            let img = load_rgb(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&img, expected, "{name}");
        }
    }

    #[test]
    fn loads_16bit_pngs_keeping_the_high_byte() {
        for (name, gray) in [
            ("rgb16.png", false),
            ("rgba16.png", false),
            ("gray_alpha16.png", true),
            // PIL clips this one to 255 instead (mode I;16); see `load_rgb`.
            ("gray16.png", true),
        ] {
            let img = load_rgb(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(img, expected_16bit_high_byte(gray), "{name}");
        }
    }

    #[test]
    fn loads_jpeg_close_to_libjpeg() {
        let ours = load_rgb(&fixture("photo.jpg")).expect("decode jpeg");
        let pil = load_rgb(&fixture("photo.jpg.pil.png")).expect("decode reference");
        let (max, count) = max_abs_diff(&ours, &pil);
        // zune-jpeg and PIL's libjpeg(-turbo) differ in IDCT rounding and chroma upsampling
        // near the hard-edged block. Measured on this fixture: max 3 levels (one value), 217
        // of 768 values differ, mean 0.40. Allow one level of headroom on the max for decoder
        // updates; the mean bound catches a systematic error such as a colour-space mix-up.
        let sum: u32 = ours
            .as_raw()
            .iter()
            .zip(pil.as_raw())
            .map(|(p, q)| u32::from(p.abs_diff(*q)))
            .sum();
        let mean = f64::from(sum) / pil.as_raw().len() as f64;
        assert!(
            max <= 4,
            "JPEG decode differs from PIL by {max} levels ({count} values)"
        );
        assert!(
            mean <= 1.0,
            "JPEG decode differs from PIL by {mean:.3} levels on average"
        );
    }

    #[test]
    fn sniffs_the_format_from_the_content() {
        let dir = scratch("sniff");
        let path = dir.join("actually_a_jpeg.png");
        fs::copy(fixture("photo.jpg"), &path).expect("copy");
        let img = load_rgb(&path).expect("a JPEG named .png still loads");
        assert_eq!(img.dimensions(), (16, 16));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn text_file_named_png_is_a_decode_error_naming_the_file() {
        let dir = scratch("text");
        let path = dir.join("notes.png");
        fs::write(&path, "this is not an image\n").expect("write");
        let err = load_rgb(&path).expect_err("text is not an image");
        assert!(matches!(err, ImageError::Decode { .. }), "{err:?}");
        assert!(err.to_string().contains("notes.png"), "{err}");
        let err = load_image(&path, Preprocess::NONE).expect_err("same through load_image");
        assert!(err.to_string().contains("notes.png"), "{err}");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn truncated_files_are_errors_not_panics() {
        let dir = scratch("truncated");
        for (source, ext) in [("bicubic_src.png", "png"), ("photo.jpg", "jpg")] {
            let bytes = fs::read(fixture(source)).expect("read");
            // Cut inside the signature, the header, the image data, and (PNG) the last data
            // chunk's CRC or (JPEG) the end-of-image marker, which zune-jpeg alone would accept.
            let last = if ext == "png" { 13 } else { 1 };
            for cut in [4, 20, 40, bytes.len() / 2, bytes.len() - last] {
                let path = dir.join(format!("cut_{cut}.{ext}"));
                fs::write(&path, &bytes[..cut]).expect("write");
                let err = load_rgb(&path).expect_err("truncated file");
                assert!(
                    matches!(err, ImageError::Decode { .. }),
                    "{source} cut at {cut}: {err:?}"
                );
                assert!(
                    err.to_string().contains(&format!("cut_{cut}.{ext}")),
                    "{err}"
                );
            }
        }
        // Only the trailing IEND chunk damaged: every pixel is there, and PIL loads it too.
        let bytes = fs::read(fixture("bicubic_src.png")).expect("read");
        let path = dir.join("no_iend.png");
        fs::write(&path, &bytes[..bytes.len() - 1]).expect("write");
        assert_eq!(
            load_rgb(&path).expect("IEND is not needed"),
            load_rgb(&fixture("bicubic_src.png")).expect("load")
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn jpeg_end_detection_skips_thumbnails_and_trailing_data() {
        let jpeg = fs::read(fixture("photo.jpg")).expect("read");
        assert!(!jpeg_lacks_end(&jpeg));
        assert!(jpeg_lacks_end(&jpeg[..jpeg.len() - 1]));
        assert!(jpeg_lacks_end(&jpeg[..jpeg.len() / 2]));
        // Data after EOI (Motion Photo video, say) may hold any bytes, SOS-like ones included.
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"\xFF\xDA\x00\x08junk");
        assert!(!jpeg_lacks_end(&trailing));
        // An APP1 segment embedding a whole JPEG (an EXIF thumbnail has its own SOS and EOI)
        // is skipped by length, so cutting the main image is still detected.
        let mut with_thumb = jpeg[..2].to_vec();
        with_thumb.extend_from_slice(&[0xFF, 0xE1]);
        with_thumb.extend_from_slice(&((jpeg.len() + 2) as u16).to_be_bytes());
        with_thumb.extend_from_slice(&jpeg);
        with_thumb.extend_from_slice(&jpeg[2..]);
        assert!(!jpeg_lacks_end(&with_thumb));
        assert!(jpeg_lacks_end(&with_thumb[..with_thumb.len() - 40]));
        let dir = scratch("thumb");
        let path = dir.join("thumb.jpg");
        fs::write(&path, &with_thumb).expect("write");
        assert_eq!(
            load_rgb(&path).expect("loads"),
            load_rgb(&fixture("photo.jpg")).expect("loads")
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn missing_file_is_an_io_error_naming_the_file() {
        let err = load_rgb(Path::new("/nonexistent/dir/missing.png")).expect_err("missing");
        assert!(matches!(err, ImageError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.png"), "{err}");
    }

    #[test]
    fn zero_sized_png_is_rejected() {
        // A well-formed PNG with a 0x0 IHDR: the png crate refuses it while decoding, so it
        // surfaces as Decode; either way it must be an error naming the file, not a panic.
        let dir = scratch("zero");
        let path = dir.join("zero.png");
        fs::write(&path, zero_png()).expect("write");
        let err = load_rgb(&path).expect_err("0x0 image");
        assert!(
            matches!(err, ImageError::Empty { .. } | ImageError::Decode { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("zero.png"), "{err}");
        let _ = fs::remove_dir_all(dir);
    }

    /// A PNG whose IHDR says 0x0 with valid CRCs, built by hand.
    fn zero_png() -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &b in bytes {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 != 0 {
                        (crc >> 1) ^ 0xEDB8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |tag: &[u8], data: &[u8]| {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut body = tag.to_vec();
            body.extend_from_slice(data);
            out.extend_from_slice(&body);
            out.extend_from_slice(&crc32(&body).to_be_bytes());
        };
        chunk(b"IHDR", &[0, 0, 0, 0, 0, 0, 0, 0, 8, 2, 0, 0, 0]);
        // zlib stream of zero bytes: header, empty stored block, Adler-32 of nothing.
        chunk(
            b"IDAT",
            &[0x78, 0x01, 0x01, 0x00, 0x00, 0xFF, 0xFF, 0, 0, 0, 1],
        );
        chunk(b"IEND", &[]);
        out
    }

    #[test]
    fn make_power_2_rounds_half_to_even_with_a_floor_of_16() {
        for (side, expected) in [
            (100, 96),  // round(6.25) = 6
            (120, 128), // round(7.5) = 8 (even)
            (24, 32),   // round(1.5) = 2
            (40, 32),   // round(2.5) = 2 (even), not 48
            (56, 64),   // round(3.5) = 4
            (72, 64),   // round(4.5) = 4
            (256, 256),
            (257, 256),
            (8, 16), // official: round(0.5) = 0 → PIL fails; we use 16
            (1, 16),
            (16, 16),
        ] {
            assert_eq!(make_power_2_side(side), expected, "side {side}");
        }
    }

    #[test]
    fn preprocess_sizes_follow_the_official_formulas() {
        let img = RgbImage::from_pixel(300, 200, Rgb([10, 20, 30]));
        let t = test_transform(&img, Preprocess::scale_shortside(256));
        assert_eq!(
            (t.width, t.height),
            (384, 256),
            "aspect kept: 300x200 → 384x256"
        );
        let t = test_transform(&img, Preprocess::scale_width(256));
        // h = int(256·200/300) = 170 → round(10.625)·16 = 176.
        assert_eq!((t.width, t.height), (256, 176));
        let t = test_transform(&img, Preprocess::resize(100));
        assert_eq!((t.width, t.height), (96, 96));
        let t = test_transform(&img, Preprocess::NONE);
        // 300 → round(18.75)·16 = 304, 200 → round(12.5)·16 = 192.
        assert_eq!((t.width, t.height), (304, 192));
        assert_eq!(
            preprocess_dims(375, 500, Preprocess::scale_shortside(512)),
            (512, 683)
        );
        // A constant image stays constant through both bicubic resizes.
        let expected = normalize_u8(20);
        let g = &t.data[t.width * t.height..2 * t.width * t.height];
        assert!(g.iter().all(|&v| v == expected));
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        let tiny = RgbImage::from_pixel(3, 5, Rgb([1, 2, 3]));
        let t = test_transform(&tiny, Preprocess::NONE);
        assert_eq!((t.width, t.height), (16, 16));
        let t = test_transform(&tiny, Preprocess::resize(0));
        assert_eq!((t.width, t.height), (16, 16));
        let wide = RgbImage::new(400, 1);
        let t = test_transform(&wide, Preprocess::scale_width(100));
        assert_eq!((t.width, t.height), (96, 16));
        let empty = RgbImage::new(0, 0);
        let t = test_transform(&empty, Preprocess::scale_shortside(32));
        assert_eq!(t.data.len(), 3 * 16 * 16);
        assert!(t.data.iter().all(|&v| v == -1.0));
    }

    #[test]
    fn load_image_reports_sizes_the_official_code_cannot_handle() {
        let dir = scratch("toosmall");
        let path = dir.join("wide.png");
        RgbImage::new(40, 1).save(&path).expect("save");
        // int(16·1/40) = 0.
        let err = load_image(&path, Preprocess::scale_width(16)).expect_err("zero height");
        assert!(
            matches!(err, ImageError::TooSmall { new_height: 0, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("wide.png"), "{err}");
        assert!(load_image(&path, Preprocess::NONE).is_ok());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn normalisation_is_the_official_one() {
        let img = RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                Rgb([0, 128, 255])
            } else {
                Rgb([64, 1, 254])
            }
        });
        let t = ImageTensor::from_rgb8(&img);
        assert_eq!((t.height, t.width), (1, 2));
        // CHW: R plane [0, 64], G plane [128, 1], B plane [255, 254].
        let expected: Vec<f32> = [0u8, 64, 128, 1, 255, 254]
            .iter()
            .map(|&v| 2.0 * (f32::from(v) / 255.0) - 1.0)
            .collect();
        assert_eq!(t.data, expected);
        assert_eq!(t.data[0], -1.0);
        assert_eq!(t.data[4], 1.0);
    }

    fn tensor_1x1(v: f32) -> ImageTensor {
        ImageTensor {
            height: 1,
            width: 1,
            data: vec![v; 3],
        }
    }

    #[test]
    fn to_rgb8_truncates_like_tensor2im() {
        for (x, expected) in [
            (0.999f32, 254u8), // 254.87 → 254, not 255
            (-1.0, 0),
            (1.0, 255),
            (0.0, 127), // 127.5 → 127
            (1.5, 255),
            (-7.0, 0),
            (f32::INFINITY, 255),
            (f32::NEG_INFINITY, 0),
        ] {
            let img = to_rgb8(&tensor_1x1(x)).expect("finite or infinite is fine");
            assert_eq!(img.get_pixel(0, 0).0, [expected; 3], "x = {x}");
        }
    }

    #[test]
    fn to_rgb8_rejects_nan_and_bad_shapes() {
        let mut t = ImageTensor {
            height: 2,
            width: 3,
            data: vec![0.0; 18],
        };
        t.data[6 + 3 + 2] = f32::NAN; // channel 1, row 1, column 2
        let err = to_rgb8(&t).expect_err("NaN");
        assert!(
            matches!(
                err,
                ImageError::NotANumber {
                    channel: 1,
                    y: 1,
                    x: 2
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("NaN"), "{err}");
        let bad = ImageTensor {
            height: 2,
            width: 3,
            data: vec![0.0; 17],
        };
        assert!(matches!(
            to_rgb8(&bad),
            Err(ImageError::BadShape { len: 17, .. })
        ));
        let empty = ImageTensor {
            height: 0,
            width: 3,
            data: vec![],
        };
        assert!(matches!(to_rgb8(&empty), Err(ImageError::BadShape { .. })));
        let dir = scratch("nan");
        let path = dir.join("nan.png");
        let err = save_png(&t, &path).expect_err("NaN cannot be saved");
        assert!(matches!(err, ImageError::Encode { .. }), "{err:?}");
        assert!(
            err.to_string().contains("nan.png") && err.to_string().contains("NaN"),
            "{err}"
        );
        assert!(!path.exists());
        assert_eq!(
            fs::read_dir(&dir).expect("list").count(),
            0,
            "no temp file left"
        );
        let _ = fs::remove_dir_all(dir);
    }

    /// A 16×16 tensor holding every 8-bit level once per channel (different orders per channel),
    /// normalised exactly as the loader does.
    fn all_levels_tensor() -> (ImageTensor, RgbImage) {
        let img = RgbImage::from_fn(16, 16, |x, y| {
            let k = (y * 16 + x) as u8;
            Rgb([k, 255 - k, k.wrapping_mul(7)])
        });
        (ImageTensor::from_rgb8(&img), img)
    }

    #[test]
    fn save_load_png_round_trip() {
        let dir = scratch("roundtrip");
        let path = dir.join("levels.png");
        let (t, levels) = all_levels_tensor();
        save_png(&t, &path).expect("save");
        let back = load_rgb(&path).expect("load");
        // The PNG itself is lossless: what comes back is exactly what to_rgb8 produced.
        assert_eq!(back, to_rgb8(&t).expect("convert"));
        // tensor2im truncates, and in f32 `2·(k/255) − 1` maps back to k − 1 for k in 1..=63
        // (the official pipeline loses the same level); every other k is exact.
        for (got, want) in back.as_raw().iter().zip(levels.as_raw()) {
            let expected = if (1..=63).contains(want) {
                want - 1
            } else {
                *want
            };
            assert_eq!(*got, expected, "level {want}");
        }
        // For an image made only of levels that survive (0 and 64..=255) the whole
        // tensor → PNG → tensor round trip is exact, bit for bit.
        let fixed = RgbImage::from_fn(16, 16, |x, y| {
            let k = 64 + ((y * 16 + x) % 192) as u8;
            Rgb([k, if x == 0 { 0 } else { k }, 255])
        });
        let t = ImageTensor::from_rgb8(&fixed);
        save_png(&t, &path).expect("overwrite");
        assert_eq!(load_rgb(&path).expect("load"), fixed);
        assert_eq!(load_image(&path, Preprocess::NONE).expect("load"), t);
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("levels.png")],
            "no temp files left"
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn save_png_into_a_missing_directory_is_an_io_error() {
        let (t, _) = all_levels_tensor();
        let err = save_png(&t, Path::new("/nonexistent/dir/out.png")).expect_err("no dir");
        assert!(matches!(err, ImageError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("out.png"), "{err}");
    }

    /// The fixture cases of make_image_fixtures.py (`CASES`).
    const BICUBIC_CASES: [(&str, Preprocess); 6] = [
        ("none", Preprocess::NONE),
        ("shortside40", Preprocess::scale_shortside(40)),
        ("shortside20", Preprocess::scale_shortside(20)),
        ("width50", Preprocess::scale_width(50)),
        ("resize16", Preprocess::resize(16)),
        ("resize24", Preprocess::resize(24)),
    ];

    /// The 8-bit image the transform produced (ImageTensor → levels, rounding to undo the
    /// normalisation exactly rather than truncating like tensor2im).
    fn tensor_levels(t: &ImageTensor) -> RgbImage {
        let plane = t.width * t.height;
        let level = |x: f32| ((x + 1.0) / 2.0 * 255.0).round() as u8;
        RgbImage::from_fn(t.width as u32, t.height as u32, |x, y| {
            let i = y as usize * t.width + x as usize;
            Rgb([
                level(t.data[i]),
                level(t.data[plane + i]),
                level(t.data[2 * plane + i]),
            ])
        })
    }

    #[test]
    fn bicubic_matches_pil_within_one_level() {
        let src = load_rgb(&fixture("bicubic_src.png")).expect("source");
        let mut report = Vec::new();
        for (name, pre) in BICUBIC_CASES {
            let pil = load_rgb(&fixture(&format!("bicubic_{name}.png"))).expect("reference");
            let ours = tensor_levels(&test_transform(&src, pre));
            assert_eq!(ours.dimensions(), pil.dimensions(), "{name}: size");
            let (max, count) = max_abs_diff(&ours, &pil);
            report.push(format!(
                "{name}: max {max}, {count}/{} values differ",
                pil.as_raw().len()
            ));
            // Measured: 0 on every case (bit-identical). The tolerance allows the one-level
            // rounding residue that a different `image` release could bring (PIL rounds 22-bit
            // fixed-point sums half up, `image` rounds f32 sums half away from zero; a random
            // sweep shows 0.13 % of values one level off), but fails on a real regression such
            // as a lost intermediate clip (up to 8 levels on this fixture).
            assert!(max <= 1, "{name}: max diff {max} levels, {count} values");
            assert!(
                count * 100 <= pil.as_raw().len(),
                "{name}: {count} values differ"
            );
        }
        println!("bicubic vs PIL: {}", report.join("; "));
    }

    #[test]
    fn hconcat_pads_shorter_images() {
        let a = RgbImage::from_pixel(2, 3, Rgb([1, 1, 1]));
        let b = RgbImage::from_pixel(1, 1, Rgb([2, 2, 2]));
        let out = hconcat(&[&a, &b], [9, 8, 7]);
        assert_eq!(out.dimensions(), (3, 3));
        assert_eq!(out.get_pixel(1, 2).0, [1, 1, 1]);
        assert_eq!(out.get_pixel(2, 0).0, [2, 2, 2]);
        assert_eq!(out.get_pixel(2, 1).0, [9, 8, 7]);
        assert_eq!(hconcat(&[], [0, 0, 0]).dimensions(), (0, 0));
    }

    #[test]
    fn grid_places_images_top_left_with_white_blanks() {
        let small = RgbImage::from_pixel(2, 1, Rgb([10, 10, 10]));
        let big = RgbImage::from_pixel(5, 5, Rgb([20, 20, 20]));
        let rows = vec![vec![None, Some(&small)], vec![Some(&big)]];
        let out = grid(&rows, (3, 2));
        assert_eq!(out.dimensions(), (6, 4));
        assert_eq!(out.get_pixel(0, 0).0, [255; 3], "blank top-left cell");
        assert_eq!(out.get_pixel(3, 0).0, [10; 3]);
        assert_eq!(out.get_pixel(4, 0).0, [10; 3]);
        assert_eq!(out.get_pixel(5, 0).0, [255; 3], "right of a narrow image");
        assert_eq!(out.get_pixel(3, 1).0, [255; 3], "below a short image");
        assert_eq!(
            out.get_pixel(2, 3).0,
            [20; 3],
            "big image cropped to its cell"
        );
        assert_eq!(out.get_pixel(3, 2).0, [255; 3], "missing cell");
    }

    #[test]
    fn mask_loads_as_unit_luminance() {
        let path = fixture("mask.png");
        let m = load_mask(&path, 6, 8).expect("mask at its own size");
        let expected: Vec<f32> = (0..6u32)
            .flat_map(|y| {
                (0..8u32).map(move |x| f32::from(((x * 36 + y * 51) % 256) as u8) / 255.0)
            })
            .collect();
        assert_eq!(m, expected);
        let m = load_mask(&path, 3, 16).expect("resized mask");
        assert_eq!(m.len(), 48);
        assert!(m.iter().all(|v| (0.0..=1.0).contains(v)));
        // A colour mask reads as PIL's `convert('L')`, which gives 141 at (1, 2) of rgb.png.
        let colour = load_mask(&fixture("rgb.png"), 4, 5).expect("colour mask");
        assert_eq!(colour[2 * 5 + 1], 141.0 / 255.0);
        assert_eq!(luma_pil(&Rgb([255, 255, 255])), 255);
        assert_eq!(luma_pil(&Rgb([100, 100, 100])), 100);
        assert!(matches!(
            load_mask(&path, 0, 4),
            Err(ImageError::BadSize { .. })
        ));
    }
}
