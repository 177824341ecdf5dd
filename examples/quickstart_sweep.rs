//! One point of a quickstart recipe search: trains the `quickstart` preset with the overrides
//! given in environment variables, then scores swaps of unseen images
//! (`SyntheticShapes::score_swap`) and prints one `RESULT` line. `docs/training.md` ("The
//! quickstart recipe") lists what was tried with it.
//!
//! ```text
//! TAG=l2p10 L1=2 PG=10 RAYON_NUM_THREADS=1 cargo run --release --example quickstart_sweep
//! ```
//!
//! Variables (default: the preset's value): `TAG` (run folder `target/quickstart-sweep/TAG`),
//! `STEPS` (1500), `BATCH` (8), `SEED` (0), `LR` (0.01), `B1` (0), `B2` (0.99), `L1` (λ_L1,
//! 10), `GAN` (λ_GAN, 1), `PG` (λ_PatchGAN, 5), `R1` (λ_R1, 10), `PR1` (λ_patch_R1, 1),
//! `SPD` (the encoder's structure downsamplings, 2: an 8×8 code), `GLD` (the texture
//! branch's extra stride-2 convolutions, 2; 1 lets `SPD=3` run at 32 px), `NCROPS` (8),
//! `PMIN`/`PMAX` (crop scales, 0.125/0.25), `SCH` (structure code channels, 2),
//! `GL` (texture code length, 128), `ECAP`/`GCAP` (E and G capacity, 0.125/0.0625), `DW`
//! (D and Dpatch block width, 32), `PALETTE` (0: any colour; 6–12: each region's colour one of
//! that many `DISTINCT_COLOURS`, see `SyntheticShapes::with_named_colours`), `SJ` (`true`:
//! `LossConfig::structure_colour_jitter`). One thread per run (`RAYON_NUM_THREADS=1`) lets
//! two runs share a 2-core machine at about 1.3× the images per second of one 2-thread run.
//!
//! The `RESULT` line: training seconds; over 256 swaps (16 structures × 16 textures of the
//! held-out seed) the swaps whose layout is the structure image's and whose colours are the
//! texture image's, the pixels right, and the pixels right where the layouts differ (next to
//! what copying the structure image scores there); the pixels right of 16 reconstructions;
//! and the quickstart's own 64 swaps: their colour count and score where layouts differ.

use std::path::PathBuf;
use std::str::FromStr;

use burn::tensor::{Device, Tensor};
use sae::data::{DISTINCT_COLOURS, SwapScore, SyntheticShapes};
use sae::model::image_io::{self, ImageTensor, RgbImage};
use sae::model::inference::{Decoder, NoiseMode, images_to_tensor, tensor_to_images};
use sae::model::{
    DiscriminatorConfig, ModelConfig, PatchDiscriminatorConfig, SwappingAutoencoder,
    SwappingAutoencoderConfig,
};
use sae::train::trainer::list_checkpoints;
use sae::train::{TrainOptions, Trainer, stop_on_signals};

#[path = "common/quickstart_data.rs"]
mod quickstart_data;
use quickstart_data::{SCORED, SIZE, TRAIN_IMAGES, held_out, train_set};

type Error = Box<dyn std::error::Error>;

/// The variable `key` parsed, `default` when unset; a value that does not parse is an error
/// naming the variable.
fn var<T: FromStr>(key: &str, default: T) -> Result<T, Error> {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{key}: cannot parse `{v}`").into()),
        Err(_) => Ok(default),
    }
}

