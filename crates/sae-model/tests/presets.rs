//! Every preset builds networks with exactly the official parameter counts (copied from
//! `shared/spec/state-dict-shapes.json` into `tests/data/param_counts.json`). The official counts
//! include the FIR-kernel buffers, which here are constants, so the learnable count must equal
//! the official count minus those buffers' elements (both listed in the data file). Parameters
//! are lazily initialised, so this allocates no weights.

use burn::module::Module;
use burn::tensor::Device;
use sae_model::{Preset, SwappingAutoencoderConfig};

fn expected() -> serde_json::Value {
    let text = include_str!("data/param_counts.json");
    serde_json::from_str(text).expect("param_counts.json is JSON")
}

#[test]
fn every_preset_matches_the_official_parameter_counts() {
    let device = Device::default();
    let counts = expected();
    for preset in Preset::ALL {
        let cfg = preset.config();
        let want = &counts[preset.name()];
        let got = [
            ("E", cfg.encoder().init(&device).num_params()),
            ("G", cfg.generator().init(&device).num_params()),
            ("D", cfg.discriminator().init(&device).num_params()),
            (
                "Dpatch",
                cfg.patch_discriminator().init(&device).num_params(),
            ),
        ];
        for (net, n) in got {
            let buffers = want[format!("{net}_kernel_buffer_elements")]
                .as_u64()
                .unwrap();
            assert_eq!(
                n as u64,
                want[net].as_u64().unwrap() - buffers,
                "{} {net}: learnable parameter count",
                preset.name()
            );
        }
        println!(
            "{:26} E {} G {} D {} Dpatch {}",
            preset.name(),
            got[0].1,
            got[1].1,
            got[2].1,
            got[3].1
        );
    }
}

#[test]
fn preset_names_round_trip_and_configs_serialise() {
    for preset in Preset::ALL {
        assert_eq!(Preset::from_name(preset.name()), Some(preset));
        let json = serde_json::to_string(&preset.config()).unwrap();
        let back: SwappingAutoencoderConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, preset.config());
    }
    assert_eq!(Preset::from_name("church"), None);
}
