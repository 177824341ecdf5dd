//! The CPU quickstart: train a small Swapping Autoencoder from scratch on generated images,
//! then swap and interpolate with it. No downloads, no GPU.
//!
//! 1. Writes 512 generated 32×32 images to `target/sae-quickstart/shapes/`. Each is a
//!    *structure* (a sloped horizon and one rectangle or disc) painted with a *texture* (flat
//!    colours for sky, ground and shape), drawn independently.
//! 2. Trains the `quickstart` preset (the official losses, exact R1 and optimizers; the tiny
//!    networks at 32 px with a 2-channel structure code and reweighted losses, see
//!    `sae::train::options`) for `--steps` optimizer calls (default 1500, three to four minutes
//!    on two cores) into `target/sae-quickstart/run/` (options.json, stats.jsonl, snapshots/,
//!    checkpoints/).
//! 3. Swaps and interpolates images the model never saw (another seed of the same generator)
//!    and writes, next to the run, at 4× zoom:
//!    - `swap_grid.png`: row 0 holds four texture images; below, each row starts with a
//!      structure image followed by its swaps with every texture. Each swap keeps its row's
//!      layout (horizon, shape) and takes its column's colours.
//!    - `swap_grid_truth.png`: the same grid rendered by the generator of the data (what a
//!      perfect swap would give), for comparison.
//!    - `interpolation.png`: structure image | texture mixes α = 0, 0.25, 0.5, 0.75, 1 |
//!      texture image: the layout stays put while the colours move towards the texture image.
//! 4. Writes the model as `target/sae-quickstart/model.safetensors` and the PCA of its codes
//!    over the training images as `pca.safetensors`, for `sae serve` (README).
//! 5. Scores the swaps against the perfect swaps (`SyntheticShapes::score_swap`), next to what
//!    copying either input scores.
//!
//! `cargo run --release --example quickstart [-- --steps N]`. Ctrl-C stops training early
//! (with a checkpoint) and still writes the outputs; run again to start over.

use std::path::Path;

use burn::tensor::{Device, Tensor};
use sae::data::{DatasetPcaOptions, SwapScore, dataset_pca, open_dataset};
use sae::model::SwappingAutoencoder;
use sae::model::image_io::{self, ImageTensor, RgbImage};
use sae::model::inference::{Decoder, NoiseMode, images_to_tensor, tensor_to_images};
use sae::model::native::save_native;
use sae::train::trainer::list_checkpoints;
use sae::train::{TrainArgs, launch, stop_on_signals};

#[path = "common/quickstart_data.rs"]
mod quickstart_data;
use quickstart_data::{SCORED, SIZE, TRAIN_IMAGES, held_out, train_set};

const DEFAULT_STEPS: u64 = 1500;
const ZOOM: u32 = 4;

fn to_tensor(img: &RgbImage, device: &Device) -> Result<Tensor<4>, Box<dyn std::error::Error>> {
    Ok(images_to_tensor(&[ImageTensor::from_rgb8(img)], device)?)
}

fn to_rgb(y: Tensor<4>) -> Result<RgbImage, Box<dyn std::error::Error>> {
    let first = tensor_to_images(y)?.into_iter().next().ok_or("no image")?;
    Ok(image_io::to_rgb8(&first)?)
}

/// Nearest-neighbour zoom, so that 32-px cells are visible without blurring them.
fn zoom(img: &RgbImage) -> RgbImage {
    RgbImage::from_fn(img.width() * ZOOM, img.height() * ZOOM, |x, y| {
        *img.get_pixel(x / ZOOM, y / ZOOM)
    })
}

