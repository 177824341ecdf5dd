//! Builds the hot layers of the church-256 model on the default backend, runs each once on
//! random input, and prints its parameter count, output shape and time.
//!
//! `cargo run --release --example layer_info`

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use rand::SeedableRng;
use sae::nn::*;

fn randn<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

fn report<const D: usize>(name: &str, params: usize, run: impl FnOnce() -> Tensor<D>) {
    let start = Instant::now();
    let y = run();
    let dims = y.dims();
    let _ = y.into_data(); // waits for the result on asynchronous backends
    println!(
        "{name:40} {params:>10} params   out {dims:?}   {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
}

fn main() {
    sae::model::device::keep_freed_memory();
    let d = Device::default();
    println!("backend: {d:?}\n");
    let style = Style::Global(randn([1, 2048], &d));

    let conv = ModulatedConv2dConfig::new(512, 512, 3, 2048).init(&d);
    report(
        "G.UpsamplingResBlock16.conv2.conv",
        conv.num_params(),
        || conv.forward(randn([1, 512, 32, 32], &d), &style),
    );
    let up = StyledConvConfig::new(512, 512, 3, 2048)
        .with_upsample(true)
        .init(&d);
    report("G.UpsamplingResBlock16.conv1", up.num_params(), || {
        up.forward(
            randn([1, 512, 16, 16], &d),
            &style,
            Noise::Random(&mut NoiseRng::seed(0)),
        )
    });
    let rgb = ToRgbConfig::new(128, 2048).init(&d);
    report("G.ToRGB", rgb.num_params(), || {
        rgb.forward(randn([1, 128, 256, 256], &d), &style)
    });
    let enc = ResBlockConfig::new(32, 64)
        .with_blur_kernel(vec![1.0, 2.0, 1.0])
        .with_reflection_pad(true)
        .init(&d);
    report(
        "E.DownToSpatialCode.ResBlockDownBy1",
        enc.num_params(),
        || enc.forward(randn([1, 32, 256, 256], &d)),
    );
    let disc = ResBlockConfig::new(128, 256).init(&d);
    report("D.stylegan2_D.convs.1", disc.num_params(), || {
        disc.forward(randn([1, 128, 256, 256], &d))
    });
    let sampler = PatchSamplerConfig::new()
        .init()
        .expect("default sampler config");
    let mut rng = rand::rngs::Xoshiro256PlusPlus::from_seed([7; 32]);
    let draws = sampler.draw(&mut rng, 1);
    report("patch sampler (8 crops → 128 px)", 0, || {
        sampler
            .apply(randn([1, 3, 256, 256], &d), &draws)
            .expect("draws fit")
    });
}
