//! Shape arithmetic and bad input: every layer names what is wrong instead of failing deep
//! inside a kernel or returning a silently wrong result.

use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use sae_nn::*;

fn dev() -> Device {
    Device::default()
}

fn zeros(shape: [usize; 4]) -> Tensor<4> {
    Tensor::zeros(shape, &dev())
}

#[test]
fn downsampling_halves_even_sizes_and_floors_odd_ones() {
    let d = dev();
    for (blur, reflect) in [
        (vec![1.0, 2.0, 1.0], true),
        (vec![1.0, 3.0, 3.0, 1.0], false),
    ] {
        let block = ResBlockConfig::new(3, 5)
            .with_blur_kernel(blur)
            .with_reflection_pad(reflect)
            .init(&d);
        assert_eq!(block.forward(zeros([2, 3, 16, 24])).dims(), [2, 5, 8, 12]);
        // Like the official code, odd sizes floor (both branches agree on the size).
        assert_eq!(block.forward(zeros([1, 3, 9, 7])).dims(), [1, 5, 4, 3]);
    }
    let same = ResBlockConfig::new(3, 5).with_downsample(false).init(&d);
    assert_eq!(same.forward(zeros([1, 3, 6, 5])).dims(), [1, 5, 6, 5]);
}

#[test]
fn encoder_global_branch_is_a_valid_stride_two_conv() {
    let layer = ConvLayerConfig::new(4, 6, 3)
        .with_downsample(true)
        .with_blur_kernel(vec![1.0])
        .with_pad(Some(0))
        .init(&dev());
    // 16 → 7 → 3, as in the official 256-px encoder.
    let y = layer.forward(zeros([1, 4, 16, 16]));
    assert_eq!(y.dims(), [1, 6, 7, 7]);
}

#[test]
fn upsampling_layers_double_the_size() {
    let d = dev();
    let style = Style::Global(Tensor::zeros([2, 5], &d));
    for blur in [vec![1.0, 3.0, 3.0, 1.0], vec![1.0]] {
        let conv = ModulatedConv2dConfig::new(4, 6, 3, 5)
            .with_upsample(true)
            .with_blur_kernel(blur)
            .init(&d);
        assert_eq!(
            conv.forward(zeros([2, 4, 5, 7]), &style).dims(),
            [2, 6, 10, 14]
        );
    }
    assert_eq!(bilinear_up2(zeros([1, 2, 3, 1])).dims(), [1, 2, 6, 2]);
    let up = UpsampleConfig::new().init(&d);
    assert_eq!(up.forward(zeros([1, 2, 3, 4])).dims(), [1, 2, 6, 8]);
}

#[test]
fn spatial_style_works_for_any_batch_and_equals_per_image_results() {
    let d = dev();
    let conv = ModulatedConv2dConfig::new(3, 4, 3, 5).init(&d);
    let x = Tensor::<4>::random([3, 3, 6, 5], burn::tensor::Distribution::Default, &d);
    let g = Tensor::<4>::random([3, 5, 2, 3], burn::tensor::Distribution::Default, &d);
    let batched = conv.forward(x.clone(), &Style::Spatial(g.clone()));
    for i in 0..3 {
        let one = conv.forward(
            x.clone().slice(i..i + 1),
            &Style::Spatial(g.clone().slice(i..i + 1)),
        );
        let diff: f32 = (batched.clone().slice(i..i + 1) - one)
            .abs()
            .max()
            .into_scalar();
        assert!(diff < 1e-5, "image {i}: batched differs by {diff}");
    }
}

#[test]
#[should_panic(
    expected = "ModulatedConv2d: `x` must have 4 channels (dim 1), got shape [2, 3, 5, 5]"
)]
fn modulated_conv_rejects_wrong_channels() {
    let conv = ModulatedConv2dConfig::new(4, 6, 3, 5).init(&dev());
    conv.forward(
        zeros([2, 3, 5, 5]),
        &Style::Global(Tensor::zeros([2, 5], &dev())),
    );
}

#[test]
#[should_panic(
    expected = "ModulatedConv2d: `style` must have 5 channels (dim 1), got shape [2, 7]"
)]
fn modulated_conv_rejects_wrong_style_dim() {
    let conv = ModulatedConv2dConfig::new(4, 6, 3, 5).init(&dev());
    conv.forward(
        zeros([2, 4, 5, 5]),
        &Style::Global(Tensor::zeros([2, 7], &dev())),
    );
}

#[test]
#[should_panic(expected = "the style batch (3) must equal the input batch (2)")]
fn modulated_conv_rejects_batch_mismatch() {
    let conv = ModulatedConv2dConfig::new(4, 6, 3, 5).init(&dev());
    conv.forward(
        zeros([2, 4, 5, 5]),
        &Style::Global(Tensor::zeros([3, 5], &dev())),
    );
}

