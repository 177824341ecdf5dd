//! Every `sae-nn` layer against our PyTorch reference (`tools/reference/make_fixtures.py`):
//! forward values, input gradients and parameter gradients of `sum(out · gout)`, on every
//! backend compiled into the test build (flex by default; `--features ndarray,wgpu` adds the
//! others, which makes this the backend-parity test too).

mod common;

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use common::{Fixture, GRAD_RTOL, devices, fixture_dir, max_abs_err};
use sae_nn::*;

/// Stands in for a module in the parameter-free op cases.
#[derive(Module, Debug)]
struct Op {
    _tag: usize,
}

/// A differentiable input of either rank the layers take.
#[derive(Clone)]
enum Input {
    R2(Tensor<2>),
    R4(Tensor<4>),
}

impl Input {
    fn grad(&self, grads: &Gradients) -> Option<TensorData> {
        match self {
            Input::R2(t) => t.grad(grads).map(|g| g.into_data()),
            Input::R4(t) => t.grad(grads).map(|g| g.into_data()),
        }
    }
}

struct Inputs(BTreeMap<String, Input>);

impl Inputs {
    fn t2(&self, name: &str) -> Tensor<2> {
        match &self.0[name] {
            Input::R2(t) => t.clone(),
            Input::R4(_) => panic!("input `{name}` is 4-D"),
        }
    }
    fn t4(&self, name: &str) -> Tensor<4> {
        match &self.0[name] {
            Input::R4(t) => t.clone(),
            Input::R2(_) => panic!("input `{name}` is 2-D"),
        }
    }
    fn style(&self) -> Style {
        match &self.0["style"] {
            Input::R2(t) => Style::Global(t.clone()),
            Input::R4(t) => Style::Spatial(t.clone()),
        }
    }
    fn g(&self) -> Style {
        match &self.0["g"] {
            Input::R2(t) => Style::Global(t.clone()),
            Input::R4(t) => Style::Spatial(t.clone()),
        }
    }
}

/// Inputs that are data, not differentiable activations.
const CONSTANT_INPUTS: [&str; 4] = ["noise", "flip", "scale", "offset"];

fn make_inputs(fx: &Fixture, device: &Device) -> Inputs {
    let mut map = BTreeMap::new();
    for (name, data) in fx.with_prefix("in.") {
        if CONSTANT_INPUTS.contains(&name.as_str()) {
            continue;
        }
        let input = match data.shape().len() {
            2 => Input::R2(Tensor::<2>::from_data(data, device).require_grad()),
            4 => Input::R4(Tensor::<4>::from_data(data, device).require_grad()),
            r => panic!("{}: input `{name}` has unsupported rank {r}", fx.name),
        };
        map.insert(name, input);
    }
    Inputs(map)
}

/// Worst errors of one case: (tensor, max abs error, max |expected|).
type Report = Vec<(String, f32, f32)>;

/// Loads the fixture's parameters into `module`, runs `forward`, backpropagates
/// `sum(out · gout)` and checks the output and every gradient.
fn check_case<M: Module, const D: usize>(
    fx: &Fixture,
    device: &Device,
    module: M,
    forward: impl Fn(&M, &Inputs) -> Tensor<D>,
) -> Report {
    let module = load_params(module, &fx.with_prefix("param."))
        .unwrap_or_else(|e| panic!("{}: loading parameters: {e}", fx.name));
    let inputs = make_inputs(fx, device);
    let out = forward(&module, &inputs);
    let mut report = Vec::new();
    let mut failures = Vec::new();

    let (err, ok, emax) = max_abs_err(&out.to_data(), fx.get("out"));
    report.push(("out".to_string(), err, emax));
    if !ok {
        failures.push(format!("out: max abs err {err:e}"));
    }

    let gout = Tensor::<D>::from_data(fx.get("gout").clone(), device);
    let grads = (out * gout).sum().backward();
    let mut check_grad = |key: String, actual: Option<TensorData>| {
        let expected = fx.get(&key);
        // A parameter the loss does not depend on gets no gradient in Burn; PyTorch reports
        // zeros for it.
        let actual = actual.unwrap_or_else(|| {
            TensorData::new(
                vec![0.0f32; expected.num_elements()],
                expected.shape().to_vec(),
            )
        });
        let (err, _, emax) = max_abs_err(&actual, expected);
        report.push((key.clone(), err, emax));
        if err.is_nan() || err > GRAD_RTOL * emax.max(1e-6) {
            failures.push(format!(
                "{key}: max abs err {err:e} vs max |expected| {emax:e}"
            ));
        }
    };
    for (name, input) in &inputs.0 {
        check_grad(format!("grad.in.{name}"), input.grad(&grads));
    }
    for p in collect_params(&module, Some(&grads)) {
        check_grad(format!("grad.param.{}", p.path), p.grad);
    }
    assert!(
        failures.is_empty(),
        "{} failed:\n  {}",
        fx.name,
        failures.join("\n  ")
    );
    report
}

