//! The training transform against PIL: the fixtures of
//! `tools/reference/make_transform_fixtures.py` (the official `get_transform` with
//! `isTrain=True`, random draws fixed per case) replayed with `TrainTransform::apply_with`.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use sae_data::{Augment, CropMode, TrainTransform};
use sae_model::image_io::{ImageTensor, RgbImage, load_rgb};
use serde::Deserialize;

#[derive(Deserialize)]
struct Cases {
    source: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    preprocess: String,
    load_size: usize,
    crop_size: usize,
    crop_x: usize,
    crop_y: usize,
    flip: bool,
    width: usize,
    height: usize,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/transforms")
        .join(name)
}

fn cases() -> Cases {
    let text = std::fs::read_to_string(fixture("cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("parse cases.json")
}

/// The 8-bit levels behind a normalised tensor (rounding undoes `2·(v/255) − 1` exactly).
fn levels(t: &ImageTensor) -> RgbImage {
    let plane = t.width * t.height;
    let level = |x: f32| ((x + 1.0) / 2.0 * 255.0).round() as u8;
    RgbImage::from_fn(t.width as u32, t.height as u32, |x, y| {
        let i = y as usize * t.width + x as usize;
        image::Rgb([
            level(t.data[i]),
            level(t.data[plane + i]),
            level(t.data[2 * plane + i]),
        ])
    })
}

#[test]
fn train_transform_matches_pil() {
    let all = cases();
    let src = load_rgb(&fixture(&all.source)).expect("source");
    assert!(all.cases.len() >= 10);
    let mut report = Vec::new();
    for case in &all.cases {
        let t = TrainTransform::new(&case.preprocess, case.load_size, case.crop_size, true)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let aug = Augment {
            crop_x: case.crop_x,
            crop_y: case.crop_y,
            flip: case.flip,
        };
        let ours = t.apply_with(&src, aug, &case.name).expect("transform");
        assert_eq!(
            (ours.width, ours.height),
            (case.width, case.height),
            "{}: size",
            case.name
        );
        // Every value must be one of the 256 normalised levels.
        let back = ImageTensor::from_rgb8(&levels(&ours));
        assert_eq!(back, ours, "{}: not an 8-bit image normalised", case.name);
        let pil = load_rgb(&fixture(&format!("{}.png", case.name))).expect("reference");
        let ours = levels(&ours);
        let diffs: Vec<u8> = ours
            .as_raw()
            .iter()
            .zip(pil.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let max = diffs.iter().copied().max().unwrap_or(0);
        let count = diffs.iter().filter(|&&d| d > 0).count();
        report.push(format!("{}: max {max}, {count}/{}", case.name, diffs.len()));
        // Tolerance: 1 level on at most 1 % of the values. Measured: bit-identical on 11 of
        // the 12 cases; `resize_and_crop_24` (two resizes: 41x29 -> 32x32, then the 24 crop
        // back up to 32) has 2 of 3072 values one level off. That is the documented residue
        // of image_io's two-pass bicubic (PIL rounds 22-bit fixed-point sums half up, `image`
        // rounds f32 sums; a random sweep in image_io found 0.13 % of values one level off,
        // at most 2 after two passes). A real
        // regression (a lost 8-bit intermediate, a crop off by one pixel, a flip in the wrong
        // place) moves many values by many levels.
        assert!(max <= 1, "{}: max diff {max} levels", case.name);
        assert!(
            count * 100 <= diffs.len(),
            "{}: {count} values differ",
            case.name
        );
    }
    println!("training transform vs PIL: {}", report.join("; "));
}

#[test]
fn random_draws_stay_inside_the_image_and_flip_about_half() {
    let all = cases();
    let src = load_rgb(&fixture(&all.source)).expect("source");
    for case in &all.cases {
        let t = TrainTransform::new(&case.preprocess, case.load_size, case.crop_size, true)
            .expect("transform");
        let (w, h) = t.resized_size(41, 29);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let mut flips = 0;
        let mut seen_max_x = false;
        for _ in 0..400 {
            let aug = t.draw(41, 29, &mut rng);
            flips += usize::from(aug.flip);
            if t.preprocess.crop == CropMode::Random {
                assert!(aug.crop_x + case.crop_size <= w && aug.crop_y + case.crop_size <= h);
                seen_max_x |= aug.crop_x == w - case.crop_size;
            } else {
                assert_eq!((aug.crop_x, aug.crop_y), (0, 0));
            }
        }
        assert!(
            (150..250).contains(&flips),
            "{}: {flips} flips of 400",
            case.name
        );
        if t.preprocess.crop == CropMode::Random {
            assert!(
                seen_max_x,
                "{}: the last crop column is never drawn",
                case.name
            );
        }
        // `apply` is `draw` + `apply_with`.
        let mut a = Xoshiro256PlusPlus::seed_from_u64(9);
        let mut b = Xoshiro256PlusPlus::seed_from_u64(9);
        let aug = t.draw(41, 29, &mut a);
        assert_eq!(
            t.apply(&src, &mut b, "k").expect("apply"),
            t.apply_with(&src, aug, "k").expect("apply_with")
        );
    }
    let no_flip = TrainTransform::new("none", 0, 0, false).expect("transform");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    assert!((0..100).all(|_| !no_flip.draw(41, 29, &mut rng).flip));
}