#[test]
#[should_panic(expected = "EqualConv2d: `x` has a zero-size dimension, shape [2, 4, 0, 5]")]
fn conv_rejects_zero_size_input() {
    let conv = EqualConv2dConfig::new(4, 6, 3).with_padding(1).init(&dev());
    conv.forward(zeros([2, 4, 0, 5]));
}

#[test]
#[should_panic(
    expected = "EqualConv2d: input [1, 4, 2, 2] is smaller than the 3x3 kernel (padding 0)"
)]
fn conv_rejects_input_smaller_than_kernel() {
    let conv = EqualConv2dConfig::new(4, 6, 3).init(&dev());
    conv.forward(zeros([1, 4, 2, 2]));
}

#[test]
#[should_panic(expected = "Blur: reflection pad (2, 1) must be smaller than the input size 2x8")]
fn reflection_pad_larger_than_input_is_named() {
    let blur = BlurConfig::new(vec![1.0, 2.0, 1.0], [2, 1])
        .with_reflection_pad(true)
        .init(&dev());
    blur.forward(zeros([1, 1, 2, 8]));
}

#[test]
#[should_panic(
    expected = "upfirdn2d: height 2·1 padded by (-1, 0) is 1, smaller than the 4-tap kernel"
)]
fn upfirdn2d_rejects_over_cropping() {
    upfirdn2d(
        zeros([1, 1, 2, 8]),
        &FirKernel::new(&[1.0, 3.0, 3.0, 1.0]),
        1,
        1,
        [-1, 0],
    );
}

#[test]
#[should_panic(
    expected = "NoiseInjection: fixed noise must be [1 or 2, 1, h, w], got [3, 1, 4, 4]"
)]
fn fixed_noise_with_wrong_batch_is_named() {
    let layer = NoiseInjectionConfig::new().init(&dev());
    let noise = zeros([3, 1, 4, 4]);
    layer.forward(zeros([2, 5, 4, 4]), Noise::Fixed(&noise));
}

#[test]
#[should_panic(
    expected = "fused_leaky_relu: `x` must have 3 channels (dim 1), got shape [2, 4, 1, 1]"
)]
fn activation_bias_length_is_checked() {
    let act = FusedLeakyReLUConfig::new(3).init(&dev());
    act.forward(zeros([2, 4, 1, 1]));
}

#[test]
fn patch_sampler_config_and_draws_are_validated() {
    let bad = PatchSamplerConfig::new().with_min_scale(0.0).init();
    assert!(matches!(
        bad,
        Err(CropError::InvalidConfig {
            field: "min_scale",
            ..
        })
    ));
    let bad = PatchSamplerConfig::new().with_max_scale(0.1).init();
    assert!(matches!(
        bad,
        Err(CropError::InvalidConfig {
            field: "max_scale",
            ..
        })
    ));
    let bad = PatchSamplerConfig::new().with_num_crops(0).init();
    assert!(matches!(
        bad,
        Err(CropError::InvalidConfig {
            field: "num_crops",
            ..
        })
    ));

    let sampler = PatchSamplerConfig::new()
        .with_patch_size(4)
        .with_num_crops(2)
        .init()
        .unwrap();
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(1);
    let draws = sampler.draw(&mut rng, 3);
    assert_eq!(draws.len(), 6);
    assert!(draws.flip.iter().all(|f| *f == 1.0 || *f == -1.0));
    assert!(
        draws
            .scale
            .iter()
            .flatten()
            .all(|s| (0.125..=0.25).contains(s))
    );
    let crops = sampler.apply(zeros([3, 2, 8, 8]), &draws).unwrap();
    assert_eq!(crops.dims(), [3, 2, 2, 4, 4]);
    let err = sampler.apply(zeros([2, 2, 8, 8]), &draws).unwrap_err();
    assert_eq!(
        err.to_string(),
        "patch sampler: the draws hold 6 crops but the batch needs 4 (2 images × 2 crops)"
    );
    let mut ragged = draws.clone();
    ragged.offset.pop();
    assert!(matches!(
        sampler.apply(zeros([3, 2, 8, 8]), &ragged),
        Err(CropError::Ragged { .. })
    ));
    assert!(matches!(ragged.shard(0, 1), Err(CropError::Ragged { .. })));

    // Shards of the draws are contiguous blocks of images, and only equal blocks are made.
    let whole = sampler.draw(&mut rand::rngs::Xoshiro256PlusPlus::seed_from_u64(2), 4);
    let (a, b) = (whole.shard(0, 2).unwrap(), whole.shard(1, 2).unwrap());
    assert_eq!([a.flip, b.flip].concat(), whole.flip);
    assert_eq!([a.scale, b.scale].concat(), whole.scale);
    assert_eq!([a.offset, b.offset].concat(), whole.offset);
    assert_eq!(
        whole.shard(0, 3).unwrap_err().to_string(),
        "patch sampler: 8 crops do not split into shard 0 of 3 equal shards"
    );
    assert!(matches!(whole.shard(2, 2), Err(CropError::Shard { .. })));
}

