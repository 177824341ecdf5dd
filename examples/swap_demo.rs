//! End-to-end swap on the images the repository ships, on the CPU, without downloads.
//!
//! 1. Builds a small Swapping Autoencoder with seeded random weights and saves it in the native
//!    checkpoint format (`target/sae-demo/demo.safetensors`); the training issue replaces this
//!    with a trained checkpoint.
//! 2. Loads it back, encodes `assets/images/scene_a.png` (structure) and `scene_b.png` (texture)
//!    with the official test transform, and decodes the texture interpolation
//!    `α = 0, 0.5, 1` (reconstruction → swap) with the official fixed-noise policy.
//! 3. Writes the PNGs (named like the official `simple_swapping` evaluator) and prints where.
//!
//! `cargo run --release --example swap_demo`. The same swap through the CLI:
//! `cargo run --release -p sae-cli -- swap --checkpoint target/sae-demo/demo.safetensors \
//!   --structure assets/images/scene_a.png --texture assets/images/scene_b.png --alpha 0,0.5,1 --out target/sae-demo`

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use sae::model::image_io::{self, ImageTensor, Preprocess};
use sae::model::inference::{Decoder, NoiseMode};
use sae::model::native::{load_native, save_native};
use sae::model::{EncoderConfig, GeneratorConfig, ModelConfig};

fn to_tensor(img: &ImageTensor, device: &Device) -> Tensor<4> {
    let data = TensorData::new(img.data.clone(), [1, 3, img.height, img.width]);
    Tensor::from_data(data, device)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::default();
    device.seed(2020);
    let out = Path::new("target/sae-demo");
    std::fs::create_dir_all(out)?;

    // A narrow model with the official layout: 4 encoder downsamplings (structure code at 1/16),
    // a 64-d texture code, 2 head blocks and 4 upsampling blocks.
    let config = ModelConfig {
        encoder: EncoderConfig::new(vec![8, 16, 32, 64, 64, 64, 64], 4, 8, 64),
        generator: GeneratorConfig::new(8, 64, vec![32, 64], vec![64, 32, 16, 8]),
        discriminator: None,
        patch_discriminator: None,
    };
    let checkpoint = out.join("demo.safetensors");
    save_native(&config.init(&device), &config, &checkpoint)?;
    let (model, _) = load_native(&checkpoint, &device)?;
    println!("checkpoint: {}", checkpoint.display());

    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/images");
    let load = |name: &str| image_io::load_image(&assets.join(name), Preprocess::None);
    let (structure, texture) = (load("scene_a.png")?, load("scene_b.png")?);
    let mut decoder = Decoder::new(&model, NoiseMode::Fixed(0));
    let alphas = [0.0, 0.5, 1.0];
    let outputs = decoder.interpolate(
        to_tensor(&structure, &device),
        to_tensor(&texture, &device),
        &alphas,
    );
    for (alpha, y) in alphas.iter().zip(outputs) {
        let [_, _, h, w] = y.dims();
        let data = y
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?;
        let path = out.join(format!("scene_a_scene_b_{alpha:.2}.png"));
        image_io::save_png(
            &ImageTensor {
                height: h,
                width: w,
                data,
            },
            &path,
        )?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