fn steps_arg() -> Result<u64, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(DEFAULT_STEPS),
        [flag, n] if flag == "--steps" => n
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("--steps: expected a positive integer, got `{n}`")),
        _ => Err("usage: quickstart [--steps N]".into()),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    sae::model::device::keep_freed_memory();
    let steps = steps_arg()?;
    let root = Path::new("target/sae-quickstart");
    let shapes = root.join("shapes");
    let run = root.join("run");
    for dir in [&run, &shapes] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
    }
    train_set()?.write_folder(&shapes)?;
    println!("{TRAIN_IMAGES} generated images in {}", shapes.display());

    let device = Device::default();
    let args = TrainArgs {
        preset: Some("quickstart".into()),
        data: Some(shapes.clone()),
        out: run.clone(),
        steps: Some(steps),
        ..TrainArgs::default()
    };
    let stop = stop_on_signals()?;
    let started = std::time::Instant::now();
    launch(&args, &device, &stop)?;
    let train_s = started.elapsed().as_secs_f64();

    let (_, checkpoint) = list_checkpoints(&run)?
        .pop()
        .ok_or("training wrote no checkpoint")?;
    let (model, config) = SwappingAutoencoder::load(&checkpoint, &device)?;
    // For `sae serve` (README): the model under a stable name, and the PCA of its codes over
    // the training images.
    save_native(&model, &config, &root.join("model.safetensors"))?;
    let pca_opts = DatasetPcaOptions {
        images: TRAIN_IMAGES,
        seed: 0,
        load_size: SIZE,
        batch: 64,
        texture_components: 16,
    };
    let pca = dataset_pca(
        open_dataset(&shapes)?.as_ref(),
        &model,
        &config,
        &pca_opts,
        &device,
        |_, _| {},
    )?;
    pca.pca.save(&root.join("pca.safetensors"))?;
    let held_out = held_out(2 * SCORED)?;
    let mut decoder = Decoder::new(&model, NoiseMode::Fixed(0));
    let swap = |decoder: &mut Decoder, s: usize, t: usize| {
        let (xs, xt) = (held_out.render(s), held_out.render(t));
        to_rgb(decoder.swap(to_tensor(&xs, &device)?, to_tensor(&xt, &device)?))
    };

    // Structures 0..SCORED down, textures SCORED..2·SCORED across.
    // Scores of the model's swaps, of copying either input and of the perfect swaps (see
    // `SyntheticShapes::score_swap`).
    let mut scores = [SwapScore::default(); 4];
    let blank = RgbImage::new(SIZE as u32, SIZE as u32);
    let mut cells = vec![vec![blank.clone()]];
    for t in SCORED..SCORED + 4 {
        cells[0].push(held_out.render(t));
    }
    let mut truth = cells.clone();
    for s in 0..SCORED {
        let xs = held_out.render(s);
        let (mut row, mut truth_row) = (vec![xs.clone()], vec![xs.clone()]);
        for t in SCORED..2 * SCORED {
            let (y, perfect) = (swap(&mut decoder, s, t)?, held_out.render_parts(s, t));
            for (score, image) in scores
                .iter_mut()
                .zip([&y, &xs, &held_out.render(t), &perfect])
            {
                *score += held_out.score_swap(image, s, t)?;
            }
            if s < 4 && t < SCORED + 4 {
                row.push(y);
                truth_row.push(perfect);
            }
        }
        if s < 4 {
            cells.push(row);
            truth.push(truth_row);
        }
    }
    let save_grid =
        |rows: &[Vec<RgbImage>], name: &str| -> Result<(), Box<dyn std::error::Error>> {
            let zoomed: Vec<Vec<RgbImage>> =
                rows.iter().map(|r| r.iter().map(zoom).collect()).collect();
            let refs: Vec<Vec<Option<&RgbImage>>> = zoomed
                .iter()
                .map(|r| r.iter().map(Some).collect())
                .collect();
            let side = SIZE as u32 * ZOOM;
            image_io::save_rgb_png(&image_io::grid(&refs, (side, side)), &root.join(name))?;
            Ok(())
        };
    save_grid(&cells, "swap_grid.png")?;
    save_grid(&truth, "swap_grid_truth.png")?;

    // Texture interpolation: structure of held-out image 0, texture moving to image SCORED.
    let (xs, xt) = (held_out.render(0), held_out.render(SCORED));
    let alphas = [0.0, 0.25, 0.5, 0.75, 1.0];
    let mut strip = vec![xs.clone()];
    for y in decoder.interpolate(to_tensor(&xs, &device)?, to_tensor(&xt, &device)?, &alphas) {
        strip.push(to_rgb(y)?);
    }
    strip.push(xt);
    save_grid(&[strip], "interpolation.png")?;

    println!(
        "trained {steps} steps in {train_s:.0} s; checkpoint {}",
        checkpoint.display()
    );
    println!(
        "{} swaps of unseen images ({SCORED} structures × {SCORED} textures), judged against the \
         generator's ground truth:",
        SCORED * SCORED
    );
    println!(
        "                               layout from     colours from    pixels right (nearest \
         palette colour)\n                               the structure   the texture     all   \
         where the layouts differ"
    );
    let rows = [
        "the model's swaps",
        "copying the structure image",
        "copying the texture image",
        "perfect swaps",
    ];
    for (name, score) in rows.iter().zip(&scores) {
        println!(
            "  {name:<28} {:>3} / {:<3}       {:>3} / {:<3}     {:>5.1} % {:>6.1} %",
            score.layout_from_structure,
            score.swaps,
            score.colours_from_texture,
            score.swaps,
            100.0 * score.accuracy(),
            100.0 * score.accuracy_where_layouts_differ()
        );
    }
    for name in ["swap_grid.png", "swap_grid_truth.png", "interpolation.png"] {
        println!("wrote {}", root.join(name).display());
    }
    println!(
        "In swap_grid.png each swap keeps its row's layout (horizon, shape) and takes its \
         column's colours; swap_grid_truth.png shows the perfect swaps."
    );
    Ok(())
}
