//! Official checkpoint import: the one place where official `state_dict` keys become parameter
//! paths of this crate's networks, and where a model's configuration is read from the tensor
//! shapes (official `models/base_model.py::save`; rules in `docs/checkpoints.md`).
//!
//! # Key-remap table
//!
//! | official key (prefix) | here |
//! |---|---|
//! | `*.Conv.*`, `*.Act.*` (ConvLayer sub-modules) | `*.conv.*`, `*.act.*` |
//! | `E.FromRGB` | `from_rgb` |
//! | `E.DownToSpatialCode.ResBlockDownBy{2^i}` | `down_to_spatial_code.{i}` |
//! | `E.ToSpatialCode.{k}` | `to_spatial_code.{k}` |
//! | `E.DownToGlobalCode.ConvLayerDownBy{2^(sp+j)}` | `down_to_global_code.{j}` |
//! | `E.ToGlobalCode.0` | `to_global_code` |
//! | `G.SpatialCodeModulation` | `spatial_code_modulation` |
//! | `G.HeadResnetBlock{i}` | `head.{i}` |
//! | `G.UpsamplingResBlock{2^(4+j)}` | `up.{j}` |
//! | `G.ToRGB` | `to_rgb` |
//! | `D.stylegan2_D.convs.0` | `from_rgb` |
//! | `D.stylegan2_D.convs.{NxN, 1 … 6}` (resolution `2^i`, highest first) | `blocks.{k}` |
//! | `D.stylegan2_D.final_conv`, `final_linear.{0,1}` | `final_conv`, `final_linear.{0,1}` |
//! | `Dpatch.convs.0` | `from_rgb` |
//! | `Dpatch.convs.{NxN, 1 … 4}` (highest resolution first) | `blocks.{k}` |
//! | `Dpatch.convs.5`, `Dpatch.convs.6` | `extra_block`, `final_conv` |
//! | `Dpatch.pairlinear.{i}` | `pairlinear.{i}` |
//!
//! Tensor rules: 5-D modulated weights `[1, out, in, k, k]` lose the leading 1; the buffers
//! (`*.Blur.kernel`, `*.conv.blur.kernel`, `G.ToRGB.upsample.kernel`, `num_discriminator_iters`)
//! are checked against the recomputed FIR kernels and dropped.

use std::collections::BTreeMap;

use burn::tensor::TensorData;
use sae_nn::FirKernel;
use thiserror::Error;

use crate::discriminator::{DiscriminatorConfig, PatchDiscriminatorConfig};
use crate::encoder::EncoderConfig;
use crate::generator::GeneratorConfig;

/// Which network a key belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Net {
    /// The encoder `E.*`.
    E,
    /// The generator `G.*`.
    G,
    /// The image discriminator `D.stylegan2_D.*`.
    D,
    /// The patch discriminator `Dpatch.*`.
    Dpatch,
}