#[test]
fn noise_shards_are_the_rows_of_the_whole_batch() {
    let d = dev();
    let whole = NoiseRng::seed(3).sample([4, 1, 3, 5], &d);
    let mut parts = Vec::new();
    let mut states = Vec::new();
    for i in 0..2 {
        let mut rng = NoiseRng::seed(3);
        parts.push(rng.sample_shard([2, 1, 3, 5], i, 2, &d));
        states.push(rng);
    }
    assert_eq!(Tensor::cat(parts, 0).to_data(), whole.to_data());
    // Every shard leaves the generator where the whole batch does.
    let mut after = NoiseRng::seed(3);
    let _ = after.sample([4, 1, 3, 5], &d);
    assert!(states.iter().all(|s| *s == after));
}

#[test]
fn noise_modes_are_reproducible() {
    let d = dev();
    let mut layer = NoiseInjectionConfig::new().init(&d);
    layer.weight = burn::module::Param::from_tensor(Tensor::ones([1], &d));
    let x = zeros([2, 3, 4, 5]);
    let a = layer.forward(x.clone(), Noise::Random(&mut NoiseRng::seed(7)));
    let b = layer.forward(x.clone(), Noise::Random(&mut NoiseRng::seed(7)));
    let c = layer.forward(x.clone(), Noise::Random(&mut NoiseRng::seed(8)));
    assert_eq!(a.to_data(), b.to_data());
    assert_ne!(a.to_data(), c.to_data());
    // Noise is one channel broadcast over all channels.
    let first = a.clone().slice([0..2, 0..1]);
    assert_eq!(a.slice([0..2, 2..3]).to_data(), first.to_data());
    let none = layer.forward(x.clone(), Noise::None);
    assert_eq!(none.to_data(), x.to_data());
}

#[test]
fn params_load_reports_missing_mismatched_and_unexpected_keys() {
    use std::collections::BTreeMap;
    let d = dev();
    let layer = || ConvLayerConfig::new(2, 3, 1).init(&d);
    let mut tensors: BTreeMap<String, burn::tensor::TensorData> = collect_params(&layer(), None)
        .into_iter()
        .map(|p| (p.path, p.value))
        .collect();
    assert_eq!(
        tensors.keys().collect::<Vec<_>>(),
        ["act.bias", "conv.weight"]
    );
    assert!(load_params(layer(), &tensors).is_ok());

    let mut wrong = tensors.clone();
    wrong.insert(
        "conv.weight".into(),
        burn::tensor::TensorData::new(vec![0.0f32; 6], [3, 2, 1, 1, 1]),
    );
    assert_eq!(
        load_params(layer(), &wrong).unwrap_err().to_string(),
        "shape mismatch for `conv.weight`: the model expects [3, 2, 1, 1], the file has [3, 2, 1, 1, 1]"
    );
    let mut extra = tensors.clone();
    extra.insert(
        "conv.bias".into(),
        burn::tensor::TensorData::new(vec![0.0f32; 3], [3]),
    );
    assert_eq!(
        load_params(layer(), &extra).unwrap_err(),
        ParamError::Unexpected {
            key: "conv.bias".into()
        }
    );
    tensors.remove("act.bias");
    assert_eq!(
        load_params(layer(), &tensors).unwrap_err(),
        ParamError::Missing {
            key: "act.bias".into(),
            expected: vec![3]
        }
    );
}

fn strided_conv() -> EqualConv2d {
    EqualConv2dConfig::new(3, 4, 3)
        .with_stride(2)
        .with_padding(1)
        .init(&dev())
}

#[test]
fn equal_conv_input_vjp_gives_the_input_size_back() {
    // The forward pass of a 9x8 input gives 5x4; its VJP gives 9x8 back.
    let conv = strided_conv();
    assert_eq!(conv.forward(zeros([2, 3, 9, 8])).dims(), [2, 4, 5, 4]);
    assert_eq!(
        conv.input_vjp(zeros([2, 4, 5, 4]), [9, 8]).dims(),
        [2, 3, 9, 8]
    );
}

#[test]
#[should_panic(expected = "g is 5x5, but the forward pass of a 9x8 input gives 5x4")]
fn equal_conv_input_vjp_names_a_gradient_of_the_wrong_size() {
    strided_conv().input_vjp(zeros([2, 4, 5, 5]), [9, 8]);
}

#[test]
#[should_panic(expected = "EqualConv2d::input_vjp")]
fn equal_conv_input_vjp_names_a_gradient_with_the_wrong_channels() {
    strided_conv().input_vjp(zeros([2, 3, 5, 4]), [9, 8]);
}

#[test]
#[should_panic(expected = "a 1x8 input is smaller than the 3x3 kernel with padding 0")]
fn equal_conv_input_vjp_names_an_input_smaller_than_the_kernel() {
    EqualConv2dConfig::new(3, 4, 3)
        .init(&dev())
        .input_vjp(zeros([2, 4, 1, 6]), [1, 8]);
}
