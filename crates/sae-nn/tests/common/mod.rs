//! Test support: reading safetensors fixtures, comparing tensors, and the backends under test.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, TensorData};
use safetensors::{Dtype, SafeTensors};

/// Forward outputs must match within `FWD_ATOL + FWD_RTOL·|expected|` per element. The reference
/// runs the same f32 formulas in PyTorch; what is left is summation-order rounding of O(1)
/// values over at most a few hundred terms (≈1e-6), so 1e-5 catches any real formula error
/// (a wrong pad or scale changes values by ≥1e-2) with an order of magnitude of margin.
pub const FWD_ATOL: f32 = 1e-5;
/// See [`FWD_ATOL`].
pub const FWD_RTOL: f32 = 1e-5;
/// Gradients must match within `GRAD_RTOL · max|expected|` of each tensor: backward passes sum
/// over every output element (up to ~10⁴ terms), so rounding grows with the tensor's scale; 1e-4
/// of the tensor's max is still 100× below the error of any wrong term.
pub const GRAD_RTOL: f32 = 1e-4;

/// One fixture file: its tensors by name and its `config` metadata.
pub struct Fixture {
    pub name: String,
    pub tensors: BTreeMap<String, TensorData>,
    pub config: serde_json::Value,
}

impl Fixture {
    pub fn load(path: &Path) -> Fixture {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {path:?}: {e}"));
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("safetensors header");
        let config = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("config"))
            .map(|c| serde_json::from_str(c).expect("config metadata is JSON"))
            .unwrap_or(serde_json::Value::Null);
        let st = SafeTensors::deserialize(&bytes).expect("safetensors body");
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            assert_eq!(view.dtype(), Dtype::F32, "{path:?}: `{name}` is not f32");
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.insert(name, TensorData::new(values, view.shape().to_vec()));
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        Fixture {
            name,
            tensors,
            config,
        }
    }

    pub fn get(&self, key: &str) -> &TensorData {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("{}: no tensor `{key}`", self.name))
    }

    /// The tensors under `prefix`, with the prefix removed.
    pub fn with_prefix(&self, prefix: &str) -> BTreeMap<String, TensorData> {
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone())))
            .collect()
    }

    pub fn cfg_usize(&self, key: &str) -> usize {
        self.config[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: config `{key}` is not an integer", self.name))
            as usize
    }

    pub fn cfg_bool(&self, key: &str) -> bool {
        self.config[key]
            .as_bool()
            .unwrap_or_else(|| panic!("{}: config `{key}` is not a bool", self.name))
    }

    pub fn cfg_f32s(&self, key: &str) -> Vec<f32> {
        self.config[key]
            .as_array()
            .unwrap_or_else(|| panic!("{}: config `{key}` is not a list", self.name))
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    }
}

/// The crate's own fixture folder.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `../shared/fixtures/official-tiny` beside the repository, if present.
pub fn official_tiny_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/official-tiny");
    dir.join("tiny_eg_io.safetensors").exists().then_some(dir)
}

/// The backends compiled into this test build, by name. Each parity test runs on all of them.
pub fn devices() -> Vec<(&'static str, Device)> {
    #[allow(deprecated)]
    let compiled: [Option<(&'static str, Device)>; 3] = [
        #[cfg(feature = "flex")]
        Some(("flex", Device::flex())),
        #[cfg(not(feature = "flex"))]
        None,
        #[cfg(feature = "ndarray")]
        Some(("ndarray", Device::ndarray())),
        #[cfg(not(feature = "ndarray"))]
        None,
        #[cfg(feature = "wgpu")]
        Some(("wgpu", Device::wgpu(Default::default()))),
        #[cfg(not(feature = "wgpu"))]
        None,
    ];
    compiled.into_iter().flatten().collect()
}

/// Max absolute error and the elementwise-tolerance verdict `|a − e| ≤ atol + rtol·|e|`.
pub fn max_abs_err(actual: &TensorData, expected: &TensorData) -> (f32, bool, f32) {
    assert_eq!(
        actual.shape(),
        expected.shape(),
        "shape mismatch: got {:?}, expected {:?}",
        actual.shape(),
        expected.shape()
    );
    let a = actual.try_to_vec::<f32>().unwrap();
    let e = expected.try_to_vec::<f32>().unwrap();
    let mut worst = 0.0f32;
    let mut ok = true;
    let mut emax = 0.0f32;
    for (x, y) in a.iter().zip(&e) {
        let d = (x - y).abs();
        worst = worst.max(d);
        emax = emax.max(y.abs());
        if d.is_nan() || d > FWD_ATOL + FWD_RTOL * y.abs() {
            ok = false;
        }
    }
    (worst, ok, emax)
}
