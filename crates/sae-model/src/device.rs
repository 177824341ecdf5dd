//! Device names as the command line and the examples spell them: `flex`, `ndarray`, `wgpu`,
//! `wgpu:1`, `vulkan:0`, `cuda:3`. One parser, so that every binary accepts the same names and
//! names the backends it was built with when a name is wrong.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;
use thiserror::Error;

/// A backend and, for GPU backends, which device of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// Burn's Flex CPU backend (feature `flex`).
    Flex,
    /// Burn's ndarray CPU backend (feature `ndarray`).
    NdArray,
    /// wgpu's default adapter (`None`) or its `n`-th discrete GPU (feature `wgpu`).
    Wgpu(Option<usize>),
    /// Vulkan through wgpu with SPIR-V kernels: default adapter or `n`-th discrete GPU
    /// (feature `vulkan`).
    Vulkan(Option<usize>),
    /// CUDA device `n` (feature `cuda`).
    Cuda(usize),
}

/// A device name that does not parse or names a backend this build lacks.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("device `{spec}`: {problem} (this build has: {})", compiled_backends().join(", "))]
pub struct DeviceError {
    /// The name as given.
    pub spec: String,
    /// What is wrong with it.
    pub problem: String,
}

/// The backend names this build accepts.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut out = Vec::new();
    if cfg!(feature = "flex") {
        out.push("flex");
    }
    if cfg!(feature = "ndarray") {
        out.push("ndarray");
    }
    if cfg!(feature = "wgpu") {
        out.push("wgpu[:N]");
    }
    if cfg!(feature = "vulkan") {
        out.push("vulkan[:N]");
    }
    if cfg!(feature = "cuda") {
        out.push("cuda[:N]");
    }
    out
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let bad = |problem: String| DeviceError {
            spec: s.to_string(),
            problem,
        };
        let (name, index) = match s.split_once(':') {
            Some((name, i)) => match i.parse::<usize>() {
                Ok(i) if i < 64 => (name, Some(i)),
                _ => return Err(bad(format!("`{i}` is not a device index (0 to 63)"))),
            },
            None => (s, None),
        };
        let spec = match name {
            "flex" | "ndarray" if index.is_some() => {
                return Err(bad(format!(
                    "the {name} backend has one device and no index"
                )));
            }
            "flex" => DeviceSpec::Flex,
            "ndarray" => DeviceSpec::NdArray,
            "wgpu" => DeviceSpec::Wgpu(index),
            "vulkan" => DeviceSpec::Vulkan(index),
            "cuda" => DeviceSpec::Cuda(index.unwrap_or(0)),
            _ => return Err(bad("unknown backend".into())),
        };
        let compiled = match spec {
            DeviceSpec::Flex => cfg!(feature = "flex"),
            DeviceSpec::NdArray => cfg!(feature = "ndarray"),
            DeviceSpec::Wgpu(_) => cfg!(feature = "wgpu"),
            DeviceSpec::Vulkan(_) => cfg!(feature = "vulkan"),
            DeviceSpec::Cuda(_) => cfg!(feature = "cuda"),
        };
        if !compiled {
            return Err(bad(format!(
                "this build has no {name} backend (rebuild with `--features {name}`)"
            )));
        }
        Ok(spec)
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Flex => write!(f, "flex"),
            DeviceSpec::NdArray => write!(f, "ndarray"),
            DeviceSpec::Wgpu(None) => write!(f, "wgpu"),
            DeviceSpec::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            DeviceSpec::Vulkan(None) => write!(f, "vulkan"),
            DeviceSpec::Vulkan(Some(i)) => write!(f, "vulkan:{i}"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// The Burn device. Parsing checked that its backend is compiled in.
    #[allow(unreachable_patterns, unused_variables)]
    pub fn device(self) -> Device {
        match self {
            #[cfg(feature = "flex")]
            DeviceSpec::Flex => Device::flex(),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            DeviceSpec::NdArray => Device::ndarray(),
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu(i) => Device::wgpu(gpu_kind(i)),
            #[cfg(feature = "vulkan")]
            DeviceSpec::Vulkan(i) => Device::vulkan(gpu_kind(i)),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(i) => Device::cuda(i),
            other => unreachable!("DeviceSpec {other} was parsed without its backend"),
        }
    }
}

#[cfg(any(feature = "wgpu", feature = "vulkan"))]
fn gpu_kind(index: Option<usize>) -> burn::tensor::DeviceKind {
    match index {
        None => burn::tensor::DeviceKind::DefaultDevice,
        Some(i) => burn::tensor::DeviceKind::DiscreteGpu(i),
    }
}

/// Parses `name` and returns its device (see [`DeviceSpec`]).
///
/// # Errors
/// [`DeviceError`] naming the problem and the backends this build has.
pub fn parse_device(name: &str) -> Result<Device, DeviceError> {
    name.parse::<DeviceSpec>().map(DeviceSpec::device)
}

/// Tells the C allocator to keep freed memory for reuse instead of handing large blocks back to
/// the kernel; call it once at the start of a program, before the first tensor. Returns whether
/// the allocator took both settings: `false` (and nothing changed) where it is not glibc's.
///
/// Why: Flex allocates every op's output afresh. glibc serves blocks above its mmap threshold
/// (dynamic, at most 32 MiB) with `mmap` and returns them with `munmap`, so every large tensor
/// of a step costs page faults and kernel zeroing again; a church-256 swap has 33 MB
/// activations. With the threshold and the trim threshold at 1 GiB the blocks are reused:
/// the church-256 swap took 0.83–0.90× the time at batch 1 and 0.65–0.69× at batch 8, with
/// peak RSS 1.00× and 1.19×; training steps at 128 px did not change beyond the noise, and
/// church-256 training took about 45 s per schedule where a run without it took 58.6 s
/// (`docs/performance.md`, fourth round). The binaries and examples of this workspace call it; a
/// library does not change its host's allocator unasked, so applications opt in here (or set
/// `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824`).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const GIB: libc::c_int = 1 << 30;
        // SAFETY: mallopt only sets two allocator parameters; it is safe to call at any time.
        // It returns 1 when it took the value.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, GIB) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, GIB) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_freed_memory_applies_on_glibc_only() {
        assert_eq!(
            keep_freed_memory(),
            cfg!(all(target_os = "linux", target_env = "gnu"))
        );
    }

    #[test]
    fn names_round_trip_and_bad_names_are_named() {
        for s in ["flex", "wgpu", "wgpu:1", "vulkan:0", "cuda:3", "ndarray"] {
            if let Ok(spec) = s.parse::<DeviceSpec>() {
                assert_eq!(spec.to_string(), s);
            }
        }
        assert_eq!("flex".parse(), Ok(DeviceSpec::Flex));
        for (s, needle) in [
            ("metal", "unknown backend"),
            ("cuda:x", "not a device index"),
            ("wgpu:99", "not a device index"),
            ("flex:0", "no index"),
            ("", "unknown backend"),
        ] {
            let e = s.parse::<DeviceSpec>().unwrap_err();
            assert!(e.to_string().contains(needle), "{s}: {e}");
            assert!(e.to_string().contains("this build has: flex"), "{e}");
        }
    }
}
