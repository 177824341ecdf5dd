//! The native format round-trips bit-exactly and rejects broken files; the inference API is
//! reproducible under each noise mode and its region editing does what it says, for any batch.

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use sae_model::inference::{Decoder, NoiseMode, edit_structure};
use sae_model::native::{NativeError, load_native, save_native};
use sae_model::{
    DiscriminatorConfig, EncoderConfig, GeneratorConfig, ModelConfig, PatchDiscriminatorConfig,
    SwappingAutoencoder,
};
use sae_nn::{Style, collect_params};

fn tiny() -> ModelConfig {
    ModelConfig {
        encoder: EncoderConfig::new(vec![4, 8, 8, 16, 16, 16, 16], 4, 4, 16),
        generator: GeneratorConfig::new(4, 16, vec![8, 16], vec![16, 8, 8, 4]),
        discriminator: Some(DiscriminatorConfig::new(vec![4, 8, 8, 8], 4)),
        patch_discriminator: Some(
            PatchDiscriminatorConfig::new(vec![4, 8, 8]).with_pair_hidden(vec![8, 8, 4]),
        ),
    }
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sae-model-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn values<M: Module>(m: &M) -> Vec<(String, Vec<f32>)> {
    collect_params(m, None)
        .into_iter()
        .map(|p| (p.path, p.value.try_to_vec::<f32>().unwrap()))
        .collect()
}

#[test]
fn native_round_trip_is_bit_exact() {
    let device = Device::default();
    let config = tiny();
    let model = config.init(&device);
    let path = tmp("roundtrip.safetensors");
    save_native(&model, &config, &path).unwrap();
    let (back, back_config) = load_native(&path, &device).unwrap();
    assert_eq!(back_config, config);
    assert_eq!(values(&back), values(&model));
    assert!(back.d.is_some() && back.dpatch.is_some());
    // No temporary file is left beside the checkpoint.
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn broken_native_files_give_typed_errors() {
    let device = Device::default();
    let config = tiny();
    let path = tmp("truncated.safetensors");
    save_native(&config.init(&device), &config, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 7, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = load_native(&path, &device).unwrap_err();
        assert!(
            matches!(err, NativeError::Format { .. }),
            "cut at {cut}: {err}"
        );
    }
    let foreign = tmp("foreign.safetensors");
    let data = [0u8; 4];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &data).unwrap();
    std::fs::write(
        &foreign,
        safetensors::serialize(vec![("x", view)], None).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        load_native(&foreign, &device),
        Err(NativeError::NotNative { .. })
    ));
    let missing = load_native(&tmp("does-not-exist.safetensors"), &device).unwrap_err();
    assert!(matches!(missing, NativeError::Io { .. }));
}

fn images(batch: usize, device: &Device) -> Tensor<4> {
    Tensor::random(
        [batch, 3, 128, 128],
        Distribution::Uniform(-1.0, 1.0),
        device,
    )
}

#[test]
fn decoding_is_reproducible_under_each_noise_mode() {
    let device = Device::default();
    let config = tiny();
    let mut model = config.init(&device);
    // Noise strengths start at 0; make them matter.
    model = model.map(&mut NoiseOn);
    let x = images(2, &device);
    let codes = model.e.forward(x);
    let run = |mode: NoiseMode| {
        let mut dec = Decoder::new(&model, mode);
        let a = dec.decode(
            codes.structure.clone(),
            Style::Global(codes.texture.clone()),
        );
        let b = dec.decode(
            codes.structure.clone(),
            Style::Global(codes.texture.clone()),
        );
        (a.into_data(), b.into_data())
    };
    let (f1, f2) = run(NoiseMode::Fixed(3));
    assert_eq!(f1, f2, "fixed noise is shared by every decode of a session");
    assert_eq!(
        run(NoiseMode::Fixed(3)).0,
        f1,
        "and reproducible from its seed"
    );
    assert_ne!(run(NoiseMode::Fixed(4)).0, f1);
    let (r1, r2) = run(NoiseMode::Random(3));
    assert_ne!(r1, r2, "random noise is fresh per decode");
    assert_eq!(run(NoiseMode::Random(3)).0, r1, "but seeded");
    let (z1, z2) = run(NoiseMode::Zero);
    assert_eq!(z1, z2);
}

/// Sets every noise strength to 0.5.
struct NoiseOn;
impl burn::module::ModuleMapper for NoiseOn {
    fn map_float<const D: usize>(
        &mut self,
        p: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        let shape = p.lazy_shape();
        if shape.num_dims() == 1 && shape[0] == 1 {
            p.map(|t| t.ones_like() * 0.5)
        } else {
            p
        }
    }
}

