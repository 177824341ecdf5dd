//! The hot layers at the church-256 sizes, forward and forward+backward, on the default backend
//! (flex). `tools/reference/bench_torch.py` times the same shapes in PyTorch; the table and the
//! commands are in `docs/performance.md`.
//!
//! `cargo bench --bench layers` (all), `cargo bench --bench layers -- modconv_512_16` (one).
//! "fwd" runs on a device without autodiff; "fwd+bwd" backpropagates `sum(out · gout)` to the
//! input(s) and every parameter, as the PyTorch script does.

use std::time::Duration;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use sae::nn::*;

const BATCH: usize = 4;
const STYLE_DIM: usize = 2048;

fn randn<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

/// Times `forward` without autodiff, then forward + backward of `sum(out · gout)`.
fn bench_pair<M: Module, const D: usize>(
    c: &mut Criterion,
    name: &str,
    build: impl Fn(&Device) -> M,
    inputs: impl Fn(&Device) -> Vec<Tensor<4>>,
    forward: impl Fn(&M, &[Tensor<4>]) -> Tensor<D>,
) {
    let device = Device::default();
    let module = build(&device);
    let xs = inputs(&device);
    c.bench_function(&format!("{name}/fwd"), |b| {
        b.iter(|| {
            let y = forward(&module, &xs);
            device.sync().unwrap();
            y
        })
    });

    let ad = device.clone().autodiff();
    let module = build(&ad);
    let xs: Vec<Tensor<4>> = inputs(&ad).into_iter().map(|x| x.require_grad()).collect();
    let gout = forward(&module, &xs)
        .detach()
        .random_like(Distribution::Normal(0.0, 1.0));
    c.bench_function(&format!("{name}/fwd+bwd"), |b| {
        b.iter(|| {
            let grads = (forward(&module, &xs) * gout.clone()).sum().backward();
            device.sync().unwrap();
            grads
        })
    });
}

fn modconv(c: &mut Criterion, name: &str, channels: usize, size: usize) {
    bench_pair(
        c,
        name,
        |d| ModulatedConv2dConfig::new(channels, channels, 3, STYLE_DIM).init(d),
        |d| {
            vec![
                randn([BATCH, channels, size, size], d),
                randn([BATCH, STYLE_DIM, 1, 1], d),
            ]
        },
        |m, xs| {
            let style = xs[1].clone().reshape([BATCH, STYLE_DIM]);
            m.forward(xs[0].clone(), &Style::Global(style))
        },
    );
}

fn layers(c: &mut Criterion) {
    modconv(c, "modconv_512_16", 512, 16);
    modconv(c, "modconv_512_32", 512, 32);
    modconv(c, "modconv_128_256", 128, 256);

    bench_pair(
        c,
        "styled_conv_up_512_16",
        |d| {
            StyledConvConfig::new(512, 512, 3, STYLE_DIM)
                .with_upsample(true)
                .init(d)
        },
        |d| {
            vec![
                randn([BATCH, 512, 16, 16], d),
                randn([BATCH, STYLE_DIM, 1, 1], d),
            ]
        },
        |m, xs| {
            let style = Style::Global(xs[1].clone().reshape([BATCH, STYLE_DIM]));
            m.forward(xs[0].clone(), &style, Noise::Random(&mut NoiseRng::seed(0)))
        },
    );

    bench_pair(
        c,
        "resblock_d_128",
        |d| ResBlockConfig::new(128, 256).init(d),
        |d| vec![randn([BATCH, 128, 128, 128], d)],
        |m, xs| m.forward(xs[0].clone()),
    );

    let sampler = PatchSamplerConfig::new()
        .init()
        .expect("default sampler config");
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(0);
    let draws = sampler.draw(&mut rng, BATCH);
    #[derive(Module, Debug)]
    struct NoParams {
        _tag: usize,
    }
    bench_pair(
        c,
        "crop_sampler",
        |_| NoParams { _tag: 0 },
        |d| vec![randn([BATCH, 3, 256, 256], d)],
        |_, xs| {
            sampler
                .apply(xs[0].clone(), &draws)
                .expect("draws fit the batch")
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = layers
}
criterion_main!(benches);
