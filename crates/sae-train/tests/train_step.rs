//! One-step parity with the PyTorch reference (`tools/reference/make_train_fixtures.py`): a D
//! step, the lazy R1 step on the same batch and a G step on a fresh batch, on fixed weights,
//! batches, crop draws and noise. Every loss term, the gradient of each step's loss w.r.t. every
//! trained parameter and every parameter after each Adam update must match.
//!
//! The R1 step is the double-backward check: PyTorch differentiates `‖∇ₓD‖²` with
//! `create_graph=True`; we differentiate the hand-written input-VJPs with ordinary autodiff.
//!
//! Tolerance: `1e-4 · max|expected|` per tensor (the bound; R1 alone only needed 1e-3).
//! Rounding differences of the f32 convolutions are ~1e-7 relative; a wrong weight, sign, mean or
//! chunk selection changes a term or gradient by ≥1e-2 relative. Adam's first steps move each
//! weight by about ±lr·sign(g), so `after` tensors also check that no gradient changed sign.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use sae_model::checkpoint::{Net, remap_checkpoint};
use sae_model::native::f32_view_data;
use sae_model::{Discriminator, GeneratorNoise, PatchDiscriminator, SwappingAutoencoder};
use sae_nn::{CropDraws, PatchSampler, PatchSamplerConfig, collect_params};
use sae_train::{
    Adam, AdamConfig, LossConfig, Losses, Nets, Randomness, discriminator_losses, generator_losses,
    r1_losses,
};
use safetensors::{Dtype, SafeTensors};

const RTOL: f32 = 1e-4;

struct Fixture {
    t: BTreeMap<String, TensorData>,
    config: serde_json::Value,
}

fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train_step.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let config = serde_json::from_str(&meta.metadata().as_ref().unwrap()["config"]).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st
        .tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == Dtype::F32)
        .map(|(k, v)| (k, f32_view_data(&v)))
        .collect();
    Fixture { t, config }
}

fn values(d: &TensorData) -> Vec<f32> {
    d.clone().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Replays the reference's crop draws and noise in call order.
struct Scripted {
    crops: VecDeque<CropDraws>,
    noise: VecDeque<BTreeMap<String, Tensor<4>>>,
    current: BTreeMap<String, Tensor<4>>,
}

impl Randomness for Scripted {
    fn crop_draws(&mut self, _sampler: &PatchSampler, batch: usize) -> CropDraws {
        let d = self.crops.pop_front().expect("a scripted crop draw");
        assert_eq!(d.len() % batch, 0);
        d
    }

    fn noise(&mut self) -> GeneratorNoise<'_> {
        self.current = self.noise.pop_front().expect("a scripted noise");
        GeneratorNoise::Fixed(&self.current)
    }

    fn integers(&mut self, _batch: usize, _per_image: usize, _below: usize) -> Vec<usize> {
        panic!("the official losses draw no augmentations")
    }
}

impl Fixture {
    fn tensor4(&self, key: &str, device: &Device) -> Tensor<4> {
        Tensor::from_data(self.t[key].clone(), device)
    }

    fn scripted(&self, step: &str, crops: usize, noises: usize, device: &Device) -> Scripted {
        let crops = (0..crops)
            .map(|k| {
                let get = |n: &str| values(&self.t[&format!("{step}.crops.{k}.{n}")]);
                let (flip, scale, offset) = (get("flip"), get("scale"), get("offset"));
                CropDraws {
                    flip,
                    scale: scale.chunks(2).map(|c| [c[0], c[1]]).collect(),
                    offset: offset.chunks(2).map(|c| [c[0], c[1]]).collect(),
                }
            })
            .collect();
        let noise = (0..noises)
            .map(|k| {
                let prefix = format!("{step}.noise.{k}.");
                self.t
                    .iter()
                    .filter_map(|(name, data)| {
                        name.strip_prefix(&prefix)
                            .map(|p| (p.to_string(), Tensor::from_data(data.clone(), device)))
                    })
                    .collect()
            })
            .collect();
        Scripted {
            crops,
            noise,
            current: BTreeMap::new(),
        }
    }
}

fn close(name: &str, actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "{name}: element count");
    let emax = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = actual
        .iter()
        .zip(expected)
        .fold(0f32, |m, (a, e)| m.max((a - e).abs()));
    let rel = worst / emax.max(1e-12);
    assert!(
        worst <= RTOL * emax.max(1e-6),
        "{name}: max abs err {worst:e}, max |expected| {emax:e}"
    );
    rel
}

fn check_losses(step: &str, losses: &Losses, fx: &Fixture) {
    for (name, value) in &losses.terms {
        let rel = close(
            &format!("{step}.loss.{name}"),
            &values(&value.clone().into_data()),
            &values(&fx.t[&format!("{step}.loss.{name}")]),
        );
        println!("{step:>3} loss {name:12} rel err {rel:.1e}");
    }
}