fn other_texture(model: &SwappingAutoencoder, device: &Device) -> Tensor<2> {
    model.e.forward(images(2, device)).texture
}

#[test]
fn masked_texture_and_structure_edits() {
    let device = Device::default();
    let model: SwappingAutoencoder = tiny().init(&device);
    let codes = model.e.forward(images(2, &device));
    let other = model.e.forward(images(2, &device)).texture;
    let mut dec = Decoder::new(&model, NoiseMode::Zero);
    let [_, _, h, w] = codes.structure.dims();
    let ones = Tensor::<4>::ones([1, 1, h, w], &device);
    let zeros = Tensor::<4>::zeros([1, 1, h, w], &device);
    let inside = dec.decode_masked(
        codes.structure.clone(),
        other.clone(),
        codes.texture.clone(),
        ones.clone(),
    );
    let swap = dec.decode(codes.structure.clone(), Style::Global(other.clone()));
    let max_diff = |a: Tensor<4>, b: Tensor<4>| -> f32 { (a - b).abs().max().into_scalar() };
    assert!(
        max_diff(inside, swap) < 1e-5,
        "a full mask swaps the texture everywhere"
    );
    let outside = dec.decode_masked(
        codes.structure.clone(),
        other,
        codes.texture.clone(),
        zeros.clone(),
    );
    let rec = dec.decode(
        codes.structure.clone(),
        Style::Global(codes.texture.clone()),
    );
    assert!(
        max_diff(outside, rec) < 1e-5,
        "an empty mask keeps the texture"
    );

    // The blended style is the explicit spatial code `m·a + (1 − m)·b`, decoded as such, for
    // a soft mask at another resolution than the structure code. 1e-5: the same function
    // computed in another order (rounding of a few ulps through the network).
    let soft = Tensor::<4>::random(
        [2, 1, 3 * h, 2 * w],
        burn::tensor::Distribution::Uniform(0.0, 1.0),
        &device,
    );
    let (a, b) = (other_texture(&model, &device), codes.texture.clone());
    let blended = dec.decode_masked(codes.structure.clone(), a.clone(), b.clone(), soft.clone());
    let [n, d] = a.dims();
    let explicit =
        a.reshape([n, d, 1, 1]) * soft.clone() + b.reshape([n, d, 1, 1]) * (soft.neg() + 1.0);
    let spatial = dec.decode(codes.structure.clone(), Style::Spatial(explicit));
    let diff = max_diff(blended, spatial);
    assert!(
        diff < 1e-5,
        "blend and explicit spatial code differ by {diff}"
    );

    let direction = Tensor::<1>::ones([4], &device);
    let same = edit_structure(codes.structure.clone(), direction.clone(), zeros, 3.0);
    assert_eq!(same.into_data(), codes.structure.clone().into_data());
    let moved = edit_structure(codes.structure.clone(), direction, ones, 3.0);
    assert!(max_diff(moved, codes.structure) > 1.0);
}

#[test]
fn interpolation_ends_are_reconstruction_and_swap() {
    let device = Device::default();
    let model: SwappingAutoencoder = tiny().init(&device);
    let (xs, xt) = (images(1, &device), images(1, &device));
    let mut dec = Decoder::new(&model, NoiseMode::Fixed(0));
    let outs = dec.interpolate(xs.clone(), xt.clone(), &[0.0, 0.5, 1.0]);
    assert_eq!(outs.len(), 3);
    let swap = dec.swap(xs.clone(), xt);
    let diff: f32 = (outs[2].clone() - swap).abs().max().into_scalar();
    assert!(diff < 1e-5);
    let codes = dec.encode(xs);
    let rec = dec.decode(codes.structure, Style::Global(codes.texture));
    let diff: f32 = (outs[0].clone() - rec).abs().max().into_scalar();
    assert!(diff < 1e-5);
}

/// Runs `check(decoder, structure images, texture images, exact)` for texture images of the
/// structure images' shape (the one-trunk-pass path) and of 160 px (one pass each), on the
/// default device and, with `exact`, on Flex: there our kernels' per-image sums do not depend
/// on the images beside them in the batch, so the fast paths must give the same bits.
fn on_both_pair_paths(check: impl Fn(&mut Decoder, Tensor<4>, Tensor<4>, bool)) {
    let mut devices = vec![(Device::default(), false)];
    #[cfg(feature = "flex")]
    devices.push((Device::flex(), true));
    for (device, exact) in devices {
        let model: SwappingAutoencoder = tiny().init(&device);
        let mut dec = Decoder::new(&model, NoiseMode::Fixed(0));
        let xs = images(2, &device);
        let other =
            Tensor::<4>::random([2, 3, 160, 160], Distribution::Uniform(-1.0, 1.0), &device);
        for xt in [images(2, &device), other] {
            check(&mut dec, xs.clone(), xt, exact);
        }
    }
}

