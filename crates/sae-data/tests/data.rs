//! Datasets and the loader: layouts, bad files, resumption, determinism, conversion.
//!
//! Every test builds its data in its own scratch folder under the system temp dir, with
//! small images so the suite stays fast on two cores.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{ImageEncoder, Rgb, Rgba};
use sae_data::{
    Batch, DISTINCT_COLOURS, DataError, Dataset, Loader, LoaderConfig, LoaderState, SwapScore,
    SyntheticShapes, SyntheticStyle, TrainTransform, convert_to_zip, open_dataset,
    write_synthetic_folder,
};
use sae_model::image_io::RgbImage;

/// A fresh, empty scratch folder per test, so parallel tests never collide.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sae-data-{}-{test}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A colourful test image whose pixels depend on `seed`.
fn pattern(width: u32, height: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        Rgb([
            (x * 7 + seed * 31) as u8,
            (y * 5 + seed * 17) as u8,
            ((x + y) * 3 + seed * 11) as u8,
        ])
    })
}

fn png_bytes(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .expect("encode png");
    out
}

fn jpeg_bytes(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(img)
        .expect("encode jpeg");
    out
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(path, bytes).expect("write");
}

/// A folder with nested subfolders, gray/RGBA/JPEG images, a corrupt PNG, a truncated JPEG
/// and a non-image file. Returns the folder and the keys of the two bad files.
fn mixed_folder(test: &str) -> (PathBuf, [&'static str; 2]) {
    let dir = scratch(test);
    write(&dir.join("a/01.png"), &png_bytes(&pattern(40, 36, 1)));
    write(&dir.join("a/b/c/02.png"), &png_bytes(&pattern(36, 40, 2)));
    let gray = image::GrayImage::from_fn(40, 40, |x, y| image::Luma([(x * 6 + y) as u8]));
    gray.save(dir.join("a/b/gray.png")).expect("gray");
    let rgba = image::RgbaImage::from_fn(48, 40, |x, y| {
        Rgba([x as u8 * 5, y as u8 * 6, 90, (x * y) as u8])
    });
    rgba.save(dir.join("rgba.PNG")).expect("rgba");
    write(&dir.join("photo.jpg"), &jpeg_bytes(&pattern(44, 40, 3)));
    write(&dir.join("z/05.png"), &png_bytes(&pattern(40, 40, 5)));
    // Random bytes under an image name, and a JPEG cut in half.
    let noise: Vec<u8> = (0..3000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write(&dir.join("bad.png"), &noise);
    let jpeg = jpeg_bytes(&pattern(40, 40, 4));
    write(&dir.join("a/trunc.jpg"), &jpeg[..jpeg.len() / 2]);
    write(&dir.join("notes.txt"), b"not an image");
    (dir, ["bad.png", "a/trunc.jpg"])
}

fn config(batch_size: usize, workers: usize, transform: TrainTransform) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        workers,
        prefetch: 2,
        seed: 1234,
        transform,
    }
}

fn crop_flip(load: usize, crop: usize) -> TrainTransform {
    TrainTransform::new("scale_shortside_and_crop", load, crop, true).expect("transform")
}

fn take(loader: &mut Loader, n: usize) -> Vec<Batch> {
    (0..n)
        .map(|_| loader.next_batch().expect("batch"))
        .collect()
}