/// Compares `{step}.{kind}.<official key>` for every parameter of `net`; returns the worst
/// relative error.
fn check_params<M: Module>(
    step: &str,
    kind: &str,
    net_id: Net,
    net: &M,
    grads: Option<&Gradients>,
    official: &BTreeMap<(Net, String), String>,
    fx: &Fixture,
) -> f32 {
    let mut worst = 0f32;
    for p in collect_params(net, grads) {
        let key = &official[&(net_id, p.path.clone())];
        let expected = values(&fx.t[&format!("{step}.{kind}.{key}")]);
        let actual = match (kind, &p.grad) {
            ("grad", Some(g)) => values(g),
            ("grad", None) => vec![0.0; expected.len()],
            _ => values(&p.value),
        };
        worst = worst.max(close(&format!("{step}.{kind}.{key}"), &actual, &expected));
    }
    println!("{step:>3} {kind:5} {net_id:?}: worst rel err {worst:.1e}");
    worst
}

/// Checks a D-optimizer step (the D step or the R1 step): its terms, the gradients of D and
/// Dpatch, then the parameters after the Adam update; returns the updated networks.
fn check_d_update(
    step: &str,
    losses: &Losses,
    d: Discriminator,
    dp: PatchDiscriminator,
    opt_d: &mut Adam,
    official: &BTreeMap<(Net, String), String>,
    fx: &Fixture,
) -> (Discriminator, PatchDiscriminator) {
    check_losses(step, losses, fx);
    let grads = losses.total().backward();
    check_params(step, "grad", Net::D, &d, Some(&grads), official, fx);
    check_params(step, "grad", Net::Dpatch, &dp, Some(&grads), official, fx);
    opt_d.begin_step();
    let d = opt_d.update("d", d, &grads);
    let dp = opt_d.update("dpatch", dp, &grads);
    check_params(step, "after", Net::D, &d, None, official, fx);
    check_params(step, "after", Net::Dpatch, &dp, None, official, fx);
    (d, dp)
}

fn run_on(device: &Device) {
    let fx = fixture();
    let sd: BTreeMap<String, TensorData> =
        fx.t.iter()
            .filter_map(|(k, v)| k.strip_prefix("sd.").map(|k| (k.to_string(), v.clone())))
            .collect();
    let official = remap_checkpoint(&sd).unwrap().official;
    let (model, _) = SwappingAutoencoder::from_official_tensors(&sd, device).unwrap();
    let (mut e, mut g) = (model.e, model.g);
    let (mut d, mut dp) = (model.d.unwrap(), model.dpatch.unwrap());
    let c = &fx.config;
    let cfg = LossConfig::new()
        .with_num_gpus(c["num_chunks"].as_u64().unwrap() as usize)
        .with_patch_use_aggregation(c["patch_use_aggregation"].as_bool().unwrap());
    let sampler = PatchSamplerConfig::new()
        .with_patch_size(c["patch_size"].as_u64().unwrap() as usize)
        .with_num_crops(c["patch_num_crops"].as_u64().unwrap() as usize)
        .init()
        .unwrap();
    let mut opt_g = Adam::new(AdamConfig::new());
    let mut opt_d = Adam::new(AdamConfig::new().lazy(cfg.r1_once_every));

    // 1. D step.
    let mut rnd = fx.scripted("d", 3, 2, device);
    let nets = Nets {
        e: &e,
        g: &g,
        d: &d,
        dpatch: &dp,
    };
    let losses =
        discriminator_losses(nets, fx.tensor4("d.real", device), &cfg, &sampler, &mut rnd).unwrap();
    (d, dp) = check_d_update("d", &losses, d, dp, &mut opt_d, &official, &fx);

    // 2. R1 on the same batch.
    let mut rnd = fx.scripted("r1", 2, 0, device);
    let nets = Nets {
        e: &e,
        g: &g,
        d: &d,
        dpatch: &dp,
    };
    let losses = r1_losses(
        nets,
        fx.tensor4("r1.real", device),
        &cfg,
        &sampler,
        &mut rnd,
    )
    .unwrap();
    (d, dp) = check_d_update("r1", &losses, d, dp, &mut opt_d, &official, &fx);

    // 3. G step on a fresh batch.
    let mut rnd = fx.scripted("g", 2, 2, device);
    let nets = Nets {
        e: &e,
        g: &g,
        d: &d,
        dpatch: &dp,
    };
    let losses =
        generator_losses(nets, fx.tensor4("g.real", device), &cfg, &sampler, &mut rnd).unwrap();
    check_losses("g", &losses, &fx);
    let grads = losses.total().backward();
    check_params("g", "grad", Net::E, &e, Some(&grads), &official, &fx);
    check_params("g", "grad", Net::G, &g, Some(&grads), &official, &fx);
    opt_g.begin_step();
    g = opt_g.update("g", g, &grads);
    e = opt_g.update("e", e, &grads);
    check_params("g", "after", Net::E, &e, None, &official, &fx);
    check_params("g", "after", Net::G, &g, None, &official, &fx);
}

#[cfg(feature = "flex")]
#[test]
fn one_step_parity_flex() {
    run_on(&Device::flex().autodiff());
}

#[cfg(feature = "ndarray")]
#[test]
#[allow(deprecated)]
fn one_step_parity_ndarray() {
    run_on(&Device::ndarray().autodiff());
}
