//! The library's whole path through its public API only: a freshly initialised `tiny` model is
//! trained a few steps (D, R1, G), saved, loaded back by `SwappingAutoencoder::load` and
//! swapped; the loaded model's swaps are bit-identical to the trained model's.

use burn::tensor::{Device, Distribution, Tensor};
use sae::model::SwappingAutoencoder;
use sae::model::inference::{Decoder, NoiseMode};
use sae::model::native::save_native;
use sae::nn::PatchSamplerConfig;
use sae::train::{
    Adam, AdamConfig, LossConfig, Nets, SeededRandomness, discriminator_losses, generator_losses,
    r1_losses, tiny_model,
};

#[test]
fn trained_model_saves_loads_and_swaps_identically() {
    let device = Device::flex().autodiff();
    device.seed(3);
    let config = tiny_model();
    let model = config.init(&device);
    let (mut e, mut g) = (model.e, model.g);
    let (mut d, mut dpatch) = (model.d.unwrap(), model.dpatch.unwrap());
    let losses = LossConfig::new().with_r1_once_every(1);
    let sampler = PatchSamplerConfig::new()
        .with_patch_size(32)
        .init()
        .unwrap();
    let mut rnd = SeededRandomness::seed(0);
    let mut opt_g = Adam::new(AdamConfig::new());
    let mut opt_d = Adam::new(AdamConfig::new().lazy(losses.r1_once_every));
    let real = Tensor::<4>::random([4, 3, 64, 64], Distribution::Uniform(-1.0, 1.0), &device);
    let before = e.clone();

    for _ in 0..2 {
        for r1 in [false, true] {
            let nets = Nets {
                e: &e,
                g: &g,
                d: &d,
                dpatch: &dpatch,
            };
            let step = if r1 {
                r1_losses(nets, real.clone(), &losses, &sampler, &mut rnd)
            } else {
                discriminator_losses(nets, real.clone(), &losses, &sampler, &mut rnd)
            };
            let grads = step.unwrap().total().backward();
            opt_d.begin_step();
            d = opt_d.update("d", d, &grads);
            dpatch = opt_d.update("dpatch", dpatch, &grads);
        }
        let nets = Nets {
            e: &e,
            g: &g,
            d: &d,
            dpatch: &dpatch,
        };
        let grads = generator_losses(nets, real.clone(), &losses, &sampler, &mut rnd)
            .unwrap()
            .total()
            .backward();
        opt_g.begin_step();
        g = opt_g.update("g", g, &grads);
        e = opt_g.update("e", e, &grads);
    }
    // Training moved the encoder's weights (the public API trains a fresh model).
    let w = |e: &sae::model::Encoder| {
        e.from_rgb
            .conv
            .weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    assert_ne!(w(&e), w(&before), "the G steps did not change E");

    let trained = SwappingAutoencoder {
        e,
        g,
        d: Some(d),
        dpatch: Some(dpatch),
    };
    let dir = std::env::temp_dir().join(format!("sae-roundtrip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trained.safetensors");
    save_native(&trained, &config, &path).unwrap();
    let (loaded, loaded_config) = SwappingAutoencoder::load(&path, &device).unwrap();
    assert_eq!(loaded_config, config);

    let structure = real.clone().narrow(0, 0, 2);
    let texture = real.narrow(0, 2, 2);
    let swap = |m: &SwappingAutoencoder| {
        Decoder::new(m, NoiseMode::Fixed(5))
            .interpolate(structure.clone(), texture.clone(), &[0.0, 0.5, 1.0])
            .into_iter()
            .map(|t| t.into_data().try_to_vec::<f32>().unwrap())
            .collect::<Vec<_>>()
    };
    let (a, b) = (swap(&trained), swap(&loaded));
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(
            same,
            "a swap of the loaded model differs from the trained model's"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
