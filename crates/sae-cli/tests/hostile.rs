//! `sae` as a hostile user drives it: outputs at device nodes, FIFOs and symlinks, duplicate
//! and out-of-range alphas, huge images and load sizes, damaged and foreign checkpoints,
//! overflowing step counts. Each one a typed error naming what is wrong (never a panic,
//! exit code 101), and nothing outside a regular file replaced.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use burn::tensor::Device;
use common::{asset, checkpoint, grid as grid_cmd, sae, small_config as config, stderr, workdir};
use sae_model::image_io::{RgbImage, save_rgb_png};
use sae_model::native::save_native;

/// A refusal: a failure exit (not a panic's 101), with `needle` in the message.
fn refused(o: &Output, needle: &str) {
    let e = stderr(o);
    assert!(!o.status.success(), "succeeded: {e}");
    assert_ne!(o.status.code(), Some(101), "panicked: {e}");
    assert!(!e.contains("panicked"), "panicked: {e}");
    assert!(e.contains(needle), "`{needle}` not in: {e}");
}

fn swap_args<'a>(ckpt: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["swap", "--checkpoint", ckpt, "--out", out];
    a.extend(extra);
    a
}

#[test]
fn outputs_never_replace_anything_but_a_regular_file() {
    let dir = workdir("outputs");
    let ckpt = checkpoint(&dir);
    let encode = |out: &str| {
        sae(&[
            "encode",
            "--checkpoint",
            &ckpt,
            "--image",
            &asset("scene_a.png"),
            "--out",
            out,
        ])
    };
    for dev in ["/dev/full", "/dev/null"] {
        refused(&encode(dev), "not a regular file");
        let meta = std::fs::metadata(dev).unwrap();
        assert!(!meta.is_file(), "{dev} was replaced by a regular file");
    }
    let fifo = dir.join("fifo");
    if Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success())
    {
        refused(&encode(fifo.to_str().unwrap()), "FIFO");
        assert!(!std::fs::metadata(&fifo).unwrap().is_file());
    }
    let target = dir.join("precious.txt");
    std::fs::write(&target, "keep me").unwrap();
    let link = dir.join("link.safetensors");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    refused(&encode(link.to_str().unwrap()), "symlink");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    // A symlinked folder is followed, and a regular file is replaced.
    let real = dir.join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, dir.join("alias")).unwrap();
    let out = dir.join("alias/codes.safetensors");
    assert!(encode(out.to_str().unwrap()).status.success());
    assert!(encode(out.to_str().unwrap()).status.success());
    assert!(real.join("codes.safetensors").is_file());
    // `convert` goes through the same writer.
    let fifo = dir.join("fifo.safetensors");
    if Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success())
    {
        refused(&sae(&["convert", &ckpt, fifo.to_str().unwrap()]), "FIFO");
    }
}

