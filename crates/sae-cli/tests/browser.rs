//! `sae serve` in a real browser (Debian's `chromium` driven through `chromedriver`, installed by
//! `.ci/run`): upload two images, wait for the swap, move the α slider with the keyboard, paint
//! a region with the pointer, apply a PCA edit, and check each result shown in the page against
//! the library API bit for bit. Screenshots go to `target/editor-screenshots/`.
//!
//! Without `/usr/bin/chromium` and `/usr/bin/chromedriver` the test prints why and passes.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use burn::tensor::{Device, Tensor, TensorData};
use common::{Guard, asset, checkpoint, stderr, workdir};
use sae_model::image_io::{self, Preprocess};
use sae_model::inference::{Decoder, NoiseMode, images_to_tensor, mix_textures, tensor_to_images};
use sae_model::{CodePca, SwappingAutoencoder};
use sae_nn::Style;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const SIZE: usize = 128;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A WebDriver session over plain HTTP.
struct Browser {
    base: String,
    session: String,
}

impl Browser {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{}", self.base, self.session, path);
        let resp = match body {
            Some(b) => ureq::request(method, &url).send_json(b),
            None => ureq::request(method, &url).call(),
        };
        let v: Value = match resp {
            Ok(r) => r.into_json().unwrap(),
            Err(ureq::Error::Status(code, r)) => {
                panic!(
                    "webdriver {method} {path}: {code} {}",
                    r.into_string().unwrap()
                )
            }
            Err(e) => panic!("webdriver {method} {path}: {e}"),
        };
        v["value"].clone()
    }

    fn open(base: &str) -> Browser {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": [
                "--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,900"]}}}});
        let v: Value = ureq::post(&format!("{base}/session"))
            .send_json(caps)
            .unwrap()
            .into_json()
            .unwrap();
        Browser {
            base: base.to_string(),
            session: v["value"]["sessionId"].as_str().unwrap().to_string(),
        }
    }

    fn script(&self, js: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": args})),
        )
    }

    fn find(&self, testid: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": format!("[data-testid={testid}]")})),
        );
        v.as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    fn keys(&self, testid: &str, text: &str) {
        let el = self.find(testid);
        self.call(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({"text": text})),
        );
    }

    fn renders(&self) -> u64 {
        self.script(
            "return +document.querySelector('[data-testid=result]').dataset.renders",
            json!([]),
        )
        .as_u64()
        .unwrap()
    }

    /// Waits until the page has shown more than `after` results and none is pending.
    fn wait_render(&self, after: u64) -> u64 {
        let start = Instant::now();
        loop {
            let idle = self
                .script(
                    "return !window.editor.busy && !window.editor.again",
                    json!([]),
                )
                .as_bool()
                .unwrap();
            let n = self.renders();
            if n > after && idle {
                return n;
            }
            let status = self.script(
                "return document.querySelector('[data-testid=status]').textContent",
                json!([]),
            );
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "no new result after {after}; status: {status}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The PNG bytes the result image shows.
    fn result_png(&self) -> Vec<u8> {
        let js = "const done = arguments[arguments.length - 1];
            fetch(document.querySelector('[data-testid=result]').src)
              .then(r => r.arrayBuffer()).then(b => {
                const u = new Uint8Array(b); let s = '';
                for (let i = 0; i < u.length; i++) s += String.fromCharCode(u[i]);
                done(btoa(s)); });";
        let v = self.call(
            "POST",
            "/execute/async",
            Some(json!({"script": js, "args": []})),
        );
        B64.decode(v.as_str().unwrap()).unwrap()
    }

    fn screenshot(&self, path: &Path) {
        let v = self.call("GET", "/screenshot", None);
        std::fs::write(path, B64.decode(v.as_str().unwrap()).unwrap()).unwrap();
    }

    /// A pointer drag across the mask canvas, in canvas pixels from its centre.
    fn drag(&self, testid: &str, points: &[(i64, i64)]) {
        let el = self.find(testid);
        let origin = json!({"element-6066-11e4-a52e-4f735466cecf": el});
        let mut actions = vec![
            json!({"type": "pointerMove", "origin": origin, "x": points[0].0, "y": points[0].1}),
        ];
        actions.push(json!({"type": "pointerDown", "button": 0}));
        for &(x, y) in &points[1..] {
            actions.push(
                json!({"type": "pointerMove", "origin": origin, "x": x, "y": y, "duration": 50}),
            );
        }
        actions.push(json!({"type": "pointerUp", "button": 0}));
        self.call(
            "POST",
            "/actions",
            Some(json!({"actions": [{"type": "pointer", "id": "mouse",
                "parameters": {"pointerType": "mouse"}, "actions": actions}]})),
        );
    }
}

/// What the library API gives for the same inputs as the page (`docs/editor.md`).
struct Library {
    model: SwappingAutoencoder,
    pca: CodePca,
    device: Device,
}

impl Library {
    fn image(&self, path: &str) -> Tensor<4> {
        let rgb = image_io::decode_rgb(&std::fs::read(path).unwrap(), Path::new(path)).unwrap();
        let img = image_io::test_transform(&rgb, Preprocess::resize(SIZE));
        images_to_tensor(&[img], &self.device).unwrap()
    }

    fn render(
        &self,
        structure: &str,
        texture: &str,
        alpha: f32,
        mask: Option<&[u8]>,
        structure_edit: Option<(usize, f32)>,
    ) -> Vec<u8> {
        let s = self.model.e.forward(self.image(structure));
        let t = self.model.e.forward(self.image(texture));
        let mask = mask.map(|m| {
            let v: Vec<f32> = m.iter().map(|&b| f32::from(b) / 255.0).collect();
            Tensor::<4>::from_data(TensorData::new(v, [1, 1, SIZE, SIZE]), &self.device)
        });
        let mut structure = s.structure.clone();
        if let Some((c, strength)) = structure_edit {
            let region = mask
                .clone()
                .unwrap_or_else(|| Tensor::ones([1, 1, SIZE, SIZE], &self.device));
            structure = self
                .pca
                .structure
                .edit_structure(structure, c, strength, region)
                .unwrap();
        }
        let mix = mix_textures(s.texture.clone(), t.texture, alpha);
        let mut decoder = Decoder::new(&self.model, NoiseMode::Fixed(0));
        let out = match mask {
            Some(m) => decoder.decode_masked(structure, mix, s.texture, m),
            None => decoder.decode(structure, Style::Global(mix)),
        };
        let img = tensor_to_images(out).unwrap().remove(0);
        image_io::encode_png(&image_io::to_rgb8(&img).unwrap()).unwrap()
    }
}

fn pixels(png: &[u8]) -> Vec<f32> {
    image::load_from_memory(png)
        .unwrap()
        .to_rgb8()
        .into_raw()
        .into_iter()
        .map(f32::from)
        .collect()
}

/// Mean absolute difference of two RGB images over the columns `cols`.
fn mean_diff(a: &[f32], b: &[f32], cols: std::ops::Range<usize>) -> f32 {
    let mut sum = 0.0;
    let mut n = 0;
    for y in 0..SIZE {
        for x in cols.clone() {
            for c in 0..3 {
                let i = (y * SIZE + x) * 3 + c;
                sum += (a[i] - b[i]).abs();
                n += 1;
            }
        }
    }
    sum / n as f32
}

#[test]
fn the_editor_in_a_browser_matches_the_library() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        println!(
            "SKIP: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)"
        );
        return;
    }
    let dir = workdir("browser");
    let ckpt = checkpoint(&dir);
    let data = dir.join("images");
    sae_data::write_synthetic_folder(&data, 12, SIZE, 3).unwrap();
    let pca_path = dir.join("pca.safetensors");
    let o = common::pca(&ckpt, &data, &pca_path, &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    let pca_arg = pca_path.to_string_lossy().into_owned();
    let (_server, url) = common::serve(&[
        "--checkpoint",
        &ckpt,
        "--pca",
        &pca_arg,
        "--load-size",
        "128",
    ]);

    let port = free_port();
    let driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _driver = Guard(driver);
    let base = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while ureq::get(&format!("{base}/status")).call().is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/editor-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    let b = Browser::open(&base);
    b.call("POST", "/url", Some(json!({"url": url})));
    let device = Device::flex();
    let lib = Library {
        model: SwappingAutoencoder::load(Path::new(&ckpt), &device)
            .unwrap()
            .0,
        pca: CodePca::load(&pca_path).unwrap(),
        device,
    };
    // chromedriver wants canonical file paths.
    let canonical = |name: &str| {
        std::fs::canonicalize(asset(name))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let (a, c) = (canonical("scene_a.png"), canonical("scene_b.png"));

    // 1. Upload both images: the swap (α = 1).
    b.keys("structure-input", &a);
    b.keys("texture-input", &c);
    let n = b.wait_render(0);
    let swap = b.result_png();
    assert_eq!(
        swap,
        lib.render(&a, &c, 1.0, None, None),
        "the swap differs from the library's"
    );
    b.screenshot(&shots.join("1-swap.png"));

    // 2. The α slider, by keyboard: Home is α = 0, the reconstruction.
    b.keys("alpha", "\u{E011}");
    let n = b.wait_render(n);
    let rec = b.result_png();
    assert_ne!(rec, swap, "moving α did not change the result");
    assert_eq!(rec, lib.render(&a, &c, 0.0, None, None));
    b.screenshot(&shots.join("2-reconstruction.png"));

    // 3. Back to α = 1 (End), then paint the left quarter: the texture changes only there.
    b.keys("alpha", "\u{E010}");
    let n = b.wait_render(n);
    b.drag(
        "mask-canvas",
        &[(-110, -110), (-110, 110), (-80, 110), (-80, -110)],
    );
    let n = b.wait_render(n);
    let masked = b.result_png();
    let mask = B64
        .decode(b.script("return maskB64()", json!([])).as_str().unwrap())
        .unwrap();
    let painted = mask.iter().filter(|&&v| v == 255).count();
    assert!(painted > SIZE * SIZE / 10, "only {painted} pixels painted");
    assert_eq!(masked, lib.render(&a, &c, 1.0, Some(&mask), None));
    let (m, r, s) = (pixels(&masked), pixels(&rec), pixels(&swap));
    // Inside the region (the painted left columns) the result moves toward the swap; far
    // outside it (the right half) it stays near the reconstruction: the generator's
    // convolutions spread a region's texture a few code cells, so "near", not "equal".
    let inside = 4..SIZE / 5;
    let outside = SIZE / 2..SIZE;
    let (in_rec, out_rec) = (
        mean_diff(&m, &r, inside.clone()),
        mean_diff(&m, &r, outside.clone()),
    );
    let out_swap = mean_diff(&s, &r, outside);
    println!(
        "mean |masked − reconstruction|: inside {in_rec:.2}, far outside {out_rec:.2} (the unmasked swap there: {out_swap:.2})"
    );
    assert!(
        in_rec > 2.0 * out_rec,
        "the region did not localise the change"
    );
    assert!(
        out_rec < 0.5 * out_swap,
        "outside the region the texture changed as much as a swap"
    );
    b.screenshot(&shots.join("3-region.png"));

    // 4. A structure edit along the first principal direction, inside the region.
    b.keys("pca-component", "\u{E015}"); // ArrowDown: "component 1"
    b.keys("pca-strength", "\u{E010}"); // End: +5 standard deviations
    let _ = b.wait_render(n);
    let edited = b.result_png();
    assert_ne!(edited, masked, "the PCA edit did not change the result");
    assert_eq!(edited, lib.render(&a, &c, 1.0, Some(&mask), Some((0, 5.0))));
    b.screenshot(&shots.join("4-pca-edit.png"));
    b.call("DELETE", "", None);
    std::fs::remove_dir_all(&dir).unwrap();
}
