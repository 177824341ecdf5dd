//! The primitive-op and crop-sampler cases of the official implementation's own outputs
//! (`../shared/fixtures/official-tiny`, made by running the official code on CPU). The folder
//! lives beside the repository and is not shipped with it: when it is absent the test prints why
//! and checks nothing else.

mod common;

use burn::tensor::{Device, Tensor};
use common::{Fixture, devices, max_abs_err, official_tiny_dir};
use sae_nn::*;

fn t4(fx: &Fixture, key: &str, device: &Device) -> Tensor<4> {
    Tensor::from_data(fx.get(key).clone(), device)
}

fn check(fx: &Fixture, key: &str, actual: burn::tensor::TensorData, backend: &str) {
    let (err, ok, _) = max_abs_err(&actual, fx.get(key));
    println!("{backend:8} {key:32} max abs err {err:.2e}");
    assert!(
        ok,
        "{key} on {backend}: max abs err {err:e} exceeds 1e-5 + 1e-5·|expected|"
    );
}

#[test]
fn official_primitive_and_crop_cases() {
    let Some(dir) = official_tiny_dir() else {
        println!("SKIPPED: ../shared/fixtures/official-tiny is not beside this checkout");
        return;
    };
    let fx = Fixture::load(&dir.join("tiny_eg_io.safetensors"));
    let k121 = FirKernel::new(&[1.0, 2.0, 1.0]);
    let k1331 = FirKernel::new(&[1.0, 3.0, 3.0, 1.0]);
    for (backend, device) in devices() {
        let x = || t4(&fx, "prim.input", &device);
        let reflect = BlurConfig::new(vec![1.0, 2.0, 1.0], [2, 1])
            .with_reflection_pad(true)
            .init(&device);
        let cases = [
            ("prim.blur121_reflect_2_1", reflect.forward(x())),
            ("prim.blur121_zero_1_0", upfirdn2d(x(), &k121, 1, 1, [1, 0])),
            (
                "prim.blur1331_zero_1_1",
                upfirdn2d(x(), &k1331, 1, 1, [1, 1]),
            ),
            (
                "prim.blur1331_zero_2_2",
                upfirdn2d(x(), &k1331, 1, 1, [2, 2]),
            ),
            (
                "prim.down2_blur1331_pad_1_1",
                upfirdn2d(x(), &k1331, 1, 2, [1, 1]),
            ),
            (
                "prim.up2_blur1331x4_pad_2_1",
                upfirdn2d(x(), &k1331.clone().with_gain(4.0), 2, 1, [2, 1]),
            ),
            ("prim.normalize", normalize(x())),
            ("prim.bilinear_x2", bilinear_up2(x())),
        ];
        for (key, out) in cases {
            check(&fx, key, out.into_data(), backend);
        }

        let v = |k: &str| fx.get(k).try_to_vec::<f32>().unwrap();
        let pairs = |v: Vec<f32>| v.chunks(2).map(|p| [p[0], p[1]]).collect();
        let draws = CropDraws {
            flip: v("crop.flip"),
            scale: pairs(v("crop.scale")),
            offset: pairs(v("crop.offset")),
        };
        let sampler = PatchSamplerConfig::new()
            .with_patch_size(16)
            .with_num_crops(3)
            .init()
            .unwrap();
        let crops = sampler
            .apply(t4(&fx, "crop.input", &device), &draws)
            .unwrap();
        check(&fx, "crop.output", crops.into_data(), backend);
    }
}