/// `a == b` to the bit with `exact`, else within f32 rounding: other backends' convolutions
/// may sum a batch in another order, and on outputs of order 1, 1e-5 is a few f32 roundings
/// of sums over ≤ 576 products.
fn assert_same(a: Tensor<4>, b: Tensor<4>, exact: bool, what: &str) {
    if exact {
        assert_eq!(a.into_data(), b.into_data(), "{what}");
    } else {
        let diff: f32 = (a - b).abs().max().into_scalar();
        assert!(diff < 1e-5, "{what}: {diff}");
    }
}

/// `Decoder::swap` runs only the branches it uses (and one trunk pass for images of one
/// shape); its output is still the decode of the structure image's structure code with the
/// texture image's texture code, computed by the full encoder on each image alone.
#[test]
fn swap_is_the_decode_of_the_codes_it_uses() {
    on_both_pair_paths(|dec, xs, xt, exact| {
        let full = dec.decode(
            dec.encode(xs.clone()).structure,
            Style::Global(dec.encode(xt.clone()).texture),
        );
        assert_same(dec.swap(xs, xt), full, exact, "swap vs full encodings");
    });
}

/// `Decoder::interpolate` is `interpolate_codes` on the full encodings of both images (the
/// structure image's two codes, the texture image's texture code), on both paths: one pass
/// through the trunk and the texture branch for both images, or one each.
#[test]
fn interpolate_is_the_mix_of_the_full_encodings() {
    let alphas = [0.0, 0.5, 1.0];
    on_both_pair_paths(|dec, xs, xt, exact| {
        let src = dec.encode(xs.clone());
        let full = dec.interpolate_codes(&src, dec.encode(xt.clone()).texture, &alphas, None);
        let mixed = dec.interpolate(xs, xt, &alphas);
        assert_eq!(mixed.len(), alphas.len());
        for (m, f) in mixed.into_iter().zip(full) {
            assert_same(m, f, exact, "interpolate vs full encodings");
        }
    });
}

/// Two batch sizes are refused with a message naming both (the swap's documented panic), on
/// the batched-trunk path's fallback as well: the shapes differ, so each image runs alone.
#[test]
#[should_panic(expected = "the style batch (1) must equal the input batch (2)")]
fn swap_of_two_batch_sizes_names_them() {
    let device = Device::default();
    let model: SwappingAutoencoder = tiny().init(&device);
    let mut dec = Decoder::new(&model, NoiseMode::Fixed(0));
    dec.swap(images(2, &device), images(1, &device));
}

/// `Decoder::interpolate` with one texture image and two structure images mixes that texture
/// into both (the texture code broadcasts), as its docs say: the same as giving the texture
/// image once per structure image.
#[test]
fn interpolate_broadcasts_one_texture_image() {
    let device = Device::default();
    let model: SwappingAutoencoder = tiny().init(&device);
    let mut dec = Decoder::new(&model, NoiseMode::Fixed(0));
    let (xs, xt) = (images(2, &device), images(1, &device));
    let one = dec.interpolate(xs.clone(), xt.clone(), &[0.5]);
    let repeated = dec.interpolate(xs, Tensor::cat(vec![xt.clone(), xt], 0), &[0.5]);
    assert_eq!(one[0].dims(), [2, 3, 128, 128]);
    // Within f32 rounding: the repeated texture image runs through the trunk with the
    // structure images (one batch), the single one alone.
    let diff: f32 = (one[0].clone() - repeated[0].clone())
        .abs()
        .max()
        .into_scalar();
    assert!(diff < 1e-5, "one texture image vs repeated: {diff}");
}

/// Any other two batch sizes are refused, naming both, as `Decoder::interpolate`'s docs say.
#[test]
#[should_panic(expected = "2 != 3")]
fn interpolate_of_two_batch_sizes_names_them() {
    let device = Device::default();
    let model: SwappingAutoencoder = tiny().init(&device);
    let mut dec = Decoder::new(&model, NoiseMode::Fixed(0));
    dec.interpolate(images(2, &device), images(3, &device), &[0.5]);
}
