//! The CPU quickstart: train a small Swapping Autoencoder from scratch on generated images,
//! then swap and interpolate with it. No downloads, no GPU.
//!
//! 1. Writes 16 generated 64×64 images to `target/sae-quickstart/shapes/`. Each is a
//!    *structure* (a sloped horizon and two to four rectangles or discs) painted with a
//!    *texture* (a colour palette and a stripe, checker or noise pattern), drawn independently.
//! 2. Trains the `tiny` preset (the official losses, R1 and optimizers; about 0.6 M
//!    parameters) for `--steps` optimizer calls (default 400, about five minutes on two cores) into
//!    `target/sae-quickstart/run/` (options.json, stats.jsonl, snapshots/, checkpoints/).
//! 3. Writes, next to the run:
//!    - `swap_grid.png`: row 0 holds four texture images; below, each row starts with a
//!      structure image followed by its swaps with every texture. A trained model keeps the
//!      row's layout (horizon, shapes) and takes the column's colours and pattern; after the
//!      default 400 calls only the colours follow the column (see the README).
//!    - `swap_grid_truth.png`: the same grid rendered by the generator of the data (what a
//!      perfect swap would give), for comparison.
//!    - `interpolation.png`: structure image | texture mixes α = 0, 0.25, 0.5, 0.75, 1 |
//!      texture image: the layout stays put while the colours move towards the texture image.
//!
//! `cargo run --release --example quickstart [-- --steps N]`. Ctrl-C stops training early
//! (with a checkpoint) and still writes the outputs; run again to start over.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use sae::model::image_io::{self, ImageTensor, RgbImage};
use sae::model::inference::{Decoder, NoiseMode};
use sae::model::native::load_native;
use sae::train::data::{Dataset, SyntheticShapes, write_synthetic_folder};
use sae::train::trainer::list_checkpoints;
use sae::train::{TrainArgs, launch, stop_on_ctrl_c};

const IMAGES: usize = 16;
const SIZE: usize = 64;
const SEED: u64 = 2020;

fn to_tensor(img: &RgbImage, device: &Device) -> Tensor<4> {
    let t = ImageTensor::from_rgb8(img);
    Tensor::from_data(TensorData::new(t.data, [1, 3, t.height, t.width]), device)
}

fn to_rgb(y: Tensor<4>) -> Result<RgbImage, Box<dyn std::error::Error>> {
    let [_, _, h, w] = y.dims();
    let data = y
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?;
    Ok(image_io::to_rgb8(&ImageTensor {
        height: h,
        width: w,
        data,
    })?)
}

fn steps_arg() -> Result<u64, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(400),
        [flag, n] if flag == "--steps" => n
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("--steps: expected a positive integer, got `{n}`")),
        _ => Err("usage: quickstart [--steps N]".into()),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps = steps_arg()?;
    let root = Path::new("target/sae-quickstart");
    let shapes = root.join("shapes");
    let run = root.join("run");
    for dir in [&run, &shapes] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
    }
    write_synthetic_folder(&shapes, IMAGES, SIZE, SEED)?;
    println!("{IMAGES} generated images in {}", shapes.display());

    let device = Device::default();
    let args = TrainArgs {
        preset: Some("tiny".into()),
        data: Some(shapes.clone()),
        out: run.clone(),
        steps: Some(steps),
        ..TrainArgs::default()
    };
    let stop = stop_on_ctrl_c()?;
    let started = std::time::Instant::now();
    launch(&args, &device, &stop)?;
    let train_s = started.elapsed().as_secs_f64();

    let (_, checkpoint) = list_checkpoints(&run)?
        .pop()
        .ok_or("training wrote no checkpoint")?;
    let (model, _) = load_native(&checkpoint, &device)?;
    let data = SyntheticShapes::new(IMAGES, SIZE, SEED)?;
    let mut decoder = Decoder::new(&model, NoiseMode::Fixed(0));

    // Structures 0..4 down, textures 4..8 across.
    let (structures, textures): (Vec<usize>, Vec<usize>) = ((0..4).collect(), (4..8).collect());
    let img = |i: usize| data.decode(i);
    let mut cells: Vec<Vec<RgbImage>> = Vec::new();
    let mut truth: Vec<Vec<RgbImage>> = Vec::new();
    let mut header = vec![RgbImage::new(SIZE as u32, SIZE as u32)];
    for &t in &textures {
        header.push(img(t)?);
    }
    cells.push(header.clone());
    truth.push(header);
    for &s in &structures {
        let xs = img(s)?;
        let mut row = vec![xs.clone()];
        let mut truth_row = vec![xs.clone()];
        for &t in &textures {
            let y = decoder.swap(to_tensor(&xs, &device), to_tensor(&img(t)?, &device));
            row.push(to_rgb(y)?);
            truth_row.push(data.render_parts(s, t));
        }
        cells.push(row);
        truth.push(truth_row);
    }
    let save_grid =
        |rows: &[Vec<RgbImage>], name: &str| -> Result<(), Box<dyn std::error::Error>> {
            let refs: Vec<Vec<Option<&RgbImage>>> =
                rows.iter().map(|r| r.iter().map(Some).collect()).collect();
            let grid = image_io::grid(&refs, (SIZE as u32, SIZE as u32));
            image_io::save_rgb8(&grid, &root.join(name))?;
            Ok(())
        };
    save_grid(&cells, "swap_grid.png")?;
    save_grid(&truth, "swap_grid_truth.png")?;

    // Texture interpolation: structure of image 0, texture moving to image 5.
    let (xs, xt) = (img(0)?, img(5)?);
    let alphas = [0.0, 0.25, 0.5, 0.75, 1.0];
    let mut strip = vec![xs.clone()];
    for y in decoder.interpolate(to_tensor(&xs, &device), to_tensor(&xt, &device), &alphas) {
        strip.push(to_rgb(y)?);
    }
    strip.push(xt);
    save_grid(&[strip], "interpolation.png")?;

    println!(
        "trained {steps} steps in {train_s:.0} s; checkpoint {}",
        checkpoint.display()
    );
    for name in ["swap_grid.png", "swap_grid_truth.png", "interpolation.png"] {
        println!("wrote {}", root.join(name).display());
    }
    println!(
        "In swap_grid.png the colours of each column follow its texture image; the layout of each \
         row needs a longer run (--steps) to appear. swap_grid_truth.png shows a perfect swap."
    );
    Ok(())
}
