//! The mutation suite: damaged inputs through the public loaders. Every truncation of the small
//! fixtures, and seeded random bit flips, byte insertions and deletions of official `.pth`
//! files, native checkpoints, images and `options.json`. For each input: no panic (a panic
//! fails the suite), bounded time and memory (a counting allocator measures the peak), and
//! either a typed error or a correct result.
//!
//! "Correct" depends on what the format can know. A native checkpoint carries a CRC-32, so
//! every damaged native file must be refused. An official `.pth` (legacy format) and a JPEG
//! carry no checksum of their data, so a flip there may load as other numbers: that is what
//! the file says, and the suite only asks that it loads without a panic, in bounded time and
//! memory. `options.json` may parse into other valid options; those must then pass or fail
//! validation by name.
//!
//! `SAE_MUTATION_SEEDS=N` runs N seeds of random mutations per file instead of the default 4
//! (the CI setting, seconds on two cores); the crash test of the CLI is
//! `crates/sae-cli/tests/crash.rs`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use sae::model::native::{read_native_bytes, save_native};
use sae::model::{
    DiscriminatorConfig, EncoderConfig, GeneratorConfig, ModelConfig, PatchDiscriminatorConfig,
    SwappingAutoencoder,
};
use sae::train::TrainOptions;

/// Counts live heap bytes and their peak, so each input's memory can be bounded.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is forwarded unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Each input may make its loader allocate at most this much beyond what was live before: the
/// inputs are at most a few hundred KB, so 64 MiB is two orders of magnitude of headroom and
/// still far below what an unchecked size field (gigabytes) would ask for.
const MAX_EXTRA_BYTES: usize = 64 << 20;

/// Each input must be handled within this time (unoptimised test build, shared 2-core machine;
/// the slowest inputs take tens of milliseconds).
const MAX_TIME: Duration = Duration::from_secs(5);

/// The allocator is process-wide: the suite's cases run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Default, Debug)]
struct Tally {
    inputs: usize,
    typed_errors: usize,
    loaded: usize,
}

impl Tally {
    /// Runs one input: `load` returns `Ok(true)` for a correct result, `Ok(false)` for a
    /// result the suite must not accept, `Err(message)` for a typed error.
    fn run(&mut self, what: &str, load: impl FnOnce() -> Result<bool, String>) {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let t0 = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(load));
        let elapsed = t0.elapsed();
        let extra = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        self.inputs += 1;
        match result {
            Err(_) => panic!("{what}: the loader panicked"),
            Ok(Ok(true)) => self.loaded += 1,
            Ok(Ok(false)) => panic!("{what}: loaded, but the result is wrong"),
            Ok(Err(msg)) => {
                assert!(!msg.is_empty(), "{what}: an error without a message");
                self.typed_errors += 1;
            }
        }
        assert!(elapsed <= MAX_TIME, "{what}: took {elapsed:?}");
        assert!(
            extra <= MAX_EXTRA_BYTES,
            "{what}: allocated {extra} bytes beyond the baseline"
        );
    }

    fn report(&self, name: &str) {
        println!(
            "{name}: {} inputs, 0 panics, {} typed errors, {} loaded",
            self.inputs, self.typed_errors, self.loaded
        );
    }
}

