//! Flex's own convolution against ours (`sae::nn::EqualConv2d`, whose convolution runs
//! `sae-nn`'s kernels on Flex) at the small models' shapes: forward, and forward + backward to the
//! input and the weight. Prints one table of medians and GFLOP/s (`docs/performance.md`), then one
//! of the blurs: Flex's depthwise convolution against `sae::nn::Blur` (our depthwise FIR kernel on
//! Flex), forward, and forward plus the input gradient (the reversed kernel, as the blur's
//! backward pass and R1's input VJP compute it).
//!
//! `cargo run --release --example bench_conv [-- REPEATS [CASE ...]]` (cases by row number, from 1)
//!
//! Both sides compute `conv2d(x, w)` with the same stride and padding and no bias (Burn's op is
//! called on the layer's own scaled weight); the machines are shared, so read the ratio column
//! of one run. Rows whose stride-1 3×3 convolution is large enough run ours as Winograd
//! F(2×2, 3×3); `SAE_WINOGRAD=0` in the environment runs them as the direct GEMM, for a
//! before / after of that path (`docs/performance.md`).

use std::time::Instant;

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};
use sae::nn::{BlurConfig, EqualConv2d, EqualConv2dConfig, FirKernel};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median milliseconds of `repeats` calls after one warm-up call.
fn time(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..repeats)
            .map(|_| {
                let s = Instant::now();
                f();
                s.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

/// `(batch, in channels, out channels, size, kernel, stride, padding)`.
type Case = (usize, usize, usize, usize, usize, usize, usize);

fn run(case: Case, repeats: usize) {
    let (batch, cin, cout, size, k, stride, pad) = case;
    let plain = Device::default();
    let ad = plain.clone().autodiff();
    let layer = |d: &Device| -> EqualConv2d {
        EqualConv2dConfig::new(cin, cout, k)
            .with_stride(stride)
            .with_padding(pad)
            .with_bias(false)
            .init(d)
    };
    let x = Tensor::<4>::random(
        [batch, cin, size, size],
        Distribution::Normal(0., 1.),
        &plain,
    );
    let opts = ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1);
    let out = (size + 2 * pad - k) / stride + 1;
    let flops = 2.0 * (batch * cout * cin * out * out * k * k) as f64;

    let (l, la) = (layer(&plain), layer(&ad));
    let w = l.scaled_weight();
    let burn_fwd = time(repeats, || {
        let _ = conv2d(x.clone(), w.clone(), None, opts.clone()).into_data();
    });
    let ours_fwd = time(repeats, || {
        let _ = l.forward(x.clone()).into_data();
    });
    let xa = Tensor::<4>::from_data(x.to_data(), &ad).require_grad();
    let wa = la.weight.val().require_grad();
    let gout = Tensor::<4>::random([batch, cout, out, out], Distribution::Normal(0., 1.), &ad);
    let burn_bwd = time(repeats, || {
        let y = conv2d(xa.clone(), wa.clone(), None, opts.clone());
        let grads = (y * gout.clone()).sum().backward();
        let _ = xa.grad(&grads).map(|g| g.into_data());
    });
    let ours_bwd = time(repeats, || {
        let grads = (la.forward(xa.clone()) * gout.clone()).sum().backward();
        let _ = xa.grad(&grads).map(|g| g.into_data());
    });
    let gf = |ms: f64, mult: f64| mult * flops / ms / 1e6;
    println!(
        "| {batch}×{cin}→{cout}, {size}², {k}×{k} s{stride} p{pad} | {burn_fwd:.1} ms ({:.0}) | {ours_fwd:.1} ms ({:.0}) | **{:.2}** | {burn_bwd:.1} ms ({:.0}) | {ours_bwd:.1} ms ({:.0}) | **{:.2}** |",
        gf(burn_fwd, 1.0),
        gf(ours_fwd, 1.0),
        ours_fwd / burn_fwd,
        gf(burn_bwd, 3.0),
        gf(ours_bwd, 3.0),
        ours_bwd / burn_bwd,
    );
}

/// `(batch, channels, input size, pad before, pad after)` of a `[1, 3, 3, 1]` blur.
type BlurCase = (usize, usize, usize, usize, usize);

fn run_blur((batch, c, size, p0, p1): BlurCase, repeats: usize) {
    let device = Device::default();
    let kernel = FirKernel::new(&[1.0, 3.0, 3.0, 1.0]);
    let blur = BlurConfig::new(kernel.taps.clone(), [p0 as i64, p1 as i64]).init(&device);
    let out = size + p0 + p1 - 3;
    let x = Tensor::<4>::random(
        [batch, c, size, size],
        Distribution::Normal(0., 1.),
        &device,
    );
    let g = Tensor::<4>::random([batch, c, out, out], Distribution::Normal(0., 1.), &device);
    // Flex's depthwise convolution with the same (flipped) kernel and padding; the input
    // gradient is the reversed kernel with the complementary padding (`Blur::input_vjp`).
    let flex = |x: Tensor<4>, kernel: &FirKernel, [q0, q1]: [usize; 2]| {
        let w = kernel.depthwise_weight(c, &device);
        let opts = ConvOptions::new_with_padding([1, 1], [(q0, q1), (q0, q1)], [1, 1], c);
        conv2d(x, w, None, opts)
    };
    let (reversed, adjoint) = (kernel.reversed(), [3 - p0, 3 - p1]);
    let flex_fwd = time(repeats, || {
        let _ = flex(x.clone(), &kernel, [p0, p1]).into_data();
    });
    let ours_fwd = time(repeats, || {
        let _ = blur.forward(x.clone()).into_data();
    });
    let flex_both = time(repeats, || {
        let _ = flex(x.clone(), &kernel, [p0, p1]).into_data();
        let _ = flex(g.clone(), &reversed, adjoint).into_data();
    });
    let ours_both = time(repeats, || {
        let _ = blur.forward(x.clone()).into_data();
        let _ = blur.input_vjp(g.clone()).into_data();
    });
    println!(
        "| {batch}×{c}, {size}², pad ({p0}, {p1}) | {flex_fwd:.2} ms | {ours_fwd:.2} ms | **{:.2}** | {flex_both:.2} ms | {ours_both:.2} ms | **{:.2}** |",
        ours_fwd / flex_fwd,
        ours_both / flex_both,
    );
}

fn main() {
    sae::model::device::keep_freed_memory();
    let usage = || -> ! {
        eprintln!("usage: bench_conv [REPEATS > 0 [CASE ...]] (CASE: a row number from 1)");
        std::process::exit(2)
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let repeats = match args.first().map(|s| s.parse::<usize>()) {
        None => 5,
        Some(Ok(n)) if n > 0 => n,
        _ => usage(),
    };
    let mut only = Vec::new();
    for a in args.iter().skip(1) {
        match a.parse::<usize>() {
            Ok(i) if i >= 1 => only.push(i),
            _ => usage(),
        }
    }
    println!(
        "device {:?}, {repeats} repeats, medians (GFLOP/s)\n",
        Device::default()
    );
    println!(
        "| conv (batch×in→out, size, kernel) | Flex fwd | ours fwd | ours / Flex | Flex fwd+bwd | ours fwd+bwd | ours / Flex |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let cases: [Case; 13] = [
        // cfg128's D and E widths, stride-1 3×3 ...
        (12, 32, 32, 128, 3, 1, 1),
        (12, 64, 64, 64, 3, 1, 1),
        (12, 64, 64, 16, 3, 1, 1),
        // ... the strided 3×3 after a blur, the strided 1×1 skip ...
        (12, 32, 64, 66, 3, 2, 0),
        (12, 32, 64, 64, 1, 2, 0),
        // ... and the tiny / quickstart widths.
        (12, 16, 32, 64, 3, 1, 1),
        (24, 32, 32, 16, 3, 1, 1),
        // church-256's 512-channel convs at batch 1 (inference) ...
        (1, 512, 512, 16, 3, 1, 1),
        // ... and the 512-channel convs of cfg128's D (at 32 px and 8 px), where a tile of
        // one output row gave the GEMM only 32 or 8 columns per pass over a 9 MB weight.
        (2, 512, 512, 32, 3, 1, 1),
        (8, 512, 512, 8, 3, 1, 1),
        // The church-256 generator's and encoder's large stride-1 3×3 layers at batch 1, which
        // run as Winograd F(2×2, 3×3) (compare with `SAE_WINOGRAD=0` in the environment).
        (1, 512, 512, 64, 3, 1, 1),
        (1, 256, 256, 128, 3, 1, 1),
        (1, 128, 128, 256, 3, 1, 1),
    ];
    // The blurs, numbered on after the convolutions.
    let blurs: [BlurCase; 5] = [
        // cfg128's D and E: the blur before a stride-2 3×3 conv (pad 2, 2) and before the
        // strided 1×1 skip (pad 1, 1) ...
        (12, 32, 128, 2, 2),
        (12, 64, 64, 1, 1),
        // ... cfg128's generator: the blur after the upsampling transposed conv (pad 1, 1) ...
        (4, 64, 129, 1, 1),
        // ... a 4-px plane (the last D blocks), and church-256's generator at batch 1.
        (12, 256, 4, 2, 2),
        (1, 128, 257, 1, 1),
    ];
    // Numbered on after the blurs (the earlier rounds' notes cite the rows above by number):
    // the thirteenth round's small planes. The patch discriminator's 4×4 → 2×2 layers, which
    // run as one dense GEMM, and stride-1 3×3 layers on planes under 64 px, which run as the
    // direct GEMM below 256 channels and as Winograd from there (512 at 16 px); compare each
    // with `SAE_WINOGRAD=0`, which turns both fast paths off.
    let small: [Case; 6] = [
        (192, 64, 32, 4, 3, 1, 0),
        (64, 64, 32, 4, 3, 1, 0),
        (192, 32, 32, 8, 3, 1, 1),
        (96, 64, 64, 8, 3, 1, 1),
        (10, 128, 128, 16, 3, 1, 1),
        (8, 512, 512, 16, 3, 1, 1),
    ];
    let total = cases.len() + blurs.len() + small.len();
    if let Some(&i) = only.iter().find(|&&i| i > total) {
        eprintln!("bench_conv: CASE {i}: there are {total} cases");
        std::process::exit(2)
    }
    for (i, case) in cases.into_iter().enumerate() {
        if only.is_empty() || only.contains(&(i + 1)) {
            run(case, repeats);
        }
    }
    if only.is_empty()
        || only
            .iter()
            .any(|&i| i > cases.len() && i <= cases.len() + blurs.len())
    {
        println!(
            "\n| blur [1, 3, 3, 1] (batch×channels, size, pad) | Flex fwd | ours fwd | ours / Flex | Flex fwd + input grad | ours fwd + input grad | ours / Flex |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
    }
    for (i, case) in blurs.into_iter().enumerate() {
        if only.is_empty() || only.contains(&(cases.len() + i + 1)) {
            run_blur(case, repeats);
        }
    }
    let first = cases.len() + blurs.len();
    if only.is_empty() || only.iter().any(|&i| i > first) {
        println!(
            "\n| small planes (batch×in→out, size, kernel) | Flex fwd | ours fwd | ours / Flex | Flex fwd+bwd | ours fwd+bwd | ours / Flex |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
    }
    for (i, case) in small.into_iter().enumerate() {
        if only.is_empty() || only.contains(&(first + i + 1)) {
            run(case, repeats);
        }
    }
}
