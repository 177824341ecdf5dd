//! One 256-px swap with the church-256 networks on the default backend (flex): encode the
//! structure image, encode the texture image, decode with fixed noise. Weights are random
//! (timing does not depend on their values).
//!
//! `cargo bench --bench swap`

use std::time::Duration;

use burn::tensor::{Device, Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use sae::model::inference::{Decoder, NoiseMode};
use sae::model::{ModelConfig, Preset};

fn swap_256(c: &mut Criterion) {
    let device = Device::default();
    let mut config = ModelConfig::from(&Preset::Church256.config());
    config.discriminator = None;
    config.patch_discriminator = None;
    let model = config.init(&device);
    let image = || Tensor::<4>::random([1, 3, 256, 256], Distribution::Uniform(-1.0, 1.0), &device);
    let (structure, texture) = (image(), image());
    let mut decoder = Decoder::new(&model, NoiseMode::Fixed(0));
    c.bench_function("swap_church256_256px", |b| {
        b.iter(|| {
            let y = decoder.swap(structure.clone(), texture.clone());
            device.sync().unwrap();
            y
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));
    targets = swap_256
}
criterion_main!(benches);