fn seeds() -> u64 {
    std::env::var("SAE_MUTATION_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
}

/// `count` seeded mutations of `bytes`: single bit flips, byte insertions and deletions.
fn mutations(bytes: &[u8], seed: u64, count: usize) -> Vec<(String, Vec<u8>)> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut out = Vec::new();
    for i in 0..count {
        let mut b = bytes.to_vec();
        let at = rng.random_range(0..b.len());
        let what = match i % 4 {
            0 | 1 => {
                let bit = rng.random_range(0..8);
                b[at] ^= 1 << bit;
                format!("bit {bit} of byte {at} flipped")
            }
            2 => {
                let v: u8 = rng.random();
                b.insert(at, v);
                format!("byte {v:#04x} inserted at {at}")
            }
            _ => {
                b.remove(at);
                format!("byte {at} deleted")
            }
        };
        out.push((what, b));
    }
    out
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn damaged_official_checkpoints() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut tally = Tally::default();
    let small = [
        "crates/sae-pth/tests/fixtures/pth/small_zip.pth",
        "crates/sae-pth/tests/fixtures/pth/small_legacy.pth",
        "crates/sae-pth/tests/fixtures/pth/small_zip_proto4.pth",
    ];
    for name in small {
        let bytes = std::fs::read(fixture(name)).unwrap();
        for cut in 0..bytes.len() {
            tally.run(&format!("{name} cut at {cut}"), || {
                sae::pth::read_state_dict_bytes(&bytes[..cut])
                    .map(|_| true)
                    .map_err(|e| e.to_string())
            });
        }
        for seed in 0..seeds() {
            for (what, b) in mutations(&bytes, seed, 400) {
                tally.run(&format!("{name}: {what}"), || {
                    // No checksum covers a legacy file's data: a flip may load other numbers.
                    sae::pth::read_state_dict_bytes(&b)
                        .map(|_| true)
                        .map_err(|e| e.to_string())
                });
            }
        }
    }
    // The whole official model, through the model loader (keys, shapes, widths).
    let name = "crates/sae-model/tests/fixtures/tiny_full_official.pth";
    let bytes = std::fs::read(fixture(name)).unwrap();
    let dir = scratch("official");
    let device = Device::flex();
    for seed in 0..seeds() {
        for (what, b) in mutations(&bytes, seed, 40) {
            let path = dir.join("m.pth");
            std::fs::write(&path, &b).unwrap();
            tally.run(&format!("{name}: {what}"), || {
                SwappingAutoencoder::load(&path, &device)
                    .map(|_| true)
                    .map_err(|e| e.to_string())
            });
        }
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    for _ in 0..40 {
        let cut = rng.random_range(0..bytes.len());
        let path = dir.join("cut.pth");
        std::fs::write(&path, &bytes[..cut]).unwrap();
        tally.run(
            &format!("{name} cut at {cut}"),
            || match SwappingAutoencoder::load(&path, &device) {
                Ok(_) => Ok(false),
                Err(e) => Err(e.to_string()),
            },
        );
    }
    tally.report("official .pth");
    assert!(tally.typed_errors > 0);
}

fn small_config() -> ModelConfig {
    ModelConfig {
        encoder: EncoderConfig::new(vec![4, 8, 8, 16, 16, 16, 16], 4, 4, 16),
        generator: GeneratorConfig::new(4, 16, vec![8, 16], vec![16, 8, 8, 4]),
        discriminator: Some(DiscriminatorConfig::new(vec![4, 8, 8, 8], 4)),
        patch_discriminator: Some(
            PatchDiscriminatorConfig::new(vec![4, 8, 8]).with_pair_hidden(vec![8, 8, 4]),
        ),
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sae-mutation-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn damaged_native_checkpoints_are_always_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex();
    let config = small_config();
    let path = scratch("native").join("model.safetensors");
    save_native(&config.init(&device), &config, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let mut tally = Tally::default();
    let load = |b: &[u8]| match read_native_bytes(b, &path, &device) {
        Ok(_) => Ok(false),
        Err(e) => Err(e.to_string()),
    };
    // Every truncation of the header and its first tensors, then every 97th length.
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let cuts = (0..bytes.len()).filter(|&c| c < header + 512 || c % 97 == 0);
    for cut in cuts {
        tally.run(&format!("native cut at {cut}"), || load(&bytes[..cut]));
    }
    for seed in 0..seeds() {
        for (what, b) in mutations(&bytes, seed, 800) {
            tally.run(&format!("native: {what}"), || load(&b));
        }
    }
    // The undamaged file loads.
    tally.run("native intact", || {
        read_native_bytes(&bytes, &path, &device)
            .map(|c| c.config == config)
            .map_err(|e| e.to_string())
    });
    tally.report("native .safetensors");
    assert_eq!(tally.loaded, 1, "only the intact file loads");
}

#[test]
fn damaged_images() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut tally = Tally::default();
    for name in ["rgb.png", "palette.png", "gray_alpha16.png", "photo.jpg"] {
        let path = fixture("crates/sae-model/tests/fixtures/images").join(name);
        let bytes = std::fs::read(&path).unwrap();
        let decode = |b: &[u8]| {
            sae::model::image_io::decode_rgb(b, &path)
                .map(|_| true)
                .map_err(|e| e.to_string())
        };
        let step = (bytes.len() / 400).max(1);
        for cut in (0..bytes.len()).step_by(step) {
            // PNG checks its chunks; a JPEG cut before its end marker is refused as PIL does.
            tally.run(&format!("{name} cut at {cut}"), || decode(&bytes[..cut]));
        }
        for seed in 0..seeds() {
            for (what, b) in mutations(&bytes, seed, 200) {
                // JPEG has no checksum: a flip in its entropy-coded data decodes other pixels.
                tally.run(&format!("{name}: {what}"), || decode(&b));
            }
        }
    }
    tally.report("images");
}

#[test]
fn damaged_options_json() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let opts = TrainOptions::preset("tiny", PathBuf::from("images")).unwrap();
    let json = serde_json::to_string_pretty(&opts).unwrap();
    let mut tally = Tally::default();
    let check = |b: &[u8]| -> Result<bool, String> {
        let o: TrainOptions = serde_json::from_slice(b).map_err(|e| e.to_string())?;
        sae::train::trainer::validate(&o).map_err(|e| e.to_string())?;
        // Options that parse and validate describe a model that builds.
        o.model.validate().map_err(|e| e.to_string())?;
        Ok(true)
    };
    for cut in 0..json.len() {
        tally.run(&format!("options.json cut at {cut}"), || {
            check(&json.as_bytes()[..cut])
        });
    }
    for seed in 0..seeds() {
        for (what, b) in mutations(json.as_bytes(), seed, 2000) {
            tally.run(&format!("options.json: {what}"), || check(&b));
        }
    }
    tally.report("options.json");
}