fn noise_of(fx: &Fixture, device: &Device) -> Option<Tensor<4>> {
    fx.tensors
        .get("in.noise")
        .map(|d| Tensor::<4>::from_data(d.clone(), device))
}

fn run_case(fx: &Fixture, device: &Device) -> Report {
    let c = &fx.config;
    let dev = device;
    if let Some(op) = c["op"].as_str() {
        let unit = Op { _tag: 0 };
        return match op {
            "upfirdn2d" => {
                let scale = c["kernel_scale"].as_f64().unwrap() as f32;
                let kernel = FirKernel::new(&fx.cfg_f32s("kernel")).with_gain(scale);
                let pad = fx.cfg_f32s("pad");
                let (up, down) = (fx.cfg_usize("up"), fx.cfg_usize("down"));
                check_case(fx, dev, unit, move |_, i| {
                    upfirdn2d(i.t4("x"), &kernel, up, down, [pad[0] as i64, pad[1] as i64])
                })
            }
            "interpolate" => check_case(fx, dev, unit, |_, i| bilinear_up2(i.t4("x"))),
            "normalize" => match fx.get("in.x").shape().len() {
                2 => check_case(fx, dev, unit, |_, i| normalize(i.t2("x"))),
                _ => check_case(fx, dev, unit, |_, i| normalize(i.t4("x"))),
            },
            "scaled_leaky_relu" => check_case(fx, dev, unit, |_, i| scaled_leaky_relu(i.t4("x"))),
            "apply_random_crop" => {
                let range = fx.cfg_f32s("scale_range");
                let sampler = PatchSamplerConfig::new()
                    .with_patch_size(fx.cfg_usize("target_size"))
                    .with_num_crops(fx.cfg_usize("num_crops"))
                    .with_min_scale(range[0])
                    .with_max_scale(range[1])
                    .init()
                    .unwrap();
                let v = |k: &str| fx.get(k).try_to_vec::<f32>().unwrap();
                let pairs = |v: Vec<f32>| v.chunks(2).map(|p| [p[0], p[1]]).collect();
                let draws = CropDraws {
                    flip: v("in.flip"),
                    scale: pairs(v("in.scale")),
                    offset: pairs(v("in.offset")),
                };
                check_case(fx, dev, unit, move |_, i| {
                    sampler.apply(i.t4("x"), &draws).unwrap()
                })
            }
            other => panic!("{}: unknown op `{other}`", fx.name),
        };
    }
    let module = c["module"]
        .as_str()
        .expect("fixture config names a module or an op");
    let cin = || fx.cfg_usize("in_channel");
    let cout = || fx.cfg_usize("out_channel");
    let k = || fx.cfg_usize("kernel_size");
    match module {
        "Blur" => {
            let pad = fx.cfg_f32s("pad");
            let blur = BlurConfig::new(fx.cfg_f32s("kernel"), [pad[0] as i64, pad[1] as i64])
                .with_upsample_factor(fx.cfg_usize("upsample_factor"))
                .with_reflection_pad(fx.cfg_bool("reflection_pad"))
                .init(dev);
            check_case(fx, dev, blur, |m, i| m.forward(i.t4("x")))
        }
        "Upsample" => {
            let up = UpsampleConfig::new()
                .with_kernel(fx.cfg_f32s("kernel"))
                .with_factor(fx.cfg_usize("factor"))
                .init(dev);
            check_case(fx, dev, up, |m, i| m.forward(i.t4("x")))
        }
        "EqualConv2d" => {
            let conv = EqualConv2dConfig::new(cin(), cout(), k())
                .with_stride(fx.cfg_usize("stride"))
                .with_padding(fx.cfg_usize("padding"))
                .with_bias(fx.cfg_bool("bias"))
                .init(dev);
            check_case(fx, dev, conv, |m, i| m.forward(i.t4("x")))
        }
        "EqualLinear" => {
            let lin = EqualLinearConfig::new(fx.cfg_usize("in_dim"), fx.cfg_usize("out_dim"))
                .with_activation(c["activation"].as_str() == Some("fused_lrelu"))
                .init(dev);
            match fx.get("in.x").shape().len() {
                2 => check_case(fx, dev, lin, |m, i| m.forward(i.t2("x"))),
                _ => check_case(fx, dev, lin, |m, i| m.forward_spatial(i.t4("x"))),
            }
        }
        "FusedLeakyReLU" => {
            let act = FusedLeakyReLUConfig::new(fx.cfg_usize("channels")).init(dev);
            match fx.get("in.x").shape().len() {
                2 => check_case(fx, dev, act, |m, i| m.forward(i.t2("x"))),
                _ => check_case(fx, dev, act, |m, i| m.forward(i.t4("x"))),
            }
        }
        "ConvLayer" => {
            let layer = ConvLayerConfig::new(cin(), cout(), k())
                .with_downsample(fx.cfg_bool("downsample"))
                .with_blur_kernel(fx.cfg_f32s("blur_kernel"))
                .with_bias(fx.cfg_bool("bias"))
                .with_activate(fx.cfg_bool("activate"))
                .with_pad(c["pad"].as_u64().map(|p| p as usize))
                .with_reflection_pad(fx.cfg_bool("reflection_pad"))
                .init(dev);
            check_case(fx, dev, layer, |m, i| m.forward(i.t4("x")))
        }
        "ResBlock" => {
            let block = ResBlockConfig::new(cin(), cout())
                .with_blur_kernel(fx.cfg_f32s("blur_kernel"))
                .with_reflection_pad(fx.cfg_bool("reflection_pad"))
                .with_pad(c["pad"].as_u64().map(|p| p as usize))
                .with_downsample(fx.cfg_bool("downsample"))
                .init(dev);
            check_case(fx, dev, block, |m, i| m.forward(i.t4("x")))
        }
        "ModulatedConv2d" => {
            let conv = ModulatedConv2dConfig::new(cin(), cout(), k(), fx.cfg_usize("style_dim"))
                .with_demodulate(fx.cfg_bool("demodulate"))
                .with_upsample(fx.cfg_bool("upsample"))
                .with_blur_kernel(fx.cfg_f32s("blur_kernel"))
                .init(dev);
            check_case(fx, dev, conv, |m, i| m.forward(i.t4("x"), &i.style()))
        }
        "NoiseInjection" => {
            let noise = noise_of(fx, dev).expect("noise fixture has in.noise");
            let layer = NoiseInjectionConfig::new().init(dev);
            check_case(fx, dev, layer, move |m, i| {
                m.forward(i.t4("x"), Noise::Fixed(&noise))
            })
        }
        "StyledConv" => {
            let noise = noise_of(fx, dev);
            let layer = StyledConvConfig::new(cin(), cout(), k(), fx.cfg_usize("style_dim"))
                .with_upsample(fx.cfg_bool("upsample"))
                .with_blur_kernel(fx.cfg_f32s("blur_kernel"))
                .with_demodulate(fx.cfg_bool("demodulate"))
                .with_use_noise(fx.cfg_bool("use_noise"))
                .init(dev);
            check_case(fx, dev, layer, move |m, i| {
                let n = match &noise {
                    Some(t) => Noise::Fixed(t),
                    None => Noise::None,
                };
                m.forward(i.t4("x"), &i.style(), n)
            })
        }
        "ToRGB" => {
            let layer = ToRgbConfig::new(cin(), fx.cfg_usize("style_dim")).init(dev);
            check_case(fx, dev, layer, |m, i| m.forward(i.t4("x"), &i.style()))
        }
        "GeneratorModulation" => {
            let layer =
                GeneratorModulationConfig::new(fx.cfg_usize("style_dim"), fx.cfg_usize("channel"))
                    .init(dev);
            check_case(fx, dev, layer, |m, i| m.forward(i.t4("s"), &i.g()))
        }
        other => panic!("{}: unknown module `{other}`", fx.name),
    }
}

fn all_fixtures() -> Vec<Fixture> {
    let mut paths: Vec<_> = std::fs::read_dir(fixture_dir())
        .expect("tests/fixtures exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 50,
        "expected the full fixture set, found {}",
        paths.len()
    );
    paths.iter().map(|p| Fixture::load(p)).collect()
}

/// Runs every fixture case on every compiled backend, prints the worst error per case and
/// tensor (`cargo test --test parity -- --nocapture`), and fails on the first mismatch.
#[test]
fn layers_match_reference_on_every_backend() {
    let fixtures = all_fixtures();
    for (backend, device) in devices() {
        let device = device.autodiff();
        for fx in &fixtures {
            let report = run_case(fx, &device);
            let (worst_out, worst_grad) = report.iter().fold((0f32, 0f32), |acc, (k, e, m)| {
                if k == "out" {
                    (acc.0.max(*e), acc.1)
                } else {
                    (acc.0, acc.1.max(e / m.max(1e-6)))
                }
            });
            println!(
                "{backend:8} {:32} out max abs {worst_out:.2e}   grads max rel-to-max {worst_grad:.2e}",
                fx.name
            );
        }
    }
}