#[test]
fn folder_lists_nested_sorted_images_and_converts_to_rgb() {
    let (dir, _) = mixed_folder("folder");
    // A link back to the root is followed like os.walk(followlinks=True) would, but not in
    // circles.
    #[cfg(unix)]
    std::os::unix::fs::symlink(&dir, dir.join("a/b/loop")).expect("symlink");
    let ds = open_dataset(&dir).expect("open folder");
    let keys: Vec<String> = (0..ds.len()).map(|i| ds.key(i)).collect();
    assert_eq!(
        keys,
        [
            "a/01.png",
            "a/b/c/02.png",
            "a/b/gray.png",
            "a/trunc.jpg",
            "bad.png",
            "photo.jpg",
            "rgba.PNG",
            "z/05.png"
        ]
    );
    let gray = ds.decode(2).expect("gray decodes");
    assert!(
        gray.pixels().all(|p| p[0] == p[1] && p[1] == p[2]),
        "gray → RGB replicates"
    );
    assert_eq!(gray.get_pixel(3, 2).0, [20, 20, 20]);
    let rgba = ds.decode(6).expect("rgba decodes");
    assert_eq!(
        rgba.get_pixel(4, 3).0,
        [20, 18, 90],
        "alpha dropped, colour kept"
    );
    assert_eq!(ds.decode(0).expect("png"), pattern(40, 36, 1));
    let err = ds.decode(4).expect_err("corrupt");
    assert!(err.to_string().contains("bad.png"), "{err}");
    let err = ds.decode(3).expect_err("truncated");
    assert!(err.to_string().contains("trunc.jpg"), "{err}");
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn loader_skips_and_counts_bad_files() {
    let (dir, bad) = mixed_folder("skips");
    let ds = open_dataset(&dir).expect("open");
    // 6 readable images: 3 full batches of 2 per epoch.
    let mut loader =
        Loader::new(ds, config(2, 2, crop_flip(32, 32)), LoaderState::default()).expect("loader");
    let mut skipped = 0;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let batch = loader.next_batch().expect("batch");
        assert_eq!(batch.shape, [2, 3, 32, 32]);
        assert_eq!(batch.images.len(), 2 * 3 * 32 * 32);
        assert!(batch.images.iter().all(|v| (-1.0..=1.0).contains(v)));
        for (key, reason) in &batch.skipped {
            assert!(bad.contains(&key.as_str()), "{key} skipped: {reason}");
            assert!(
                reason.contains(key.as_str()),
                "the reason names the file: {reason}"
            );
        }
        for key in &batch.keys {
            assert!(!bad.contains(&key.as_str()));
            seen.insert(key.clone());
        }
        skipped += batch.skipped.len() as u64;
    }
    assert_eq!(seen.len(), 6, "every readable image is used: {seen:?}");
    let state = loader.state();
    assert_eq!(state.skipped, skipped);
    // Two epochs are done; the second epoch's bad files may still lie ahead of the cursor.
    assert!((2..=4).contains(&skipped), "skipped {skipped}");
    // Epoch 1 ends after its third batch unless its last positions hold the bad files.
    assert!(
        state.epoch == 2 || (state.epoch == 1 && state.cursor >= 6),
        "{state:?}"
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_dataset_without_enough_readable_images_is_an_error_not_a_hang() {
    let dir = scratch("allbad");
    for i in 0..3 {
        write(&dir.join(format!("{i}.png")), b"definitely not a png");
    }
    let ds = open_dataset(&dir).expect("listing works");
    for workers in [0, 2] {
        let mut loader = Loader::new(
            Arc::clone(&ds),
            config(1, workers, crop_flip(16, 16)),
            LoaderState::default(),
        )
        .expect("loader");
        let err = loader.next_batch().expect_err("nothing readable");
        assert!(
            matches!(
                err,
                DataError::TooFewImages {
                    readable: 0,
                    total: 3,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(".png"), "{err}");
    }
    // One readable image but batches of two: also impossible.
    write(&dir.join("ok.png"), &png_bytes(&pattern(16, 16, 0)));
    let ds = open_dataset(&dir).expect("open");
    let mut loader =
        Loader::new(ds, config(2, 1, crop_flip(16, 16)), LoaderState::default()).expect("loader");
    assert!(matches!(
        loader.next_batch(),
        Err(DataError::TooFewImages { readable: 1, .. })
    ));
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn bad_paths_and_settings_are_typed_errors() {
    let dir = scratch("errors");
    let missing = dir.join("missing");
    assert!(matches!(
        open_dataset(&missing),
        Err(DataError::NotFound { .. })
    ));
    let empty = dir.join("empty");
    fs::create_dir_all(empty.join("sub")).expect("mkdir");
    write(&empty.join("sub/readme.txt"), b"text");
    let err = open_dataset(&empty).err().expect("empty");
    assert!(matches!(err, DataError::Empty { .. }), "{err:?}");
    assert!(err.to_string().contains("empty"), "{err}");
    write(&dir.join("file.bin"), b"x");
    assert!(matches!(
        open_dataset(&dir.join("file.bin")),
        Err(DataError::UnknownLayout { .. })
    ));
    write(&dir.join("broken.zip"), b"not a zip at all");
    assert!(matches!(
        open_dataset(&dir.join("broken.zip")),
        Err(DataError::Zip { .. })
    ));

    let ds: Arc<dyn Dataset> = Arc::new(SyntheticShapes::new(4, 16, 0).expect("synthetic"));
    let t = crop_flip(16, 16);
    let bad = |c: LoaderConfig, s: LoaderState| Loader::new(Arc::clone(&ds), c, s).err();
    assert!(matches!(
        bad(config(5, 1, t), LoaderState::default()),
        Some(DataError::BadConfig { .. })
    ));
    assert!(matches!(
        bad(config(0, 1, t), LoaderState::default()),
        Some(DataError::BadConfig { .. })
    ));
    let beyond = LoaderState {
        epoch: 0,
        cursor: 5,
        skipped: 0,
    };
    assert!(matches!(
        bad(config(2, 1, t), beyond),
        Some(DataError::BadState { .. })
    ));
    // A cursor at the end means the next epoch's start.
    let end = LoaderState {
        epoch: 3,
        cursor: 4,
        skipped: 7,
    };
    let loader = Loader::new(Arc::clone(&ds), config(2, 0, t), end).expect("loader");
    assert_eq!(
        loader.state(),
        LoaderState {
            epoch: 4,
            cursor: 0,
            skipped: 7
        }
    );
    assert!(matches!(
        TrainTransform::new("scale_shortside_and_zoom", 16, 16, true),
        Err(DataError::BadPreprocess { ref value, .. }) if value == "scale_shortside_and_zoom"
    ));
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn images_of_different_sizes_without_a_crop_are_a_size_error() {
    let dir = scratch("sizes");
    write(&dir.join("a.png"), &png_bytes(&pattern(32, 32, 1)));
    write(&dir.join("b.png"), &png_bytes(&pattern(64, 32, 2)));
    let ds = open_dataset(&dir).expect("open");
    let t = TrainTransform::new("none", 0, 0, false).expect("transform");
    let mut loader = Loader::new(ds, config(2, 0, t), LoaderState::default()).expect("loader");
    let err = loader.next_batch().expect_err("32x32 and 32x64");
    assert!(matches!(err, DataError::SizeMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(".png"), "{err}");
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn zip_archives_are_read_in_place() {
    let dir = scratch("zip");
    let path = dir.join("images.zip");
    let images: Vec<RgbImage> = (0..4).map(|i| pattern(40, 40, i)).collect();
    {
        let mut zip = zip::ZipWriter::new(fs::File::create(&path).expect("create"));
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let deflated = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.add_directory("imgs/", stored).expect("dir");
        // Out of name order in the archive; the dataset sorts them.
        zip.start_file("imgs/3.png", deflated).expect("start");
        zip.write_all(&png_bytes(&images[3])).expect("write");
        zip.start_file("imgs/0.png", stored).expect("start");
        zip.write_all(&png_bytes(&images[0])).expect("write");
        zip.start_file("imgs/1.jpg", stored).expect("start");
        zip.write_all(&jpeg_bytes(&images[1])).expect("write");
        zip.start_file("imgs/2.PNG", deflated).expect("start");
        zip.write_all(&png_bytes(&images[2])).expect("write");
        zip.start_file("LICENSE.txt", deflated).expect("start");
        zip.write_all(b"license").expect("write");
        zip.finish().expect("finish");
    }
    let ds = open_dataset(&path).expect("open zip");
    let keys: Vec<String> = (0..ds.len()).map(|i| ds.key(i)).collect();
    assert_eq!(
        keys,
        ["imgs/0.png", "imgs/1.jpg", "imgs/2.PNG", "imgs/3.png"]
    );
    assert_eq!(ds.decode(0).expect("stored"), images[0]);
    assert_eq!(ds.decode(2).expect("deflated"), images[2]);
    assert_eq!(ds.decode(3).expect("deflated"), images[3]);
    assert_eq!(ds.read(0).expect("bytes"), png_bytes(&images[0]));
    // Concurrent reads through the shared file handle.
    let ds2 = Arc::clone(&ds);
    let handle = std::thread::spawn(move || {
        (0..50)
            .map(|i| ds2.read(i % 4).expect("read").len())
            .sum::<usize>()
    });
    let here: usize = (0..50).map(|i| ds.read(i % 4).expect("read").len()).sum();
    assert_eq!(handle.join().expect("thread"), here);
    let mut loader =
        Loader::new(ds, config(2, 2, crop_flip(32, 32)), LoaderState::default()).expect("loader");
    let batch = loader.next_batch().expect("batch");
    assert_eq!(batch.shape, [2, 3, 32, 32]);
    assert!(batch.skipped.is_empty());
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn resumed_loader_continues_bit_for_bit() {
    let (dir, _) = mixed_folder("resume");
    let folder = open_dataset(&dir).expect("open");
    let synthetic: Arc<dyn Dataset> = Arc::new(SyntheticShapes::new(10, 48, 5).expect("synthetic"));
    // Folder: 6 readable of 8, batches of 2; synthetic: 10 images, batches of 3 (one dropped
    // per epoch). Seven batches span several epochs in both.
    for (ds, b, t) in [
        (folder, 2, crop_flip(36, 32)),
        (synthetic, 3, crop_flip(40, 32)),
    ] {
        let straight = take(
            &mut Loader::new(Arc::clone(&ds), config(b, 2, t), LoaderState::default())
                .expect("loader"),
            7,
        );
        for k in [1, 3, 4] {
            let mut first = Loader::new(Arc::clone(&ds), config(b, 3, t), LoaderState::default())
                .expect("loader");
            let head = take(&mut first, k);
            let state = first.state();
            drop(first);
            // Through serde, as a checkpoint would store it.
            let state: LoaderState =
                serde_json::from_str(&serde_json::to_string(&state).expect("ser")).expect("de");
            let mut resumed = Loader::new(Arc::clone(&ds), config(b, 1, t), state).expect("resume");
            let tail = take(&mut resumed, 7 - k);
            let joined: Vec<&Batch> = head.iter().chain(tail.iter()).collect();
            for (i, (a, b)) in straight.iter().zip(joined).enumerate() {
                assert_eq!(
                    a.keys,
                    b.keys,
                    "{}: batch {i} keys (resumed after {k})",
                    ds.describe()
                );
                assert!(
                    a.images == b.images,
                    "{}: batch {i} images (resumed after {k})",
                    ds.describe()
                );
                assert_eq!(a.skipped, b.skipped, "batch {i} skips");
            }
            assert_eq!(resumed.state().skipped, {
                let mut l = Loader::new(Arc::clone(&ds), config(b, 0, t), LoaderState::default())
                    .expect("loader");
                take(&mut l, 7);
                l.state().skipped
            });
        }
    }
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn batches_do_not_depend_on_the_number_of_workers() {
    let ds: Arc<dyn Dataset> = Arc::new(SyntheticShapes::new(9, 40, 11).expect("synthetic"));
    let t = crop_flip(36, 32);
    let run = |workers: usize, prefetch: usize| {
        let mut c = config(4, workers, t);
        c.prefetch = prefetch;
        take(
            &mut Loader::new(Arc::clone(&ds), c, LoaderState::default()).expect("loader"),
            5,
        )
    };
    let one = run(1, 2);
    assert_eq!(one, run(3, 1));
    assert_eq!(one, run(0, 0));
    assert_eq!(one, run(2, 8));
    // Shuffled: each epoch sees 8 distinct images, and epochs differ in order.
    assert_ne!(one[0].keys, one[2].keys);
    let mut epoch0: Vec<_> = one[0].keys.iter().chain(&one[1].keys).collect();
    epoch0.sort();
    epoch0.dedup();
    assert_eq!(epoch0.len(), 8);
    // Another seed gives other batches.
    let mut c = config(4, 2, t);
    c.seed += 1;
    let other = take(
        &mut Loader::new(Arc::clone(&ds), c, LoaderState::default()).expect("loader"),
        1,
    );
    assert_ne!(other[0], one[0]);
    // Dropping a loader with blocked workers returns promptly.
    let mut c = config(1, 3, t);
    c.prefetch = 1;
    let mut loader = Loader::new(ds, c, LoaderState::default()).expect("loader");
    loader.next_batch().expect("batch");
    std::thread::sleep(std::time::Duration::from_millis(50));
    drop(loader);
}

#[test]
fn synthetic_shapes_are_deterministic_and_written_as_pngs() {
    let a = SyntheticShapes::new(6, 32, 42).expect("synthetic");
    let b = SyntheticShapes::new(6, 32, 42).expect("synthetic");
    for i in 0..6 {
        assert_eq!(a.render(i), b.render(i));
    }
    assert_ne!(a.render(0), a.render(1));
    assert_ne!(
        a.render(0),
        SyntheticShapes::new(6, 32, 43)
            .expect("synthetic")
            .render(0)
    );
    // A swap ground truth differs from both of its sources.
    let swap = a.render_parts(0, 1);
    assert_ne!(swap, a.render(0));
    assert_ne!(swap, a.render(1));
    // The texture of image 1 on the structure of image 0 uses image 1's colours only where
    // both images use the sky and ground labels: compare colour counts as a sanity check.
    let colours = |img: &RgbImage| {
        let mut c: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        c.sort();
        c.dedup();
        c.len()
    };
    assert!(
        colours(&swap) >= 2 && colours(&swap) <= 12,
        "{}",
        colours(&swap)
    );
    assert!(SyntheticShapes::new(0, 32, 1).is_err());
    assert!(SyntheticShapes::new(3, 4, 1).is_err());

    let dir = scratch("synthetic");
    assert_eq!(
        write_synthetic_folder(&dir.join("set"), 6, 32, 42).expect("write"),
        6
    );
    let ds = open_dataset(&dir.join("set")).expect("open");
    assert_eq!(ds.len(), 6);
    for i in 0..6 {
        assert_eq!(ds.key(i), format!("{i:06}.png"));
        assert_eq!(ds.decode(i).expect("decode"), a.render(i));
        assert_eq!(a.decode(i).expect("render"), a.render(i));
        assert_eq!(
            sae_model::image_io::decode_rgb(&a.read(i).expect("png"), Path::new("x.png"))
                .expect("png"),
            a.render(i)
        );
    }
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn flat_synthetic_shapes_swap_colours_onto_layouts() {
    let flat = SyntheticShapes::new(8, 32, 5)
        .expect("synthetic")
        .with_style(SyntheticStyle::Flat);
    let colours = |img: &RgbImage| {
        let mut c: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        c.sort();
        c.dedup();
        c
    };
    let (s, t) = (flat.render(0), flat.render(1));
    // Sky, ground and one shape (which may hide one of the other two).
    assert!((2..=3).contains(&colours(&s).len()), "{:?}", colours(&s));
    // The swap's layout is image 0's: two pixels share a colour in the swap exactly when they
    // share one in image 0 (palette colours are drawn independently, so they differ).
    let swap = flat.render_parts(0, 1);
    let (a, b) = (s.as_raw(), swap.as_raw());
    for i in (0..a.len() / 3).step_by(7) {
        for j in (0..a.len() / 3).step_by(11) {
            assert_eq!(
                a[3 * i..3 * i + 3] == a[3 * j..3 * j + 3],
                b[3 * i..3 * i + 3] == b[3 * j..3 * j + 3],
                "pixels {i} and {j}"
            );
        }
    }
    // Its colours are image 1's (whose shape never hides all of its sky or ground).
    assert!(colours(&swap).iter().all(|c| colours(&t).contains(c)));
    // Same seeds, other style: the same structures, patterned.
    let patterned = SyntheticShapes::new(8, 32, 5).expect("synthetic");
    assert_ne!(patterned.render(0), s);
    assert!(flat.describe().contains("Flat"), "{}", flat.describe());
}

/// Named colours: every region's colour is one of the first `count` distinct colours, no two
/// regions of an image alike; the layouts are the same images' and the palettes repeat.
#[test]
fn named_colours_come_from_the_list_and_differ_per_image() {
    let any = SyntheticShapes::new(16, 32, 9)
        .expect("synthetic")
        .with_style(SyntheticStyle::Flat);
    let named = any.clone().with_named_colours(6);
    for i in 0..16 {
        let img = named.render(i);
        let mut seen: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        seen.sort();
        seen.dedup();
        assert!(
            seen.iter().all(|c| DISTINCT_COLOURS[..6].contains(c)),
            "image {i}: {seen:?}"
        );
        // One colour per label, so the label maps of both datasets match pixel for pixel.
        assert_eq!(named.labels(i), any.labels(i));
        let labels = named.labels(i);
        let raw = img.as_raw();
        for (p, &l) in labels.iter().enumerate() {
            for (q, &m) in labels.iter().enumerate().step_by(13) {
                assert_eq!(l == m, raw[3 * p..3 * p + 3] == raw[3 * q..3 * q + 3]);
            }
        }
        assert_eq!(named.render(i), img, "deterministic");
    }
    // Out-of-range counts are clamped: 0 to the labels' 6, 99 to the list's 12.
    assert_eq!(any.clone().with_named_colours(0), named);
    let all = any.with_named_colours(99);
    assert!((0..16).all(|i| {
        all.render(i)
            .pixels()
            .all(|p| DISTINCT_COLOURS.contains(&p.0))
    }));
}

/// `score_swap` gives each of its reference answers the score it documents.
#[test]
fn swap_scores_tell_the_inputs_apart() {
    let flat = SyntheticShapes::new(12, 32, 3)
        .expect("synthetic")
        .with_style(SyntheticStyle::Flat);
    // The perfect swap, copying the structure image, copying the texture image.
    let mut scores = [SwapScore::default(); 3];
    for s in 0..6 {
        for t in 6..12 {
            let images = [flat.render_parts(s, t), flat.render(s), flat.render(t)];
            for (score, image) in scores.iter_mut().zip(&images) {
                *score += flat.score_swap(image, s, t).expect("score");
            }
        }
    }
    let [perfect, copy_s, copy_t] = scores;
    assert_eq!(perfect.swaps, 36);
    assert_eq!(perfect.layout_from_structure, 36);
    assert_eq!(perfect.accuracy(), 1.0);
    assert_eq!(perfect.accuracy_where_layouts_differ(), 1.0);
    // Mean colours: the perfect swap repaints the structure's areas, so a texture whose palette
    // is close to the structure image's may lose the comparison; most must win it.
    assert!(perfect.colours_from_texture >= 32, "{perfect:?}");
    assert_eq!(
        (copy_s.layout_from_structure, copy_s.colours_from_texture),
        (36, 0)
    );
    assert_eq!(
        (copy_t.layout_from_structure, copy_t.colours_from_texture),
        (0, 36)
    );
    assert_eq!(copy_t.accuracy_where_layouts_differ(), 0.0);
    assert!(copy_t.pixels_where_layouts_differ > 0);
    // Copying the structure image matches the texture's palette only by chance.
    assert!(copy_s.accuracy() < 0.7, "{copy_s:?}");
    let wrong = RgbImage::new(16, 32);
    assert!(matches!(
        flat.score_swap(&wrong, 0, 1),
        Err(DataError::BadConfig { .. })
    ));
}

#[test]
fn convert_to_zip_round_trips() {
    let (dir, _) = mixed_folder("convert");
    let src = open_dataset(&dir).expect("open");
    let out = dir.join("out/converted.zip");
    fs::create_dir_all(out.parent().expect("parent")).expect("mkdir");
    let written = convert_to_zip(src.as_ref(), &out).expect("convert");
    // The random-bytes file is not recognisable as an image and is left out; the truncated
    // JPEG still has JPEG magic and is copied as it is.
    assert_eq!(written, 7);
    assert_eq!(
        fs::read_dir(out.parent().expect("parent"))
            .expect("list")
            .count(),
        1,
        "no temporary file left"
    );
    let zipped = open_dataset(&out).expect("open zip");
    assert_eq!(zipped.len(), 7);
    for i in 0..zipped.len() {
        let key = zipped.key(i);
        let j = (0..src.len())
            .find(|&j| src.key(j) == key)
            .expect("same key");
        assert_eq!(
            zipped.read(i).expect("zip bytes"),
            src.read(j).expect("file bytes"),
            "{key}"
        );
    }
    // Keys without an extension get the sniffed one; awkward characters are replaced.
    struct Keyed(Vec<(String, Vec<u8>)>);
    impl Dataset for Keyed {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn key(&self, i: usize) -> String {
            self.0[i].0.clone()
        }
        fn read(&self, i: usize) -> Result<Vec<u8>, DataError> {
            Ok(self.0[i].1.clone())
        }
    }
    let keyed = Keyed(vec![
        ("0a1b2c".to_string(), png_bytes(&pattern(8, 8, 1))),
        ("../x y/id:7".to_string(), jpeg_bytes(&pattern(8, 8, 2))),
        ("0a1b2c".to_string(), png_bytes(&pattern(8, 8, 3))),
    ]);
    let out2 = dir.join("out/keyed.zip");
    assert_eq!(convert_to_zip(&keyed, &out2).expect("convert"), 3);
    let zipped = open_dataset(&out2).expect("open");
    let keys: Vec<String> = (0..zipped.len()).map(|i| zipped.key(i)).collect();
    assert_eq!(keys, ["0a1b2c.png", "0a1b2c_1.png", "x_y/id_7.jpg"]);
    assert_eq!(zipped.decode(1).expect("second"), pattern(8, 8, 3));
    // Synthetic shapes convert too (PNG bytes from `read`).
    let shapes = SyntheticShapes::new(3, 16, 9).expect("synthetic");
    let out3 = dir.join("out/shapes.zip");
    assert_eq!(convert_to_zip(&shapes, &out3).expect("convert"), 3);
    assert_eq!(
        open_dataset(&out3)
            .expect("open")
            .decode(2)
            .expect("decode"),
        shapes.render(2)
    );
    let _ = fs::remove_dir_all(dir);
}

#[cfg(feature = "lmdb")]
mod lmdb {
    use super::*;
    use heed::types::Bytes;
    use heed::{Database, EnvOpenOptions};
    use sae_data::LmdbDataset;

    fn webp_bytes(img: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut out)
            .encode(
                img.as_raw(),
                img.width(),
                img.height(),
                image::ExtendedColorType::Rgb8,
            )
            .expect("encode webp");
        out
    }

    /// Writes an LMDB at `dir` holding `entries`.
    fn make_lmdb(dir: &Path, entries: &[(&[u8], Vec<u8>)]) {
        fs::create_dir_all(dir).expect("mkdir");
        let mut options = EnvOpenOptions::new();
        options.map_size(16 << 20);
        // SAFETY: a fresh folder that nothing else maps.
        let env = unsafe { options.open(dir) }.expect("open env");
        let mut wtxn = env.write_txn().expect("txn");
        let db: Database<Bytes, Bytes> = env.create_database(&mut wtxn, None).expect("db");
        for (key, value) in entries {
            db.put(&mut wtxn, key, value).expect("put");
        }
        wtxn.commit().expect("commit");
        env.prepare_for_closing().wait();
    }

    #[test]
    fn lsun_lmdb_is_read_with_cached_keys() {
        let root = scratch("lmdb");
        let dir = root.join("lsun/church_outdoor_train_lmdb");
        let images: Vec<RgbImage> = (0..5).map(|i| pattern(40, 40, i)).collect();
        let keys = ["f0e1", "0a1b", "ccdd", "0a1c", "9999"];
        let entries: Vec<(&[u8], Vec<u8>)> = keys
            .iter()
            .zip(&images)
            .map(|(k, img)| (k.as_bytes(), webp_bytes(img)))
            .collect();
        make_lmdb(&dir, &entries);
        // A corrupt value among the images.
        make_lmdb(&dir, &[(b"dead".as_slice(), b"garbage".to_vec())]);
        let ds = open_dataset(&dir).expect("open lmdb");
        assert_eq!(ds.len(), 6);
        let listed: Vec<String> = (0..ds.len()).map(|i| ds.key(i)).collect();
        assert_eq!(listed, ["0a1b", "0a1c", "9999", "ccdd", "dead", "f0e1"]);
        assert!(!ds.swaps_red_blue(), "LSUN stores true RGB");
        assert_eq!(ds.decode(0).expect("webp"), images[1]);
        assert_eq!(ds.decode(5).expect("webp"), images[0]);
        assert!(ds.decode(4).is_err());
        assert!(dir.join("_sae_keys_").is_file(), "key cache written");
        drop(ds);
        // Reopened from the cache: same keys.
        {
            let again = LmdbDataset::open(&dir).expect("reopen");
            assert_eq!(
                (0..again.len()).map(|i| again.key(i)).collect::<Vec<_>>(),
                listed
            );
        }
        // A stale cache (different entry count) is rebuilt.
        make_lmdb(&dir, &[(b"ffff".as_slice(), webp_bytes(&images[4]))]);
        let grown = LmdbDataset::open(&dir).expect("reopen");
        assert_eq!(grown.len(), 7);
        assert_eq!(grown.key(6), "ffff");
        let mut loader = Loader::new(
            Arc::new(grown),
            config(2, 2, crop_flip(32, 32)),
            LoaderState::default(),
        )
        .expect("loader");
        let batches = take(&mut loader, 6);
        assert!(batches.iter().all(|b| b.shape == [2, 3, 32, 32]));
        assert!(loader.state().skipped >= 1, "the garbage value is skipped");
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn non_lsun_lmdb_values_are_red_blue_swapped_like_the_official_loader() {
        let root = scratch("lmdb-bgr");
        let dir = root.join("mydata_lmdb");
        let img = pattern(16, 16, 3);
        // dataset_tools.py: cv2.imencode of an RGB array stores it red/blue swapped.
        let mut stored = img.clone();
        for p in stored.pixels_mut() {
            p.0.swap(0, 2);
        }
        make_lmdb(&dir, &[(b"data/a.png".as_slice(), png_bytes(&stored))]);
        let ds = open_dataset(&dir).expect("open");
        assert!(ds.swaps_red_blue());
        assert_eq!(ds.decode(0).expect("decode"), img);
        // Converted to a zip in true RGB.
        let out = root.join("converted.zip");
        assert_eq!(convert_to_zip(ds.as_ref(), &out).expect("convert"), 1);
        let zipped = open_dataset(&out).expect("open zip");
        assert_eq!(zipped.key(0), "data/a.png");
        assert_eq!(zipped.decode(0).expect("decode"), img);
        let explicit = LmdbDataset::open_with_channels(&dir, false).expect("open");
        assert_eq!(explicit.decode(0).expect("decode"), stored);
        let _ = fs::remove_dir_all(root);
    }
}
