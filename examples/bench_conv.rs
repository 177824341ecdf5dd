//! Flex's own convolution against ours (`sae::nn::EqualConv2d`, whose convolution runs
//! `sae-nn`'s kernels on Flex) at the small models' shapes: forward, and forward + backward to the
//! input and the weight. Prints one table of medians and GFLOP/s (`docs/performance.md`).
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
use sae::nn::{EqualConv2d, EqualConv2dConfig};

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
    if let Some(&i) = only.iter().find(|&&i| i > cases.len()) {
        eprintln!("bench_conv: CASE {i}: there are {} cases", cases.len());
        std::process::exit(2)
    }
    for (i, case) in cases.into_iter().enumerate() {
        if only.is_empty() || only.contains(&(i + 1)) {
            run(case, repeats);
        }
    }
}
