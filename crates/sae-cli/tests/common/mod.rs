//! What the `sae` binary tests share: running it, scratch folders, the demo images and a small
//! native checkpoint.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::Device;
use sae_model::native::save_native;
use sae_model::{EncoderConfig, GeneratorConfig, ModelConfig};

/// Runs `sae` with `args` and waits for it.
pub fn sae(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(args)
        .output()
        .expect("sae runs")
}

/// Its standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh scratch folder for the test `name`.
pub fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sae-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A demo image of `assets/images`.
pub fn asset(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets/images")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// The configuration of [`checkpoint`]: a small E+G.
pub fn small_config() -> ModelConfig {
    ModelConfig {
        encoder: EncoderConfig::new(vec![4, 8, 8, 16, 16, 16, 16], 4, 4, 16),
        generator: GeneratorConfig::new(4, 16, vec![8, 16], vec![16, 8, 8, 4]),
        discriminator: None,
        patch_discriminator: None,
    }
}

/// A small E+G checkpoint in the native format, in `dir`.
pub fn checkpoint(dir: &Path) -> String {
    let config = small_config();
    let path = dir.join("model.safetensors");
    save_native(&config.init(&Device::default()), &config, &path).unwrap();
    path.to_string_lossy().into_owned()
}

/// `sae grid` of the images in `structures` × `textures` into `out`.
pub fn grid(ckpt: &str, structures: &Path, textures: &Path, out: &Path) -> Output {
    sae(&[
        "grid",
        "--checkpoint",
        ckpt,
        "--structures",
        structures.to_str().unwrap(),
        "--textures",
        textures.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}