/// A checkpoint that cannot be turned into this crate's networks.
#[derive(Debug, Error, PartialEq)]
pub enum CheckpointError {
    /// The shapes describe a configuration no network can be built from.
    #[error("the inferred configuration is invalid: {0}")]
    Config(crate::config::ConfigError),
    /// A key the importer does not know.
    #[error("unknown checkpoint key `{key}`")]
    UnknownKey {
        /// The official key.
        key: String,
    },
    /// A key needed to infer the configuration is absent.
    #[error("missing checkpoint key `{key}` (needed to infer {what})")]
    MissingKey {
        /// The official key.
        key: String,
        /// What it is needed for.
        what: &'static str,
    },
    /// A tensor has an impossible shape.
    #[error("checkpoint key `{key}` has shape {found:?}, expected {expected}")]
    BadShape {
        /// The official key.
        key: String,
        /// Its shape.
        found: Vec<usize>,
        /// What was expected.
        expected: String,
    },
    /// A FIR-kernel buffer differs from the kernel the network uses.
    #[error("buffer `{key}` holds {found:?}, not the FIR kernel {expected:?}")]
    KernelMismatch {
        /// The official key.
        key: String,
        /// Its values.
        found: Vec<f32>,
        /// The recomputed values.
        expected: Vec<f32>,
    },
    /// Neither E nor G is in the file.
    #[error("the checkpoint holds no `{0}.*` keys; inference needs E and G")]
    MissingNetwork(&'static str),
}

/// A checkpoint's tensors, by official key, as plain data.
pub type OfficialTensors = BTreeMap<String, TensorData>;

/// A checkpoint's tensor shapes, by official key: all the configuration is inferred from.
pub type ShapeMap = BTreeMap<String, Vec<usize>>;

/// The shapes of a checkpoint's tensors.
pub fn shapes(tensors: &OfficialTensors) -> ShapeMap {
    tensors.iter().map(|(k, t)| (k.clone(), shape(t))).collect()
}

fn shape(t: &TensorData) -> Vec<usize> {
    t.shape().to_vec()
}

fn dim(
    shapes: &ShapeMap,
    key: &str,
    axis: usize,
    what: &'static str,
) -> Result<usize, CheckpointError> {
    let s = shapes.get(key).ok_or_else(|| CheckpointError::MissingKey {
        key: key.to_string(),
        what,
    })?;
    s.get(axis)
        .copied()
        .ok_or_else(|| CheckpointError::BadShape {
            key: key.to_string(),
            found: s.clone(),
            expected: format!("at least {} dimensions", axis + 1),
        })
}

/// Numbers `n` such that `prefix{n}suffix` is a key (e.g. every `ResBlockDownBy{n}`).
fn numbered<V>(tensors: &BTreeMap<String, V>, prefix: &str) -> Vec<usize> {
    let mut out: Vec<usize> = tensors
        .keys()
        .filter_map(|k| k.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next())
        .filter_map(|n| n.parse().ok())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Block names of a StyleGAN2-style `convs` list: `NxN` names and small integers, mapped to
/// their resolution exponent `i` (`NxN` → log2 N; integer `n` → `base − n`), highest first.
fn block_exponents<V>(
    tensors: &BTreeMap<String, V>,
    prefix: &str,
    base: usize,
) -> Vec<(String, usize)> {
    let mut names: Vec<(String, usize)> = tensors
        .keys()
        .filter_map(|k| k.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next())
        // `convs.0` is the stem (from RGB), not a block.
        .filter(|name| *name != "0")
        .filter_map(|name| {
            let i = if let Some((a, _)) = name.split_once('x') {
                a.parse::<usize>().ok()?.checked_ilog2()? as usize
            } else {
                base.checked_sub(name.parse::<usize>().ok()?)?
            };
            Some((name.to_string(), i))
        })
        .collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.1));
    names.dedup();
    names
}

/// The FIR taps a kernel buffer of side `k` stands for.
fn taps_of_side(k: usize, key: &str, found: &[usize]) -> Result<Vec<f32>, CheckpointError> {
    match k {
        1 => Ok(vec![1.0]),
        3 => Ok(vec![1.0, 2.0, 1.0]),
        4 => Ok(vec![1.0, 3.0, 3.0, 1.0]),
        _ => Err(CheckpointError::BadShape {
            key: key.to_string(),
            found: found.to_vec(),
            expected: "a 1×1, 3×3 or 4×4 FIR kernel".into(),
        }),
    }
}

fn blur_of(shapes: &ShapeMap, key: &str, default: &[f32]) -> Result<Vec<f32>, CheckpointError> {
    match shapes.get(key) {
        Some(s) => taps_of_side(s.first().copied().unwrap_or(0), key, s),
        None => Ok(default.to_vec()),
    }
}

/// The encoder's configuration, read from `E.*` shapes.
pub fn infer_encoder(t: &ShapeMap) -> Result<EncoderConfig, CheckpointError> {
    let sp = numbered(t, "E.DownToSpatialCode.ResBlockDownBy").len();
    let gl_names = numbered(t, "E.DownToGlobalCode.ConvLayerDownBy");
    let mut channels = vec![dim(t, "E.FromRGB.Conv.weight", 0, "the encoder width")?];
    for i in 0..sp {
        let key = format!(
            "E.DownToSpatialCode.ResBlockDownBy{}.conv2.Conv.weight",
            1 << i
        );
        channels.push(dim(t, &key, 0, "the encoder widths")?);
    }
    for j in 0..gl_names.len() {
        let key = format!(
            "E.DownToGlobalCode.ConvLayerDownBy{}.Conv.weight",
            1 << (sp + j)
        );
        channels.push(dim(t, &key, 0, "the texture-branch widths")?);
    }
    let blur = blur_of(
        t,
        "E.DownToSpatialCode.ResBlockDownBy1.conv2.Blur.kernel",
        &[1.0, 2.0, 1.0],
    )?;
    Ok(EncoderConfig::new(
        channels,
        sp,
        dim(
            t,
            "E.ToSpatialCode.1.Conv.bias",
            0,
            "the structure-code width",
        )?,
        dim(t, "E.ToGlobalCode.0.bias", 0, "the texture-code width")?,
    )
    .with_blur_kernel(blur))
}

