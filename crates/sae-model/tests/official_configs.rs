//! Every official configuration (the 13 of `shared/spec/state-dict-shapes.json`, keys and shapes
//! copied into `tests/data/official_state_dicts.json`) is understood from its keys and shapes
//! alone: the inferred configuration equals the one the official options give, and every key
//! maps onto a parameter of exactly that shape (modulated weights squeezed), covering every
//! parameter. Parameters stay lazy, so no weights are allocated.

use std::collections::BTreeMap;

use burn::tensor::Device;
use sae_model::checkpoint::{Net, ShapeMap, key_targets};
use sae_model::{ModelConfig, SwappingAutoencoderConfig};
use sae_nn::param_shapes;

fn options(o: &serde_json::Value) -> SwappingAutoencoderConfig {
    let u = |k: &str| o[k].as_u64().unwrap() as usize;
    let f = |k: &str| o[k].as_f64().unwrap();
    SwappingAutoencoderConfig::new()
        .with_crop_size(u("crop_size"))
        .with_patch_size(u("patch_size"))
        .with_global_code_ch(u("global_code_ch"))
        .with_spatial_code_ch(u("spatial_code_ch"))
        .with_net_e_scale_capacity(f("netE_scale_capacity"))
        .with_net_e_num_downsampling_sp(u("netE_num_downsampling_sp"))
        .with_net_e_num_downsampling_gl(u("netE_num_downsampling_gl"))
        .with_net_e_nc_steepness(f("netE_nc_steepness"))
        .with_net_g_scale_capacity(f("netG_scale_capacity"))
        .with_net_g_num_base_resnet_layers(u("netG_num_base_resnet_layers"))
        .with_net_g_use_noise(o["netG_use_noise"].as_bool().unwrap())
        .with_net_d_scale_capacity(f("netD_scale_capacity"))
        .with_net_patch_d_scale_capacity(f("netPatchD_scale_capacity"))
        .with_net_patch_d_max_nc(u("netPatchD_max_nc"))
        .with_use_antialias(o["use_antialias"].as_bool().unwrap())
}

#[test]
fn every_official_configuration_is_inferred_and_mapped_from_its_shapes() {
    let data: serde_json::Value =
        serde_json::from_str(include_str!("data/official_state_dicts.json")).unwrap();
    let device = Device::default();
    let mut checked = 0;
    for (name, entry) in data
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.starts_with('_'))
    {
        let shapes: ShapeMap = entry["state_dict"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                let shape = kv[1]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize);
                (kv[0].as_str().unwrap().to_string(), shape.collect())
            })
            .collect();
        let inferred =
            ModelConfig::from_official(&shapes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = ModelConfig::from(&options(&entry["options"]));
        assert_eq!(inferred, expected, "{name}: inferred configuration");

        let targets = key_targets(&shapes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut mapped: BTreeMap<(Net, String), Vec<usize>> = BTreeMap::new();
        for (key, target) in targets {
            if let Some((net, path)) = target {
                let mut s = shapes[&key].clone();
                if s.len() == 5 {
                    s.remove(0);
                }
                assert!(
                    mapped.insert((net, path), s).is_none(),
                    "{name}: {key} maps onto a taken path"
                );
            }
        }
        let model = inferred.init(&device);
        let mut params: Vec<(Net, (String, Vec<usize>))> = Vec::new();
        params.extend(param_shapes(&model.e).into_iter().map(|p| (Net::E, p)));
        params.extend(param_shapes(&model.g).into_iter().map(|p| (Net::G, p)));
        params.extend(
            param_shapes(model.d.as_ref().unwrap())
                .into_iter()
                .map(|p| (Net::D, p)),
        );
        params.extend(
            param_shapes(model.dpatch.as_ref().unwrap())
                .into_iter()
                .map(|p| (Net::Dpatch, p)),
        );
        assert_eq!(
            params.len(),
            mapped.len(),
            "{name}: parameter count vs mapped keys"
        );
        for (net, (path, shape)) in params {
            let found = mapped.get(&(net, path.clone()));
            assert_eq!(found, Some(&shape), "{name}: {net:?} `{path}`");
        }
        checked += 1;
    }
    assert_eq!(checked, 13);
}
