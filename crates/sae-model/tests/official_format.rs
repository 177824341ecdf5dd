//! A complete tiny model in the official checkpoint format (E, G, D and Dpatch, written by our
//! PyTorch reference, `tools/reference/make_fixtures.py`): the `.pth` loads with every width read
//! from the shapes, the four networks reproduce the reference's outputs and gradients, and
//! broken or hostile checkpoints give typed errors that name the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use sae_model::checkpoint::{CheckpointError, OfficialTensors};
use sae_model::model::read_official_tensors;
use sae_model::native::f32_view_data;
use sae_model::{GeneratorNoise, OfficialError, SwappingAutoencoder};
use sae_nn::{ParamError, Style, collect_params};
use sae_pth::PthError;
use safetensors::SafeTensors;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_io() -> BTreeMap<String, TensorData> {
    let bytes = std::fs::read(fixture("tiny_full_official.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(name, _)| name.starts_with("io."))
        .map(|(name, view)| (name[3..].to_string(), f32_view_data(&view)))
        .collect()
}

/// Forward values: `1e-5 + 1e-5·|expected|` (same reasoning as the layer tests); gradients:
/// `1e-4` of the tensor's largest value.
fn close(name: &str, actual: TensorData, expected: &TensorData, grad: bool) {
    assert_eq!(actual.shape(), expected.shape(), "{name}: shape");
    let a = actual.convert::<f32>().try_to_vec::<f32>().unwrap();
    let e = expected.try_to_vec::<f32>().unwrap();
    let emax = e.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&e)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let ok = if grad {
        worst <= 1e-4 * emax.max(1e-6)
    } else {
        a.iter()
            .zip(&e)
            .all(|(x, y)| (x - y).abs() <= 1e-5 + 1e-5 * y.abs())
    };
    println!("{name:48} max abs err {worst:.2e} (max |expected| {emax:.2e})");
    assert!(ok, "{name}: max abs err {worst:e}, max |expected| {emax:e}");
}

#[test]
fn full_official_checkpoint_reproduces_all_four_networks() {
    let device = Device::default().autodiff();
    let tensors = read_official_tensors(&fixture("tiny_full_official.pth")).unwrap();
    let (model, config) = SwappingAutoencoder::from_official_tensors(&tensors, &device).unwrap();
    let d = model.d.as_ref().expect("D is in the file");
    let p = model.dpatch.as_ref().expect("Dpatch is in the file");
    assert_eq!(
        config.discriminator.as_ref().unwrap().channels,
        [8, 16, 16, 16]
    );
    assert_eq!(
        config.patch_discriminator.as_ref().unwrap().channels,
        [8, 16, 16]
    );
    assert_eq!(
        config.patch_discriminator.as_ref().unwrap().pair_hidden,
        [32, 32, 16]
    );
    let io = read_io();
    let t4 = |k: &str| Tensor::<4>::from_data(io[k].clone(), &device);
    let t5 = |k: &str| Tensor::<5>::from_data(io[k].clone(), &device);
    let t2 = |k: &str| Tensor::<2>::from_data(io[k].clone(), &device);

    // E and G (no noise anywhere).
    let codes = model.e.forward(t4("e_x"));
    close(
        "e_sp",
        codes.structure.clone().into_data(),
        &io["e_sp"],
        false,
    );
    close(
        "e_gl",
        codes.texture.clone().into_data(),
        &io["e_gl"],
        false,
    );
    let rec = model
        .g
        .forward(t4("e_sp"), Style::Global(t2("e_gl")), GeneratorNoise::None);
    close("g_rec", rec.into_data(), &io["g_rec"], false);

    // D: logits and the gradients of sum(logits · gout).
    let x = t4("x").require_grad();
    let out = d.forward(x.clone());
    close("d_out", out.clone().into_data(), &io["d_out"], false);
    let grads = (out * t2("d_gout")).sum().backward();
    close(
        "d_grad_x",
        x.grad(&grads).unwrap().into_data(),
        &io["d_grad_x"],
        true,
    );
    let remapped = sae_model::checkpoint::remap_checkpoint(&tensors).unwrap();
    let official = |net, path: &str| remapped.official[&(net, path.to_string())].clone();
    for param in collect_params(d, Some(&grads)) {
        let key = official(sae_model::checkpoint::Net::D, &param.path);
        close(
            &format!("d_grad.{key}"),
            param.grad.unwrap(),
            &io[&format!("d_grad.{key}")],
            true,
        );
    }

    // Dpatch: features with and without aggregation, pair logits and their gradients.
    let patches = t5("patches").require_grad();
    let target = t5("target").require_grad();
    let agg = p.extract_features(patches.clone(), true);
    close("feat_agg", agg.clone().into_data(), &io["feat_agg"], false);
    close(
        "feat",
        p.extract_features(t5("patches"), false).into_data(),
        &io["feat"],
        false,
    );
    let out = p.discriminate_features(agg, p.extract_features(target.clone(), false));
    close("p_out", out.clone().into_data(), &io["p_out"], false);
    let grads = (out * t2("p_gout")).sum().backward();
    close(
        "p_grad_patches",
        patches.grad(&grads).unwrap().into_data(),
        &io["p_grad_patches"],
        true,
    );
    close(
        "p_grad_target",
        target.grad(&grads).unwrap().into_data(),
        &io["p_grad_target"],
        true,
    );
    for param in collect_params(p, Some(&grads)) {
        let key = official(sae_model::checkpoint::Net::Dpatch, &param.path);
        close(
            &format!("p_grad.{key}"),
            param.grad.unwrap(),
            &io[&format!("p_grad.{key}")],
            true,
        );
    }
}

fn load(t: &OfficialTensors) -> Result<(), OfficialError> {
    SwappingAutoencoder::from_official_tensors(t, &Device::default()).map(|_| ())
}

#[test]
fn broken_checkpoints_name_what_is_wrong() {
    let good = read_official_tensors(&fixture("tiny_full_official.pth")).unwrap();
    assert!(load(&good).is_ok());

    // A mis-shaped parameter: the error names the official key and both shapes.
    let mut t = good.clone();
    t.insert(
        "G.ToRGB.bias".into(),
        TensorData::new(vec![0f32; 4], [1, 4, 1, 1]),
    );
    let err = load(&t).unwrap_err();
    assert_eq!(
        err.to_string(),
        "G: shape mismatch for `to_rgb.bias`: the model expects [1, 3, 1, 1], the file has [1, 4, 1, 1] (official key `G.ToRGB.bias`)"
    );

    // A missing parameter.
    let mut t = good.clone();
    t.remove("D.stylegan2_D.final_conv.Act.bias");
    let err = load(&t).unwrap_err();
    assert!(
        matches!(&err, OfficialError::Param { source: ParamError::Missing { key, .. }, .. } if key == "final_conv.act.bias"),
        "{err}"
    );

    // A key needed to infer the configuration.
    let mut t = good.clone();
    t.remove("E.ToGlobalCode.0.bias");
    assert_eq!(
        load(&t).unwrap_err().to_string(),
        "missing checkpoint key `E.ToGlobalCode.0.bias` (needed to infer the texture-code width)"
    );

    // A key that belongs to no network.
    let mut t = good.clone();
    t.insert("G.Mystery.weight".into(), TensorData::new(vec![0f32], [1]));
    assert!(matches!(
        load(&t).unwrap_err(),
        OfficialError::Checkpoint(CheckpointError::UnknownKey { key }) if key == "G.Mystery.weight"
    ));

    // A blur buffer that is not the FIR kernel the network computes.
    let mut t = good.clone();
    let key = "E.DownToSpatialCode.ResBlockDownBy1.conv2.Blur.kernel";
    t.insert(key.into(), TensorData::new(vec![0.5f32; 9], [3, 3]));
    assert!(matches!(
        load(&t).unwrap_err(),
        OfficialError::Checkpoint(CheckpointError::KernelMismatch { .. })
    ));

    // Inference needs E and G.
    let only_d: OfficialTensors = good
        .iter()
        .filter(|(k, _)| k.starts_with("D"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(load(&only_d).is_err());
}

#[test]
fn hostile_and_truncated_files_are_rejected() {
    let device = Device::default();
    let forbidden = fixture("../../../sae-pth/tests/fixtures/pth/forbidden_global.pth");
    let err = SwappingAutoencoder::load_official(&forbidden, &device).unwrap_err();
    assert!(
        matches!(err, OfficialError::Pth(PthError::ForbiddenGlobal { .. })),
        "{err}"
    );

    let bytes = std::fs::read(fixture("tiny_full_official.pth")).unwrap();
    let dir = std::env::temp_dir().join(format!("sae-official-format-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cut = dir.join("cut.pth");
    for n in [10, bytes.len() / 3, bytes.len() - 30] {
        std::fs::write(&cut, &bytes[..n]).unwrap();
        let err = SwappingAutoencoder::load_official(&cut, &device).unwrap_err();
        assert!(matches!(err, OfficialError::Pth(_)), "cut at {n}: {err}");
    }
    let not_a_checkpoint = dir.join("text.pth");
    std::fs::write(&not_a_checkpoint, b"hello, not a checkpoint").unwrap();
    assert!(SwappingAutoencoder::load_official(&not_a_checkpoint, &device).is_err());
}