/// The generator's configuration, read from `G.*` shapes. `use_noise` cannot be read from a
/// file (the noise strengths exist either way); it is `true`, the value of every preset.
pub fn infer_generator(t: &ShapeMap) -> Result<GeneratorConfig, CheckpointError> {
    let heads = numbered(t, "G.HeadResnetBlock");
    let ups = numbered(t, "G.UpsamplingResBlock");
    let head_channels = (0..heads.len())
        .map(|i| {
            dim(
                t,
                &format!("G.HeadResnetBlock{i}.conv1.activate.bias"),
                0,
                "head widths",
            )
        })
        .collect::<Result<_, _>>()?;
    let up_channels = (0..ups.len())
        .map(|j| {
            let key = format!("G.UpsamplingResBlock{}.conv1.activate.bias", 16usize << j);
            dim(t, &key, 0, "upsampling widths")
        })
        .collect::<Result<_, _>>()?;
    let blur = blur_of(
        t,
        "G.UpsamplingResBlock16.conv1.conv.blur.kernel",
        &[1.0, 3.0, 3.0, 1.0],
    )?;
    Ok(GeneratorConfig::new(
        dim(
            t,
            "G.SpatialCodeModulation.scale.weight",
            0,
            "the structure-code width",
        )?,
        dim(
            t,
            "G.SpatialCodeModulation.scale.weight",
            1,
            "the style dimension",
        )?,
        head_channels,
        up_channels,
    )
    .with_blur_kernel(blur))
}

const D_PREFIX: &str = "D.stylegan2_D.";

/// The image discriminator's configuration, or `None` when the file has no `D.*` keys.
pub fn infer_discriminator(t: &ShapeMap) -> Result<Option<DiscriminatorConfig>, CheckpointError> {
    if !t.keys().any(|k| k.starts_with(D_PREFIX)) {
        return Ok(None);
    }
    let blocks = block_exponents(t, &format!("{D_PREFIX}convs."), 9);
    let mut channels = vec![dim(
        t,
        &format!("{D_PREFIX}convs.0.Conv.weight"),
        0,
        "D's width",
    )?];
    let mut blur = vec![1.0, 3.0, 3.0, 1.0];
    for (name, _) in &blocks {
        channels.push(dim(
            t,
            &format!("{D_PREFIX}convs.{name}.conv2.Conv.weight"),
            0,
            "D's widths",
        )?);
        blur = blur_of(
            t,
            &format!("{D_PREFIX}convs.{name}.conv2.Blur.kernel"),
            &blur,
        )?;
    }
    let key = format!("{D_PREFIX}final_linear.0.weight");
    let features = dim(t, &key, 1, "D's final map")?;
    let last = *channels.last().unwrap();
    let side =
        (1..=64)
            .find(|s| last * s * s == features)
            .ok_or_else(|| CheckpointError::BadShape {
                key: key.clone(),
                found: t[&key].clone(),
                expected: format!("[_, {last}·side²]"),
            })?;
    Ok(Some(
        DiscriminatorConfig::new(channels, side).with_blur_kernel(blur),
    ))
}