fn main() -> Result<(), Error> {
    sae::model::device::keep_freed_memory();
    let tag: String = var("TAG", "run".to_string())?;
    if tag.is_empty()
        || !tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        return Err(format!("TAG: letters, digits, - and _ only, got `{tag}`").into());
    }
    // The quickstart's training images (same count, size, seed and style), or with `PALETTE`
    // their colours drawn from that many named colours (checked before anything is removed).
    let palette: usize = var("PALETTE", 0)?;
    if palette != 0 && !(6..=DISTINCT_COLOURS.len()).contains(&palette) {
        return Err(format!(
            "PALETTE: 0 (any colour) or 6 to {} named colours, got {palette}",
            DISTINCT_COLOURS.len()
        )
        .into());
    }
    let base = PathBuf::from("target/quickstart-sweep");
    let run = base.join(&tag);
    if run.exists() {
        std::fs::remove_dir_all(&run)?;
    }
    let data = |s: SyntheticShapes| match palette {
        0 => s,
        k => s.with_named_colours(k),
    };
    let shapes = base.join(match palette {
        0 => "shapes".to_string(),
        k => format!("shapes-palette{k}"),
    });
    // (write_folder writes the images in order, so the last one marks a finished folder.)
    if !shapes.join(format!("{:06}.png", TRAIN_IMAGES - 1)).exists() {
        data(train_set()?).write_folder(&shapes)?;
    }

    let mut o =
        TrainOptions::preset("quickstart", shapes).ok_or("the quickstart preset is missing")?;
    let patch = o.patch.patch_size;
    let (dw, sch) = (var("DW", 32usize)?, var("SCH", 2usize)?);
    let widths = |side: usize| {
        let mut c = vec![dw / 2];
        c.extend(std::iter::repeat_n(
            dw,
            (side / 4).trailing_zeros() as usize,
        ));
        c
    };
    let cfg = SwappingAutoencoderConfig::new()
        .with_global_code_ch(var("GL", 128)?)
        .with_spatial_code_ch(sch)
        .with_net_e_num_downsampling_sp(var("SPD", o.model.encoder.num_downsampling_sp)?)
        .with_net_e_num_downsampling_gl(var("GLD", 2)?)
        .with_net_e_scale_capacity(var("ECAP", 0.125)?)
        .with_net_g_scale_capacity(var("GCAP", 0.0625)?)
        .with_crop_size(SIZE)
        .with_patch_size(patch);
    o.model = ModelConfig {
        encoder: cfg.encoder(),
        generator: cfg.generator(),
        discriminator: Some(DiscriminatorConfig::new(widths(SIZE), 4)),
        patch_discriminator: Some(
            PatchDiscriminatorConfig::new(widths(patch)).with_pair_hidden(vec![128, 128, 64]),
        ),
    };
    o.patch.num_crops = var("NCROPS", o.patch.num_crops)?;
    o.patch.min_scale = var("PMIN", o.patch.min_scale)?;
    o.patch.max_scale = var("PMAX", o.patch.max_scale)?;
    o.losses.lambda_l1 = var("L1", o.losses.lambda_l1)?;
    o.losses.lambda_gan = var("GAN", o.losses.lambda_gan)?;
    o.losses.lambda_patch_gan = var("PG", o.losses.lambda_patch_gan)?;
    o.losses.lambda_r1 = var("R1", o.losses.lambda_r1)?;
    o.losses.lambda_patch_r1 = var("PR1", o.losses.lambda_patch_r1)?;
    o.losses.structure_colour_jitter = var("SJ", o.losses.structure_colour_jitter)?;
    o.adam.lr = var("LR", o.adam.lr)?;
    o.adam.beta1 = var("B1", o.adam.beta1)?;
    o.adam.beta2 = var("B2", o.adam.beta2)?;
    o.batch_size = var("BATCH", o.batch_size)?;
    o.seed = var("SEED", o.seed)?;
    let steps: u64 = var("STEPS", 1500)?;
    let batch = o.batch_size as u64;
    o.schedule.total_images = steps.saturating_mul(batch);
    o.schedule.log_every = batch.saturating_mul(100);

    let device = Device::default();
    let stop = stop_on_signals()?;
    let started = std::time::Instant::now();
    Trainer::new(o, &run, device.clone())?.run(&stop)?;
    let secs = started.elapsed().as_secs_f64();

    let (_, checkpoint) = list_checkpoints(&run)?
        .pop()
        .ok_or("training wrote no checkpoint")?;
    let (model, _) = SwappingAutoencoder::load(&checkpoint, &device)?;
    let held_out = data(held_out(32)?);
    let tensor = |i: usize| -> Result<Tensor<4>, Error> {
        let img = ImageTensor::from_rgb8(&held_out.render(i));
        Ok(images_to_tensor(&[img], &device)?)
    };
    let mut decoder = Decoder::new(&model, NoiseMode::Fixed(0));
    let mut swap = |s: usize, t: usize| -> Result<SwapScore, Error> {
        let y = decoder.swap(tensor(s)?, tensor(t)?);
        let first = tensor_to_images(y)?.into_iter().next().ok_or("no image")?;
        let rgb: RgbImage = image_io::to_rgb8(&first)?;
        Ok(held_out.score_swap(&rgb, s, t)?)
    };
    let (mut all, mut rec, mut quick, mut copy) = Default::default();
    for s in 0..16 {
        for t in 16..32 {
            all += swap(s, t)?;
            copy += held_out.score_swap(&held_out.render(s), s, t)?;
        }
        rec += swap(s, s)?;
    }
    // The quickstart's own 64 swaps.
    for s in 0..SCORED {
        for t in SCORED..2 * SCORED {
            quick += swap(s, t)?;
        }
    }
    let (all, rec, quick, copy): (SwapScore, SwapScore, SwapScore, SwapScore) =
        (all, rec, quick, copy);
    println!(
        "RESULT {tag} {secs:.0} s | 256 swaps: layout {} colours {} right {:.1} % where layouts \
         differ {:.1} % (copying the structure image: {:.1} %) | reconstructions right {:.1} % | quickstart's 64: colours {} where \
         layouts differ {:.1} %",
        all.layout_from_structure,
        all.colours_from_texture,
        100.0 * all.accuracy(),
        100.0 * all.accuracy_where_layouts_differ(),
        100.0 * copy.accuracy_where_layouts_differ(),
        100.0 * rec.accuracy(),
        quick.colours_from_texture,
        100.0 * quick.accuracy_where_layouts_differ()
    );
    Ok(())
}
