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

/// Kills the child process when dropped, however the test ends.
pub struct Guard(pub std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `sae serve --port 0 ARGS` and returns it with its address (`http://127.0.0.1:N/`).
pub fn serve(args: &[&str]) -> (Guard, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_sae"))
        .arg("serve")
        .args(args)
        .args(["--port", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sae serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let guard = Guard(child);
    let url = line
        .trim()
        .strip_prefix("serving on ")
        .unwrap_or_else(|| panic!("sae serve printed {line:?} first"))
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    (guard, url)
}

/// `sae pca` of `ckpt` over the images in `data` into `out`, at 128 px, with `extra` flags.
pub fn pca(ckpt: &str, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "pca",
        "--checkpoint",
        ckpt,
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--load-size",
        "128",
    ];
    args.extend(extra);
    sae(&args)
}