/// The patch discriminator's configuration, or `None` when the file has no `Dpatch.*` keys.
pub fn infer_patch_discriminator(
    t: &ShapeMap,
) -> Result<Option<PatchDiscriminatorConfig>, CheckpointError> {
    if !t.keys().any(|k| k.starts_with("Dpatch.")) {
        return Ok(None);
    }
    let blocks = block_exponents(t, "Dpatch.convs.", 7);
    let mut channels = vec![dim(t, "Dpatch.convs.0.Conv.weight", 0, "Dpatch's width")?];
    let mut blur = vec![1.0, 3.0, 3.0, 1.0];
    // convs.5 and convs.6 parse as exponents 2 and 1: they are the extra block and final conv.
    for (name, _) in blocks.iter().filter(|(_, i)| *i >= 3) {
        channels.push(dim(
            t,
            &format!("Dpatch.convs.{name}.conv2.Conv.weight"),
            0,
            "Dpatch's widths",
        )?);
        blur = blur_of(t, &format!("Dpatch.convs.{name}.conv2.Blur.kernel"), &blur)?;
    }
    let n = numbered(t, "Dpatch.pairlinear.").len();
    let pair_hidden = (0..n.saturating_sub(1))
        .map(|i| {
            dim(
                t,
                &format!("Dpatch.pairlinear.{i}.weight"),
                0,
                "the pair MLP",
            )
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(
        PatchDiscriminatorConfig::new(channels)
            .with_pair_hidden(pair_hidden)
            .with_blur_kernel(blur),
    ))
}

/// Maps one official key to `(network, parameter path)`, or `None` for a buffer.
fn remap(
    key: &str,
    sp: usize,
    d_blocks: &[(String, usize)],
    p_blocks: &[(String, usize)],
) -> Result<Option<(Net, String)>, CheckpointError> {
    let unknown = || CheckpointError::UnknownKey {
        key: key.to_string(),
    };
    if key == "num_discriminator_iters" || key.ends_with(".kernel") {
        return Ok(None);
    }
    let fold = |rest: &str| rest.replace(".Conv.", ".conv.").replace(".Act.", ".act.");
    let (net, path) = if let Some(rest) = key.strip_prefix("E.") {
        let path = if let Some(r) = rest.strip_prefix("FromRGB.") {
            format!("from_rgb.{r}")
        } else if let Some(r) = rest.strip_prefix("DownToSpatialCode.ResBlockDownBy") {
            let (n, r) = r.split_once('.').ok_or_else(unknown)?;
            let n: usize = n.parse().map_err(|_| unknown())?;
            format!(
                "down_to_spatial_code.{}.{r}",
                n.checked_ilog2().ok_or_else(unknown)?
            )
        } else if let Some(r) = rest.strip_prefix("ToSpatialCode.") {
            format!("to_spatial_code.{r}")
        } else if let Some(r) = rest.strip_prefix("DownToGlobalCode.ConvLayerDownBy") {
            let (n, r) = r.split_once('.').ok_or_else(unknown)?;
            let n: usize = n.parse().map_err(|_| unknown())?;
            let j = (n.checked_ilog2().ok_or_else(unknown)? as usize)
                .checked_sub(sp)
                .ok_or_else(unknown)?;
            format!("down_to_global_code.{j}.{r}")
        } else if let Some(r) = rest.strip_prefix("ToGlobalCode.0.") {
            format!("to_global_code.{r}")
        } else {
            return Err(unknown());
        };
        (Net::E, path)
    } else if let Some(rest) = key.strip_prefix("G.") {
        let path = if let Some(r) = rest.strip_prefix("SpatialCodeModulation.") {
            format!("spatial_code_modulation.{r}")
        } else if let Some(r) = rest.strip_prefix("HeadResnetBlock") {
            let (i, r) = r.split_once('.').ok_or_else(unknown)?;
            format!("head.{i}.{r}")
        } else if let Some(r) = rest.strip_prefix("UpsamplingResBlock") {
            let (n, r) = r.split_once('.').ok_or_else(unknown)?;
            let n: usize = n.parse().map_err(|_| unknown())?;
            let j = (n.checked_ilog2().ok_or_else(unknown)? as usize)
                .checked_sub(4)
                .ok_or_else(unknown)?;
            format!("up.{j}.{r}")
        } else if let Some(r) = rest.strip_prefix("ToRGB.") {
            format!("to_rgb.{r}")
        } else {
            return Err(unknown());
        };
        (Net::G, path)
    } else if let Some(rest) = key.strip_prefix(D_PREFIX) {
        let path = if let Some(r) = rest.strip_prefix("convs.") {
            let (name, r) = r.split_once('.').ok_or_else(unknown)?;
            if name == "0" {
                format!("from_rgb.{r}")
            } else {
                let k = d_blocks
                    .iter()
                    .position(|(n, _)| n == name)
                    .ok_or_else(unknown)?;
                format!("blocks.{k}.{r}")
            }
        } else if rest.starts_with("final_conv.") || rest.starts_with("final_linear.") {
            rest.to_string()
        } else {
            return Err(unknown());
        };
        (Net::D, path)
    } else if let Some(rest) = key.strip_prefix("Dpatch.") {
        let path = if let Some(r) = rest.strip_prefix("convs.") {
            let (name, r) = r.split_once('.').ok_or_else(unknown)?;
            match name {
                "0" => format!("from_rgb.{r}"),
                "5" => format!("extra_block.{r}"),
                "6" => format!("final_conv.{r}"),
                _ => {
                    let k = p_blocks
                        .iter()
                        .position(|(n, _)| n == name)
                        .ok_or_else(unknown)?;
                    format!("blocks.{k}.{r}")
                }
            }
        } else if rest.starts_with("pairlinear.") {
            rest.to_string()
        } else {
            return Err(unknown());
        };
        (Net::Dpatch, path)
    } else {
        return Err(unknown());
    };
    Ok(Some((net, fold(&format!(".{path}"))[1..].to_string())))
}

/// Checks a FIR-kernel buffer against the kernel it must hold.
fn check_kernel(key: &str, t: &TensorData) -> Result<(), CheckpointError> {
    let s = shape(t);
    if key == "num_discriminator_iters" {
        return Ok(());
    }
    if s.len() != 2 || s[0] != s[1] {
        return Err(CheckpointError::BadShape {
            key: key.to_string(),
            found: s,
            expected: "a square 2-D FIR kernel".into(),
        });
    }
    let taps = taps_of_side(s[0], key, &s)?;
    // Upsampling kernels (the modulated conv's blur and ToRGB's upsample) carry the factor² gain.
    let gain = if key.ends_with("conv.blur.kernel") || key.ends_with("upsample.kernel") {
        4.0
    } else {
        1.0
    };
    let expected = FirKernel::new(&taps).with_gain(gain).values();
    let found = t
        .try_to_vec::<f32>()
        .map_err(|_| CheckpointError::BadShape {
            key: key.to_string(),
            found: shape(t),
            expected: "float32 values".into(),
        })?;
    if found
        .iter()
        .zip(&expected)
        .any(|(a, b)| (a - b).abs() > 1e-6)
    {
        return Err(CheckpointError::KernelMismatch {
            key: key.to_string(),
            found,
            expected,
        });
    }
    Ok(())
}

/// Where each official key goes: `(network, parameter path)`, or `None` for a buffer. Needs
/// only the key names (the block numbering depends on which blocks exist).
pub fn key_targets(
    shapes: &ShapeMap,
) -> Result<BTreeMap<String, Option<(Net, String)>>, CheckpointError> {
    let sp = numbered(shapes, "E.DownToSpatialCode.ResBlockDownBy").len();
    let d_blocks = block_exponents(shapes, &format!("{D_PREFIX}convs."), 9);
    let p_blocks: Vec<_> = block_exponents(shapes, "Dpatch.convs.", 7)
        .into_iter()
        .filter(|(_, i)| *i >= 3)
        .collect();
    shapes
        .keys()
        .map(|key| Ok((key.clone(), remap(key, sp, &d_blocks, &p_blocks)?)))
        .collect()
}

/// The parameters of each network by path, ready for [`sae_nn::load_params`], plus the
/// path → official-key table for error messages.
pub struct Remapped {
    /// Tensors per network, by parameter path.
    pub nets: BTreeMap<Net, BTreeMap<String, TensorData>>,
    /// `(network, path)` → official key.
    pub official: BTreeMap<(Net, String), String>,
}

/// Applies the key-remap table and the tensor rules to a whole checkpoint.
pub fn remap_checkpoint(t: &OfficialTensors) -> Result<Remapped, CheckpointError> {
    let targets = key_targets(&shapes(t))?;
    let mut nets: BTreeMap<Net, BTreeMap<String, TensorData>> = BTreeMap::new();
    let mut official = BTreeMap::new();
    for (key, tensor) in t {
        match targets[key].clone() {
            None => check_kernel(key, tensor)?,
            Some((net, path)) => {
                let mut tensor = tensor.clone();
                let s = shape(&tensor);
                if s.len() == 5 {
                    if s[0] != 1 {
                        return Err(CheckpointError::BadShape {
                            key: key.clone(),
                            found: s,
                            expected: "[1, out, in, k, k]".into(),
                        });
                    }
                    let values =
                        tensor
                            .try_to_vec::<f32>()
                            .map_err(|_| CheckpointError::BadShape {
                                key: key.clone(),
                                found: s.clone(),
                                expected: "a float32 modulated weight".into(),
                            })?;
                    tensor = TensorData::new(values, s[1..].to_vec());
                }
                official.insert((net, path.clone()), key.clone());
                nets.entry(net).or_default().insert(path, tensor);
            }
        }
    }
    for (net, name) in [(Net::E, "E"), (Net::G, "G")] {
        if !nets.contains_key(&net) {
            return Err(CheckpointError::MissingNetwork(name));
        }
    }
    Ok(Remapped { nets, official })
}