#[test]
fn alphas_and_masks_are_checked() {
    let dir = workdir("alpha");
    let ckpt = checkpoint(&dir);
    let out = dir.join("o");
    let out = out.to_str().unwrap();
    let (s, t) = (asset("scene_a.png"), asset("scene_b.png"));
    let io = ["--structure", &s, "--texture", &t];
    for alphas in ["0.5,0.5", "0.501,0.504"] {
        let mut a = swap_args(&ckpt, out, &io);
        a.extend(["--alpha", alphas, "--raw"]);
        refused(&sae(&a), "same output");
    }
    for alpha in ["-1", "2", "1e30"] {
        let mut a = swap_args(&ckpt, out, &io);
        a.extend(["--alpha", alpha]);
        refused(&sae(&a), "--extrapolate");
    }
    let mut a = swap_args(&ckpt, out, &io);
    a.extend(["--alpha", "1.5", "--extrapolate"]);
    let o = sae(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut a = swap_args(&ckpt, out, &io);
    a.extend(["--alpha", "inf", "--extrapolate"]);
    refused(&sae(&a), "finite");
    // A mask of another size than the structure image.
    let mask = dir.join("mask.png");
    save_rgb_png(&RgbImage::new(64, 48), &mask).unwrap();
    let mut a = swap_args(&ckpt, out, &io);
    a.extend(["--mask", mask.to_str().unwrap()]);
    refused(&sae(&a), "--mask");
}

#[test]
fn sizes_are_bounded() {
    let dir = workdir("sizes");
    let ckpt = checkpoint(&dir);
    let out = dir.join("o");
    let out = out.to_str().unwrap();
    let (s, t) = (asset("scene_a.png"), asset("scene_b.png"));
    let io = ["--structure", &s, "--texture", &t];
    let mut a = swap_args(&ckpt, out, &io);
    a.extend(["--load-size", "60000"]);
    refused(&sae(&a), "--load-size 60000");
    // 128 px scaled to 4096 is 16.8 Mpx, over the default budget of 1 Mpx: refused before any
    // resize, naming the flag that raises it.
    let mut a = swap_args(&ckpt, out, &io);
    a.extend(["--load-size", "4096"]);
    refused(&sae(&a), "--max-pixels");
    // A large image (3000 × 3000, 9 Mpx) is refused with its size.
    let big = dir.join("big.png");
    save_rgb_png(&RgbImage::new(3000, 3000), &big).unwrap();
    let big = big.to_str().unwrap();
    let o = sae(&[
        "encode",
        "--checkpoint",
        &ckpt,
        "--image",
        big,
        "--out",
        &format!("{out}.safetensors"),
    ]);
    refused(&o, "3008x3008");
    refused(&o, "--max-pixels");
}

#[test]
fn damaged_and_foreign_checkpoints() {
    let dir = workdir("ckpt");
    let ckpt = checkpoint(&dir);
    let bytes = std::fs::read(&ckpt).unwrap();
    // A flipped bit in the tensor data: the checksum catches it.
    let mut flipped = bytes.clone();
    let at = bytes.len() - 100;
    flipped[at] ^= 0x10;
    let path = dir.join("flipped.safetensors");
    std::fs::write(&path, &flipped).unwrap();
    refused(&sae(&["info", path.to_str().unwrap()]), "checksum");
    // A configuration that describes no model, with a valid checksum: named, not a panic.
    let mut bad = config();
    bad.generator.blur_kernel = vec![1.0, -1.0];
    let path = dir.join("bad_config.safetensors");
    save_native(&config().init(&Device::default()), &bad, &path).unwrap();
    refused(
        &sae(&["info", path.to_str().unwrap()]),
        "generator.blur_kernel",
    );
    let mut bad = config();
    bad.encoder.channels = vec![];
    save_native(&config().init(&Device::default()), &bad, &path).unwrap();
    refused(&sae(&["info", path.to_str().unwrap()]), "encoder.channels");
    // Neither format.
    let junk = dir.join("junk.pth");
    std::fs::write(&junk, [0x80u8, 0x09, 1, 2, 3]).unwrap();
    refused(&sae(&["info", junk.to_str().unwrap()]), "junk.pth");
}

#[test]
fn native_files_are_detected_by_parsing_whatever_their_first_byte() {
    // A native file whose header length's low byte is 0x80 (the pickle protocol opcode) still
    // loads: detection parses the safetensors header instead of looking at one byte.
    let dir = workdir("detect");
    let c = config();
    let model = c.init(&Device::default());
    let path = dir.join("m.safetensors");
    let mut found = false;
    for pad in 0..300 {
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("note".to_string(), "x".repeat(pad));
        sae_model::native::save_native_with_extras(&model, &c, &path, &Default::default(), &meta)
            .unwrap();
        if std::fs::read(&path).unwrap()[0] == 0x80 {
            found = true;
            break;
        }
    }
    assert!(found, "no padding made the first byte 0x80");
    let o = sae(&["info", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn overflowing_run_lengths_are_refused() {
    let dir = workdir("steps");
    let data = dir.join("images");
    sae_data::write_synthetic_folder(&data, 4, 64, 1).unwrap();
    let run = dir.join("run");
    let train = |length: &[&str]| {
        let mut a = vec!["train", "--preset", "tiny", "--batch", "4"];
        a.extend([
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ]);
        a.extend(length);
        sae(&a)
    };
    refused(&train(&["--steps", "4611686018427387905"]), "--steps");
    refused(&train(&["--kimg", "1e300"]), "--kimg");
    assert!(
        !run.join("options.json").exists(),
        "a refused run wrote its options"
    );
}

/// Waits at most a minute for `sae`; a hang is a failure, not a stuck test.
fn sae_bounded(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sae runs");
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > std::time::Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("sae {args:?} hung");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn damaged_run_folders_are_refused_on_resume() {
    let dir = workdir("rundir");
    let data = dir.join("images");
    sae_data::write_synthetic_folder(&data, 4, 64, 1).unwrap();
    let run = dir.join("run");
    // A relative --data is stored absolute, so a resume from elsewhere finds the same data.
    let o = Command::new(env!("CARGO_BIN_EXE_sae"))
        .current_dir(&dir)
        .args([
            "train", "--preset", "tiny", "--data", "images", "--out", "run",
        ])
        .args(["--steps", "2", "--batch", "4", "--workers", "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let options = std::fs::read_to_string(run.join("options.json")).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&options).unwrap();
    assert!(
        Path::new(stored["data"]["path"].as_str().unwrap()).is_absolute(),
        "{options}"
    );
    let resume = |run: &Path| {
        sae_bounded(&[
            "train",
            "--resume",
            "--out",
            run.to_str().unwrap(),
            "--steps",
            "3",
        ])
    };
    let copy = |name: &str, edit: &dyn Fn(&str) -> String| {
        let to = dir.join(name);
        std::fs::create_dir_all(to.join("checkpoints")).unwrap();
        std::fs::write(to.join("options.json"), edit(&options)).unwrap();
        to
    };
    // Values that would panic or allocate without bound later are refused by name.
    for (name, from, to, field) in [
        (
            "small_load",
            "\"load_size\": 64",
            "\"load_size\": 44",
            "load_size",
        ),
        (
            "huge_load",
            "\"load_size\": 64",
            "\"load_size\": 100000",
            "load_size",
        ),
        (
            "prefetch",
            "\"prefetch\": 2",
            "\"prefetch\": 100000000000",
            "prefetch",
        ),
        (
            "patch",
            "\"patch_size\": 32",
            "\"patch_size\": 1000",
            "patch_size",
        ),
    ] {
        assert!(options.contains(from), "{from} not in {options}");
        let r = copy(name, &|o: &str| o.replace(from, to));
        refused(&resume(&r), field);
    }
    // A FIFO or a symlink as stats.jsonl is refused, not waited on or written through.
    let r = copy("fifo", &|o: &str| o.to_string());
    if Command::new("mkfifo")
        .arg(r.join("stats.jsonl"))
        .status()
        .is_ok_and(|s| s.success())
    {
        refused(&resume(&r), "stats.jsonl");
    }
    let r = copy("symlink", &|o: &str| o.to_string());
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, "keep\n").unwrap();
    std::os::unix::fs::symlink(&victim, r.join("stats.jsonl")).unwrap();
    refused(&resume(&r), "symlink");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
    // A checkpoint of another run (same preset, same networks) is never resumed.
    let other = dir.join("other");
    let o = sae(&[
        "train",
        "--preset",
        "tiny",
        "--data",
        data.to_str().unwrap(),
    ]
    .into_iter()
    .chain([
        "--out",
        other.to_str().unwrap(),
        "--steps",
        "2",
        "--batch",
        "4",
    ])
    .chain(["--workers", "1", "--seed", "7"])
    .collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let r = copy("foreign", &|o: &str| o.to_string());
    for entry in std::fs::read_dir(other.join("checkpoints")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), r.join("checkpoints").join(entry.file_name())).unwrap();
    }
    refused(&resume(&r), "another run");
}

#[test]
fn colliding_output_names_are_refused() {
    let dir = workdir("collide");
    let ckpt = checkpoint(&dir);
    let out = dir.join("o");
    let (s, t) = (asset("scene_a.png"), asset("scene_b.png"));
    let mut a = swap_args(
        &ckpt,
        out.to_str().unwrap(),
        &["--structure", &s, "--texture", &t],
    );
    a.extend(["--alpha", "0,-0"]);
    refused(&sae(&a), "same output");
    // `a` × `b_c` and `a_b` × `c` would both write a_b_c.png.
    let (ss, tt) = (dir.join("s"), dir.join("t"));
    for (d, names) in [(&ss, ["a.png", "a_b.png"]), (&tt, ["b_c.png", "c.png"])] {
        std::fs::create_dir_all(d).unwrap();
        for n in names {
            std::fs::copy(asset("scene_a.png"), d.join(n)).unwrap();
        }
    }
    let grid = dir.join("grid.png");
    let o = grid_cmd(&ckpt, &ss, &tt, &grid);
    refused(&o, "a_b_c.png");
    // The grid's output is checked before any single image is written.
    let o = grid_cmd(&ckpt, &ss, &ss, &tt);
    refused(&o, "directory");
    assert_eq!(
        std::fs::read_dir(&tt).unwrap().count(),
        2,
        "nothing was written into --out"
    );
}

/// `sae serve` as a hostile client uses it: garbage and oversized images, unknown ids, bad
/// numbers and masks, paths in the URL. Each a 4xx answer naming the problem; the server keeps
/// serving.
#[test]
fn the_server_refuses_bad_requests() {
    let dir = workdir("serve");
    let ckpt = checkpoint(&dir);
    // Flags are checked before anything starts.
    for (flag, value, needle) in [
        ("--load-size", "100", "multiple of 16"),
        ("--load-size", "8", "--load-size 8"),
        ("--max-pixels", "999999999999", "--max-pixels"),
    ] {
        refused(
            &sae(&["serve", "--checkpoint", &ckpt, flag, value, "--port", "0"]),
            needle,
        );
    }
    refused(
        &sae(&[
            "serve",
            "--checkpoint",
            &ckpt,
            "--pca",
            "/nonexistent",
            "--port",
            "0",
        ]),
        "--pca",
    );
    let (_server, url) = common::serve(&["--checkpoint", &ckpt, "--load-size", "128"]);
    let post = |path: &str, body: &[u8]| -> (u16, String) {
        match ureq::post(&format!("{url}{}", path.trim_start_matches('/'))).send_bytes(body) {
            Ok(r) => (r.status(), String::new()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("{path}: {e}"),
        }
    };
    // Not an image; a PNG header claiming 100000 × 100000 pixels (refused before decoding).
    let (code, body) = post("/api/image", b"not an image at all");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("not"), "{body}");
    let mut huge = Vec::new();
    {
        let enc = image::codecs::png::PngEncoder::new(&mut huge);
        use image::ImageEncoder;
        enc.write_image(&[0u8; 3], 1, 1, image::ExtendedColorType::Rgb8)
            .unwrap();
    }
    // Patch the IHDR width and height (bytes 16..24) to 100000 (the CRC then fails, which a
    // decoder may notice first: either way a refusal, never an allocation of 30 GB).
    huge[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    huge[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let (code, body) = post("/api/image", &huge);
    assert_eq!(code, 422, "{body}");
    // A real upload works; then bad renders.
    let png = std::fs::read(asset("scene_a.png")).unwrap();
    let ok: serde_json::Value = ureq::post(&format!("{url}api/image"))
        .send_bytes(&png)
        .unwrap()
        .into_json()
        .unwrap();
    let id = ok["id"].as_u64().unwrap();
    for (req, needle) in [
        (
            serde_json::json!({"structure": 999, "texture": id, "alpha": 0.5}),
            "not (or no longer) loaded",
        ),
        (
            serde_json::json!({"structure": id, "texture": id, "alpha": 7.0}),
            "alpha",
        ),
        (
            serde_json::json!({"structure": id, "texture": id, "alpha": 0.5, "mask": "%%%"}),
            "base64",
        ),
        (
            serde_json::json!({"structure": id, "texture": id, "alpha": 0.5, "mask": "AAAA"}),
            "one byte per pixel",
        ),
        (
            serde_json::json!({"structure": id, "texture": id, "alpha": 0.5, "structure_edit": [0, 1.0]}),
            "no PCA",
        ),
        (serde_json::json!({"structure": id}), "render request"),
    ] {
        let (code, body) = post("/api/render", req.to_string().as_bytes());
        assert!((400..500).contains(&code), "{req}: {code} {body}");
        assert!(body.contains(needle), "{req}: {body}");
    }
    let (code, body) = post(
        "/api/similar",
        serde_json::json!({"structure": id, "point": [5000, 1], "threshold": 0.5})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("outside"), "{body}");
    // Paths never reach the file system.
    for path in [
        "/api/gallery/..%2F..%2Fetc%2Fpasswd",
        "/api/gallery/scene_z",
    ] {
        let (code, _) = post(path, b"");
        assert_eq!(code, 404, "{path}");
    }
    // Still serving.
    let r = ureq::post(&format!("{url}api/render"))
        .send_string(&serde_json::json!({"structure": id, "texture": id, "alpha": 0.0}).to_string())
        .unwrap();
    assert_eq!(r.header("content-type"), Some("image/png"));
    std::fs::remove_dir_all(&dir).unwrap();
}
