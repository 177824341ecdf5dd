//! The official implementation's own outputs (`../shared/fixtures/official-tiny`, run on CPU):
//! its checkpoint loads from the `.pth` with every width read from the shapes, and E and G
//! reproduce the codes, the reconstruction, the swap, the interpolation and the spatially varying
//! texture with the stored fixed noise. The folder lives beside the repository; when it is absent
//! the test prints why and checks nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use sae_model::native::f32_view_data;
use sae_model::{GeneratorNoise, SwappingAutoencoder};
use sae_nn::Style;
use safetensors::SafeTensors;

/// The README of the fixture suggests ~1e-5 absolute for an f32 port; the issue asks for
/// `1e-4 abs + 1e-4 rel` on the whole-network outputs, which accumulate ~30 layers of rounding.
const ATOL: f32 = 1e-4;
const RTOL: f32 = 1e-4;

fn dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/official-tiny");
    d.join("tiny_eg_checkpoint.pth").exists().then_some(d)
}

fn read_io(path: &Path) -> BTreeMap<String, TensorData> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| (name, f32_view_data(&view)))
        .collect()
}

fn check(name: &str, actual: TensorData, expected: &TensorData) -> f32 {
    assert_eq!(actual.shape(), expected.shape(), "{name}: shape");
    let a = actual.try_to_vec::<f32>().unwrap();
    let e = expected.try_to_vec::<f32>().unwrap();
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(&e) {
        let d = (x - y).abs();
        assert!(d <= ATOL + RTOL * y.abs(), "{name}: |{x} − {y}| = {d}");
        worst = worst.max(d);
    }
    println!("{name:24} max abs err {worst:.2e}");
    worst
}

#[test]
fn official_tiny_checkpoint_reproduces_codes_and_images() {
    let Some(dir) = dir() else {
        println!("SKIPPED: ../shared/fixtures/official-tiny is not beside this checkout");
        return;
    };
    let device = Device::default();
    let (model, config) =
        SwappingAutoencoder::load_official(&dir.join("tiny_eg_checkpoint.pth"), &device)
            .expect("the official tiny checkpoint loads");
    assert!(model.d.is_none() && model.dpatch.is_none());
    assert_eq!(config.encoder.channels, [8, 16, 32, 32, 32, 32, 32]);
    assert_eq!(config.generator.head_channels, [16, 32]);
    assert_eq!(config.generator.up_channels, [32, 32, 16, 8]);

    let io = read_io(&dir.join("tiny_eg_io.safetensors"));
    let t4 = |k: &str| Tensor::<4>::from_data(io[k].clone(), &device);
    let t2 = |k: &str| Tensor::<2>::from_data(io[k].clone(), &device);

    let codes = model.e.forward(t4("x_structure"));
    check(
        "sp_structure",
        codes.structure.clone().into_data(),
        &io["sp_structure"],
    );
    check(
        "gl_structure",
        codes.texture.clone().into_data(),
        &io["gl_structure"],
    );
    let tex = model.e.forward(t4("x_texture"));
    check("gl_texture", tex.texture.into_data(), &io["gl_texture"]);

    let noise: BTreeMap<String, Tensor<4>> = io
        .iter()
        .filter_map(|(k, v)| {
            let path = k.strip_prefix("noise.G.")?;
            Some((path.to_string(), Tensor::from_data(v.clone(), &device)))
        })
        .collect();
    assert_eq!(noise.len(), 12);
    // G is fed the stored codes, so a G error cannot hide behind an E error.
    let sp = || t4("sp_structure");
    let decode = |style: Style| model.g.forward(sp(), style, GeneratorNoise::Fixed(&noise));
    let gs = t2("gl_structure");
    let gt = t2("gl_texture");
    check(
        "out_rec",
        decode(Style::Global(gs.clone())).into_data(),
        &io["out_rec"],
    );
    check(
        "out_swap",
        decode(Style::Global(gt.clone())).into_data(),
        &io["out_swap"],
    );
    let lerp = gs * 0.5 + gt * 0.5;
    check(
        "out_lerp_0.5",
        decode(Style::Global(lerp)).into_data(),
        &io["out_lerp_0.5"],
    );
    check(
        "out_spatial_style",
        decode(Style::Spatial(t4("spatial_global_code"))).into_data(),
        &io["out_spatial_style"],
    );
}
