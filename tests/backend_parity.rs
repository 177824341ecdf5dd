//! Whole-model backend parity: the complete official-format tiny model (E, G, D, Dpatch,
//! `crates/sae-model/tests/fixtures/tiny_full_official.pth`, written by our PyTorch reference
//! `tools/reference/make_fixtures.py`) gives the reference's outputs and input gradients on
//! every backend compiled into the test build: flex always, ndarray and wgpu with
//! `--features ndarray,wgpu` (the README's test command).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use sae::model::native::f32_view_data;
use sae::model::{GeneratorNoise, SwappingAutoencoder, parse_device};
use sae::nn::Style;
use safetensors::SafeTensors;

/// Forward values: `1e-4 + 1e-4·|expected|`. The layer tests hold single layers to 1e-5; whole
/// networks stack ~30 layers, and a GPU backend (wgpu on lavapipe here) sums in another order
/// and fuses multiply-adds, so rounding grows by about the depth (measured worst: below 1e-5 on
/// flex and ndarray).
const ATOL: f32 = 1e-4;
/// See [`ATOL`].
const RTOL: f32 = 1e-4;
/// Input gradients: `1e-3` of the tensor's largest value: a backward pass sums over every
/// output element, so its rounding scales with the tensor; a wrong term is off by far more.
const GRAD_RTOL: f32 = 1e-3;

fn fixture(name: &str) -> PathBuf {
    let rel = Path::new("crates/sae-model/tests/fixtures").join(name);
    let built_here = Path::new(env!("CARGO_MANIFEST_DIR")).join(&rel);
    // `tools/gpu-check.sh` runs this binary on another machine, from a copy of the repository.
    if built_here.exists() { built_here } else { rel }
}

/// Flex always, ndarray and wgpu when compiled in; or, when `SAE_PARITY_DEVICE` names a device
/// (`tools/gpu-check.sh`: `vulkan`, `cuda:0`, ...), flex and that device.
fn devices() -> Vec<(String, Device)> {
    #[allow(unused_mut)]
    let mut out = vec![("flex".to_string(), Device::flex())];
    if let Ok(name) = std::env::var("SAE_PARITY_DEVICE") {
        let device = parse_device(&name).unwrap_or_else(|e| panic!("SAE_PARITY_DEVICE: {e}"));
        if name != "flex" {
            out.push((name, device));
        }
        return out;
    }
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)]
    out.push(("ndarray".into(), Device::ndarray()));
    #[cfg(feature = "wgpu")]
    out.push(("wgpu".into(), Device::wgpu(Default::default())));
    out
}

fn read_io() -> BTreeMap<String, TensorData> {
    let bytes = std::fs::read(fixture("tiny_full_official.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter_map(|(name, view)| {
            Some((name.strip_prefix("io.")?.to_string(), f32_view_data(&view)))
        })
        .collect()
}

fn close(backend: &str, name: &str, actual: TensorData, expected: &TensorData, grad: bool) -> f32 {
    assert_eq!(actual.shape(), expected.shape(), "{backend} {name}: shape");
    let a = actual.convert::<f32>().try_to_vec::<f32>().unwrap();
    let e = expected.try_to_vec::<f32>().unwrap();
    let emax = e.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&e)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let ok = if grad {
        worst <= GRAD_RTOL * emax.max(1e-6)
    } else {
        a.iter()
            .zip(&e)
            .all(|(x, y)| (x - y).abs() <= ATOL + RTOL * y.abs())
    };
    assert!(
        ok,
        "{backend} {name}: max abs err {worst:e} (max |expected| {emax:e})"
    );
    worst
}

#[test]
fn every_network_matches_the_reference_on_every_backend() {
    let io = read_io();
    for (backend, plain) in devices() {
        let backend = backend.as_str();
        let device = plain.autodiff();
        let (model, _) = SwappingAutoencoder::load(&fixture("tiny_full_official.pth"), &device)
            .unwrap_or_else(|e| panic!("{backend}: {e}"));
        let t = |k: &str| io[k].clone();
        let t4 = |k: &str| Tensor::<4>::from_data(t(k), &device);
        let mut worst = BTreeMap::new();
        let mut check = |name: &str, actual: TensorData, grad: bool| {
            worst.insert(
                name.to_string(),
                close(backend, name, actual, &io[name], grad),
            );
        };

        let codes = model.e.forward(t4("e_x"));
        check("e_sp", codes.structure.into_data(), false);
        check("e_gl", codes.texture.into_data(), false);
        let gl = Tensor::<2>::from_data(t("e_gl"), &device);
        let rec = model
            .g
            .forward(t4("e_sp"), Style::Global(gl), GeneratorNoise::None);
        check("g_rec", rec.into_data(), false);

        let d = model.d.as_ref().unwrap();
        let x = t4("x").require_grad();
        let out = d.forward(x.clone());
        check("d_out", out.clone().into_data(), false);
        let gout = Tensor::<2>::from_data(t("d_gout"), &device);
        let grads = (out * gout).sum().backward();
        check("d_grad_x", x.grad(&grads).unwrap().into_data(), true);

        let p = model.dpatch.as_ref().unwrap();
        let patches = Tensor::<5>::from_data(t("patches"), &device).require_grad();
        let target = Tensor::<5>::from_data(t("target"), &device).require_grad();
        let agg = p.extract_features(patches.clone(), true);
        check("feat_agg", agg.clone().into_data(), false);
        let out = p.discriminate_features(agg, p.extract_features(target.clone(), false));
        check("p_out", out.clone().into_data(), false);
        let gout = Tensor::<2>::from_data(t("p_gout"), &device);
        let grads = (out * gout).sum().backward();
        check(
            "p_grad_patches",
            patches.grad(&grads).unwrap().into_data(),
            true,
        );
        check(
            "p_grad_target",
            target.grad(&grads).unwrap().into_data(),
            true,
        );
        // In exponent form: the errors are 1e-8 to 1e-5, which `{:.1?}` printed as 0.0.
        let worst: Vec<String> = worst.iter().map(|(k, v)| format!("{k} {v:.1e}")).collect();
        println!("{backend:8} worst abs err by output: {}", worst.join(", "));
    }
}
