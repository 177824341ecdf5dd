//! Principal directions of structure and texture codes, for the editing the paper shows:
//! structure editing along a direction inside a region, and global texture editing.
//!
//! The method is the authors' own description (official repository, issue "How to use PCA
//! components", and the paper's §4.4): for structure codes, PCA over every location of a few
//! thousand training images (`N·H·W` vectors of `C` channels); for texture codes, PCA over the
//! images (`N` vectors of `D`). A code is edited by adding `strength · σ_i · v_i` (component
//! `v_i`, standard deviation `σ_i`): the generator renormalises codes, so strength is in units of
//! the data's own spread along that axis.
//!
//! [`CovarianceAccumulator`] streams the vectors (it keeps `dim` sums and a `dim × dim` matrix
//! of products in `f64`, never the `N·H·W × C` matrix), and the eigendecomposition is
//! `nalgebra`'s symmetric eigensolver.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use nalgebra::{DMatrix, SymmetricEigen};
use safetensors::{Dtype, SafeTensors, serialize, tensor::TensorView};
use thiserror::Error;

use crate::atomic::{WriteError, read_bounded, write_atomic};

/// The format tag in a PCA file's metadata.
pub const PCA_FORMAT: &str = "sae-pca/1";

/// The largest code dimension a PCA is computed for: a `dim × dim` `f64` matrix of 4096² is
/// 128 MiB, and the official codes have at most 2048 channels.
pub const MAX_PCA_DIM: usize = 4096;

/// Which codes a [`Pca`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcaKind {
    /// Structure codes, one `C`-vector per location.
    Structure,
    /// Texture codes, one `D`-vector per image.
    Texture,
}

impl PcaKind {
    /// The name used in files and messages.
    pub fn name(self) -> &'static str {
        match self {
            PcaKind::Structure => "structure",
            PcaKind::Texture => "texture",
        }
    }
}

/// What went wrong computing, reading or using a PCA.
#[derive(Debug, Error)]
pub enum PcaError {
    /// Too few vectors to estimate a covariance.
    #[error("{kind} PCA needs at least 2 code vectors, got {count}")]
    TooFewSamples {
        /// `structure` or `texture`.
        kind: &'static str,
        /// How many were added.
        count: u64,
    },
    /// A code's width does not match.
    #[error("{what}: expected {expected} channels, got {got}")]
    Dimension {
        /// What was being added or edited.
        what: String,
        /// The PCA's dimension.
        expected: usize,
        /// The input's.
        got: usize,
    },
    /// A code holds NaN or infinity.
    #[error("{what}: the codes hold a non-finite value")]
    NonFinite {
        /// What was being added.
        what: String,
    },
    /// A component index beyond the stored ones.
    #[error("component {index} does not exist ({count} stored)")]
    NoComponent {
        /// The index asked for.
        index: usize,
        /// How many there are.
        count: usize,
    },
    /// A dimension beyond [`MAX_PCA_DIM`].
    #[error("code dimension {dim} exceeds the limit of {MAX_PCA_DIM}")]
    TooWide {
        /// The dimension.
        dim: usize,
    },
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid PCA file.
    #[error("{}: not a valid PCA file: {problem}", path.display())]
    Format {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Streams code vectors into the sums a covariance needs.
#[derive(Clone, Debug)]
pub struct CovarianceAccumulator {
    kind: PcaKind,
    dim: usize,
    count: u64,
    images: u64,
    sum: Vec<f64>,
    /// Upper and lower triangle both kept: `dim × dim`, row-major.
    products: DMatrix<f64>,
}

impl CovarianceAccumulator {
    /// An empty accumulator for `dim`-channel codes.
    ///
    /// # Errors
    /// [`PcaError::TooWide`] beyond [`MAX_PCA_DIM`] (or for 0).
    pub fn new(kind: PcaKind, dim: usize) -> Result<Self, PcaError> {
        if dim == 0 || dim > MAX_PCA_DIM {
            return Err(PcaError::TooWide { dim });
        }
        Ok(Self {
            kind,
            dim,
            count: 0,
            images: 0,
            sum: vec![0.0; dim],
            products: DMatrix::zeros(dim, dim),
        })
    }

    /// How many vectors were added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds the codes of a batch of images: every location of a structure code
    /// `[batch, C, h, w]`, or every row of a texture code `[batch, D]` (as `[batch, D, 1, 1]`).
    ///
    /// # Errors
    /// [`PcaError::Dimension`] for another channel count, [`PcaError::NonFinite`] for NaN or
    /// infinite codes (nothing is added then).
    pub fn add_codes(&mut self, codes: Tensor<4>) -> Result<(), PcaError> {
        let (rows, images) = self.rows_of(codes)?;
        self.add_rows(&rows)?;
        self.images += images;
        Ok(())
    }

    /// Codes `[batch, dim, h, w]` as row-major `[batch·h·w, dim]` location vectors.
    fn rows_of(&self, codes: Tensor<4>) -> Result<(Vec<f32>, u64), PcaError> {
        let [b, c, h, w] = codes.dims();
        if c != self.dim {
            return Err(PcaError::Dimension {
                what: format!("{} codes", self.kind.name()),
                expected: self.dim,
                got: c,
            });
        }
        let rows = codes.permute([0, 2, 3, 1]).reshape([b * h * w, c]);
        let values: Vec<f32> = rows
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .expect("f32 after convert");
        Ok((values, b as u64))
    }

    /// Checks row-major `[n, dim]` vectors without adding them.
    fn check_rows(&self, rows: &[f32]) -> Result<(), PcaError> {
        if !rows.len().is_multiple_of(self.dim) {
            return Err(PcaError::Dimension {
                what: format!("{} rows", self.kind.name()),
                expected: self.dim,
                got: rows.len() % self.dim,
            });
        }
        if rows.iter().any(|v| !v.is_finite()) {
            return Err(PcaError::NonFinite {
                what: format!("{} codes", self.kind.name()),
            });
        }
        Ok(())
    }

    /// Adds row-major `[n, dim]` vectors (not counted as images).
    ///
    /// # Errors
    /// As [`CovarianceAccumulator::add_codes`].
    pub fn add_rows(&mut self, rows: &[f32]) -> Result<(), PcaError> {
        self.check_rows(rows)?;
        let n = rows.len() / self.dim;
        if n == 0 {
            return Ok(());
        }
        // Xᵀ·X for this batch, in f64, with nalgebra's matrix product (column-major: the
        // row-major [n, dim] slice is the column-major [dim, n] matrix Xᵀ).
        let xt = DMatrix::from_iterator(self.dim, n, rows.iter().map(|&v| f64::from(v)));
        self.products += &xt * xt.transpose();
        for (s, col) in self.sum.iter_mut().zip(xt.row_iter()) {
            *s += col.sum();
        }
        self.count += n as u64;
        Ok(())
    }

    /// The sample covariance (`n − 1` in the denominator), `dim × dim`.
    ///
    /// # Errors
    /// [`PcaError::TooFewSamples`] below 2 vectors.
    pub fn covariance(&self) -> Result<DMatrix<f64>, PcaError> {
        if self.count < 2 {
            return Err(PcaError::TooFewSamples {
                kind: self.kind.name(),
                count: self.count,
            });
        }
        let n = self.count as f64;
        let mean = nalgebra::DVector::from_iterator(self.dim, self.sum.iter().map(|s| s / n));
        Ok((&self.products - &mean * mean.transpose() * n) / (n - 1.0))
    }

    /// The principal components, largest variance first; `keep` of them (all for `None`).
    ///
    /// # Errors
    /// [`PcaError::TooFewSamples`] below 2 vectors.
    pub fn finish(&self, keep: Option<usize>) -> Result<Pca, PcaError> {
        let cov = self.covariance()?;
        let eig = SymmetricEigen::new(cov);
        let mut order: Vec<usize> = (0..self.dim).collect();
        order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
        let k = keep.unwrap_or(self.dim).clamp(1, self.dim);
        let mut components = Vec::with_capacity(k * self.dim);
        let mut variances = Vec::with_capacity(k);
        for &i in order.iter().take(k) {
            let v = eig.eigenvectors.column(i);
            // A sign convention, so that the same data gives the same file: the largest
            // entry of each component is positive.
            let big = v
                .iter()
                .fold(0.0f64, |m, &x| if x.abs() > m.abs() { x } else { m });
            let sign = if big < 0.0 { -1.0 } else { 1.0 };
            components.extend(v.iter().map(|&x| (x * sign) as f32));
            variances.push(eig.eigenvalues[i].max(0.0) as f32);
        }
        let n = self.count as f64;
        Ok(Pca {
            kind: self.kind,
            dim: self.dim,
            mean: self.sum.iter().map(|s| (s / n) as f32).collect(),
            components,
            variances,
            images: self.images,
            samples: self.count,
        })
    }
}

/// Principal components of structure or texture codes.
#[derive(Clone, Debug, PartialEq)]
pub struct Pca {
    /// Which codes.
    pub kind: PcaKind,
    /// Code channels.
    pub dim: usize,
    /// The mean code, `[dim]`.
    pub mean: Vec<f32>,
    /// Unit-norm components, row-major `[k, dim]`, largest variance first.
    pub components: Vec<f32>,
    /// The variance along each component, `[k]`.
    pub variances: Vec<f32>,
    /// How many images the codes came from.
    pub images: u64,
    /// How many code vectors (`images·h·w` for structure codes, `images` for texture codes).
    pub samples: u64,
}

impl Pca {
    /// How many components are stored.
    pub fn len(&self) -> usize {
        self.variances.len()
    }

    /// Whether none are (never true for a PCA from [`CovarianceAccumulator::finish`]).
    pub fn is_empty(&self) -> bool {
        self.variances.is_empty()
    }

    /// Component `i` scaled by its standard deviation, `σ_i · v_i`, as a `[dim]` tensor.
    ///
    /// # Errors
    /// [`PcaError::NoComponent`] past the stored ones.
    pub fn direction(&self, i: usize, device: &Device) -> Result<Tensor<1>, PcaError> {
        if i >= self.len() {
            return Err(PcaError::NoComponent {
                index: i,
                count: self.len(),
            });
        }
        let sigma = self.variances[i].sqrt();
        let v: Vec<f32> = self.components[i * self.dim..(i + 1) * self.dim]
            .iter()
            .map(|x| x * sigma)
            .collect();
        Ok(Tensor::from_data(TensorData::new(v, [self.dim]), device))
    }

    fn check_dim(&self, what: &str, got: usize) -> Result<(), PcaError> {
        if got != self.dim {
            return Err(PcaError::Dimension {
                what: what.to_string(),
                expected: self.dim,
                got,
            });
        }
        Ok(())
    }

    /// Structure editing: adds `strength · σ_i · v_i` to the structure code inside `mask`
    /// ([`crate::inference::edit_structure`]).
    ///
    /// # Shapes
    /// - `structure`: `[batch, C, h, w]`; `mask`: `[batch or 1, 1, mh, mw]` in `[0, 1]`,
    ///   nearest-resized to `h × w`; output: like `structure`
    ///
    /// # Errors
    /// [`PcaError::Dimension`] if this is not a PCA of `C`-channel codes,
    /// [`PcaError::NoComponent`] past the stored ones.
    pub fn edit_structure(
        &self,
        structure: Tensor<4>,
        component: usize,
        strength: f32,
        mask: Tensor<4>,
    ) -> Result<Tensor<4>, PcaError> {
        self.check_dim("structure code", structure.dims()[1])?;
        let direction = self.direction(component, &structure.device())?;
        Ok(crate::inference::edit_structure(
            structure, direction, mask, strength,
        ))
    }

    /// Global texture editing: `texture + strength · σ_i · v_i` for every image.
    ///
    /// # Shapes
    /// - `texture`: `[batch, D]`; output: `[batch, D]`
    ///
    /// # Errors
    /// As [`Pca::edit_structure`].
    pub fn edit_texture(
        &self,
        texture: Tensor<2>,
        component: usize,
        strength: f32,
    ) -> Result<Tensor<2>, PcaError> {
        let [_, d] = texture.dims();
        self.check_dim("texture code", d)?;
        let direction = self.direction(component, &texture.device())?;
        Ok(texture + direction.reshape([1, d]) * strength)
    }

    /// The coordinates of row-major `[n, dim]` codes along the components, `[n, k]`:
    /// `(x − mean) · v_i`.
    ///
    /// # Errors
    /// [`PcaError::Dimension`] for rows of another width.
    pub fn project(&self, rows: &[f32]) -> Result<Vec<f32>, PcaError> {
        if !rows.len().is_multiple_of(self.dim) {
            return Err(PcaError::Dimension {
                what: "projected rows".into(),
                expected: self.dim,
                got: rows.len() % self.dim,
            });
        }
        let k = self.len();
        let mut out = Vec::with_capacity(rows.len() / self.dim * k);
        for row in rows.chunks(self.dim) {
            for c in self.components.chunks(self.dim) {
                out.push(
                    row.iter()
                        .zip(&self.mean)
                        .zip(c)
                        .map(|((x, m), v)| (x - m) * v)
                        .sum(),
                );
            }
        }
        Ok(out)
    }
}

/// The PCA of both codes of a model, as `sae pca` writes it and `sae serve` reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct CodePca {
    /// Per-location structure codes.
    pub structure: Pca,
    /// Per-image texture codes.
    pub texture: Pca,
}

/// Streams images' codes into both covariances ([`CodePca`]).
#[derive(Clone, Debug)]
pub struct CodePcaBuilder {
    structure: CovarianceAccumulator,
    texture: CovarianceAccumulator,
}

impl CodePcaBuilder {
    /// For codes of `spatial_code_ch` and `global_code_ch` channels.
    ///
    /// # Errors
    /// [`PcaError::TooWide`] beyond [`MAX_PCA_DIM`].
    pub fn new(spatial_code_ch: usize, global_code_ch: usize) -> Result<Self, PcaError> {
        Ok(Self {
            structure: CovarianceAccumulator::new(PcaKind::Structure, spatial_code_ch)?,
            texture: CovarianceAccumulator::new(PcaKind::Texture, global_code_ch)?,
        })
    }

    /// Adds a batch of encoded images.
    ///
    /// # Shapes
    /// - `codes.structure`: `[batch, C, h, w]`; `codes.texture`: `[batch, D]`
    ///
    /// # Errors
    /// As [`CovarianceAccumulator::add_codes`]; nothing is added on an error.
    pub fn add(&mut self, codes: &crate::Codes) -> Result<(), PcaError> {
        let [b, d] = codes.texture.dims();
        let (s_rows, s_images) = self.structure.rows_of(codes.structure.clone())?;
        let (t_rows, t_images) = self
            .texture
            .rows_of(codes.texture.clone().reshape([b, d, 1, 1]))?;
        self.structure.check_rows(&s_rows)?;
        self.texture.check_rows(&t_rows)?;
        self.structure.add_rows(&s_rows)?;
        self.texture.add_rows(&t_rows)?;
        self.structure.images += s_images;
        self.texture.images += t_images;
        Ok(())
    }

    /// How many images were added.
    pub fn images(&self) -> u64 {
        self.texture.images
    }

    /// Both PCAs: every structure component, and the `texture_components` largest texture
    /// ones (at most one fewer than the images: the rest have no variance).
    ///
    /// # Errors
    /// [`PcaError::TooFewSamples`] below 2 images.
    pub fn finish(&self, texture_components: usize) -> Result<CodePca, PcaError> {
        let keep = texture_components.min(self.texture.count.saturating_sub(1) as usize);
        Ok(CodePca {
            texture: self.texture.finish(Some(keep.max(1)))?,
            structure: self.structure.finish(None)?,
        })
    }
}

impl CodePca {
    /// Writes both PCAs to one safetensors file, atomically: for `K` in `structure` and
    /// `texture`, `K.components` `[k, dim]`, `K.mean` `[dim]`, `K.variances` `[k]`; metadata
    /// `format`, `images`, `K.samples`.
    ///
    /// # Errors
    /// [`PcaError::Write`].
    pub fn save(&self, path: &Path) -> Result<(), PcaError> {
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut data = Vec::new();
        for p in [&self.structure, &self.texture] {
            let k = p.kind.name();
            data.push((
                format!("{k}.components"),
                bytes(&p.components),
                vec![p.len(), p.dim],
            ));
            data.push((format!("{k}.mean"), bytes(&p.mean), vec![p.dim]));
            data.push((format!("{k}.variances"), bytes(&p.variances), vec![p.len()]));
        }
        let tensors: Vec<(String, TensorView<'_>)> = data
            .iter()
            .map(|(name, b, shape)| {
                let view = TensorView::new(Dtype::F32, shape.clone(), b)
                    .expect("sizes match by construction");
                (name.clone(), view)
            })
            .collect();
        let meta = HashMap::from([
            ("format".to_string(), PCA_FORMAT.to_string()),
            ("images".to_string(), self.texture.images.to_string()),
            (
                "structure.samples".to_string(),
                self.structure.samples.to_string(),
            ),
            (
                "texture.samples".to_string(),
                self.texture.samples.to_string(),
            ),
        ]);
        let out = serialize(tensors, Some(meta)).expect("in-memory serialisation");
        write_atomic(path, &out)?;
        Ok(())
    }

    /// Reads a file written by [`CodePca::save`], checking every shape and value.
    ///
    /// # Errors
    /// [`PcaError::Read`] or [`PcaError::Format`] naming the problem.
    pub fn load(path: &Path) -> Result<CodePca, PcaError> {
        // Both PCAs at MAX_PCA_DIM, plus the header.
        let limit = (8 * (MAX_PCA_DIM * MAX_PCA_DIM + 2 * MAX_PCA_DIM) + (1 << 20)) as u64;
        let bytes = read_bounded(path, limit).map_err(|source| PcaError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes).map_err(|problem| PcaError::Format {
            path: path.to_path_buf(),
            problem,
        })
    }

    fn from_bytes(bytes: &[u8]) -> Result<CodePca, String> {
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |k: &str| meta.get(k).ok_or(format!("metadata has no `{k}`"));
        if field("format")? != PCA_FORMAT {
            return Err(format!(
                "format `{}`, expected `{PCA_FORMAT}`",
                field("format")?
            ));
        }
        let count = |k: &str| {
            field(k)?
                .parse::<u64>()
                .map_err(|_| format!("`{k}` is not a count"))
        };
        let images = count("images")?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f32>), String> {
            let t = st.tensor(name).map_err(|_| format!("no tensor `{name}`"))?;
            if t.dtype() != Dtype::F32 {
                return Err(format!("`{name}` is {:?}, expected F32", t.dtype()));
            }
            let v: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(format!("`{name}` holds a non-finite value"));
            }
            Ok((t.shape().to_vec(), v))
        };
        let one = |kind: PcaKind| -> Result<Pca, String> {
            let k = kind.name();
            let (cs, components) = read(&format!("{k}.components"))?;
            let (ms, mean) = read(&format!("{k}.mean"))?;
            let (vs, variances) = read(&format!("{k}.variances"))?;
            let [n, dim] = cs[..] else {
                return Err(format!(
                    "`{k}.components` has shape {cs:?}, expected [k, dim]"
                ));
            };
            if n == 0 || dim == 0 || dim > MAX_PCA_DIM || n > dim {
                return Err(format!("`{k}.components` has shape {cs:?}"));
            }
            if ms != [dim] || vs != [n] {
                return Err(format!(
                    "`{k}.mean` {ms:?} and `{k}.variances` {vs:?} do not fit `{k}.components` {cs:?}"
                ));
            }
            if variances.iter().any(|&v| v < 0.0) {
                return Err(format!("a `{k}` variance is negative"));
            }
            for (i, c) in components.chunks(dim).enumerate() {
                let norm: f32 = c.iter().map(|x| x * x).sum::<f32>().sqrt();
                // Unit vectors written in f32: 1e-3 leaves room for rounding over 4096 entries
                // and catches any scaled or damaged row.
                if (norm - 1.0).abs() > 1e-3 {
                    return Err(format!("{k} component {i} has norm {norm}, expected 1"));
                }
            }
            Ok(Pca {
                kind,
                dim,
                mean,
                components,
                variances,
                images,
                samples: count(&format!("{k}.samples"))?,
            })
        };
        Ok(CodePca {
            structure: one(PcaKind::Structure)?,
            texture: one(PcaKind::Texture)?,
        })
    }
}

/// Self-similarity region: the locations whose structure code has a cosine similarity of at
/// least `threshold` with the code at `point` (`[y, x]` in code coordinates), per image; the
/// paper's "click a point" region selection.
///
/// # Shapes
/// - `structure`: `[batch, C, h, w]`; output: `[batch, 1, h, w]`, 1 inside, 0 outside
///
/// # Panics
/// If `point` lies outside `h × w`.
pub fn self_similarity_mask(structure: Tensor<4>, point: [usize; 2], threshold: f32) -> Tensor<4> {
    let [b, c, h, w] = structure.dims();
    let [y, x] = point;
    assert!(
        y < h && x < w,
        "self_similarity_mask: point {point:?} outside the {h}×{w} code"
    );
    let unit = sae_nn::normalize(structure);
    let at = unit.clone().slice([0..b, 0..c, y..y + 1, x..x + 1]);
    let cos = (unit * at).sum_dim(1);
    cos.greater_equal_elem(threshold).float()
}

#[cfg(test)]
// The reference computations index like the formulas they write out.
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;

    fn device() -> Device {
        Device::flex()
    }

    /// Deterministic correlated data: x = A·z + offset for a fixed mixing A.
    fn data(n: usize, dim: usize) -> Vec<f32> {
        let mut s = 12345u64;
        let mut uniform = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let a: Vec<f32> = (0..dim * dim).map(|_| uniform()).collect();
        let mut out = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let z: Vec<f32> = (0..dim).map(|j| uniform() * (1.0 + j as f32)).collect();
            for r in 0..dim {
                out.push((0..dim).map(|k| a[r * dim + k] * z[k]).sum::<f32>() + r as f32);
            }
        }
        out
    }

    #[test]
    fn matches_a_two_pass_covariance_and_its_eigenvectors() {
        let (n, dim) = (500, 6);
        let rows = data(n, dim);
        let mut acc = CovarianceAccumulator::new(PcaKind::Texture, dim).unwrap();
        // Streamed in uneven batches.
        for chunk in rows.chunks(dim * 37) {
            acc.add_rows(chunk).unwrap();
        }
        let pca = acc.finish(None).unwrap();
        // Reference, computed another way: two passes (mean, then centred products).
        let mut mean = vec![0f64; dim];
        for r in rows.chunks(dim) {
            for j in 0..dim {
                mean[j] += f64::from(r[j]) / n as f64;
            }
        }
        let mut cov = vec![0f64; dim * dim];
        for r in rows.chunks(dim) {
            for i in 0..dim {
                for j in 0..dim {
                    cov[i * dim + j] +=
                        (f64::from(r[i]) - mean[i]) * (f64::from(r[j]) - mean[j]) / (n - 1) as f64;
                }
            }
        }
        for j in 0..dim {
            assert!((f64::from(pca.mean[j]) - mean[j]).abs() < 1e-4);
        }
        // Each component is a unit eigenvector of the reference covariance with its variance
        // as eigenvalue, and they are sorted and orthogonal. 1e-3 relative: f32 storage.
        let scale = cov.iter().fold(0f64, |m, v| m.max(v.abs()));
        for i in 0..dim {
            let v = &pca.components[i * dim..(i + 1) * dim];
            for r in 0..dim {
                let cv: f64 = (0..dim).map(|k| cov[r * dim + k] * f64::from(v[k])).sum();
                let lv = f64::from(pca.variances[i]) * f64::from(v[r]);
                assert!((cv - lv).abs() < 1e-3 * scale, "component {i} row {r}");
            }
            for j in 0..dim {
                let dot: f32 = v
                    .iter()
                    .zip(&pca.components[j * dim..(j + 1) * dim])
                    .map(|(a, b)| a * b)
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-4, "v{i}·v{j} = {dot}");
            }
            if i > 0 {
                assert!(pca.variances[i] <= pca.variances[i - 1]);
            }
        }
        // The variances sum to the trace (the total variance).
        let trace: f64 = (0..dim).map(|i| cov[i * dim + i]).sum();
        let total: f64 = pca.variances.iter().map(|&v| f64::from(v)).sum();
        assert!((trace - total).abs() < 1e-4 * trace);
    }

    #[test]
    fn an_edit_projects_back_out() {
        let dim = 5;
        let mut acc = CovarianceAccumulator::new(PcaKind::Texture, dim).unwrap();
        acc.add_rows(&data(200, dim)).unwrap();
        let pca = acc.finish(Some(3)).unwrap();
        assert_eq!(pca.len(), 3);
        let d = device();
        let code = Tensor::<2>::from_data(TensorData::new(data(4, dim), [4, dim]), &d);
        let before = pca
            .project(&code.clone().into_data().try_into_vec::<f32>().unwrap())
            .unwrap();
        let edited = pca.edit_texture(code.clone(), 1, 2.5).unwrap();
        let after = pca
            .project(&edited.clone().into_data().try_into_vec::<f32>().unwrap())
            .unwrap();
        let sigma = pca.variances[1].sqrt();
        for row in 0..4 {
            for k in 0..3 {
                let shift = if k == 1 { 2.5 * sigma } else { 0.0 };
                let got = after[row * 3 + k] - before[row * 3 + k];
                assert!(
                    (got - shift).abs() < 1e-3 * (1.0 + shift),
                    "{row} {k}: {got}"
                );
            }
        }
        // Subtracting the same edit recovers the code.
        let back = pca.edit_texture(edited, 1, -2.5).unwrap();
        let err: f32 = (back - code).abs().max().into_scalar();
        assert!(err < 1e-4, "{err}");
    }

    #[test]
    fn structure_codes_stream_per_location_and_edit_inside_the_mask() {
        let d = device();
        let (b, c, h, w) = (3, 4, 5, 6);
        let codes = Tensor::<4>::from_data(TensorData::new(data(b * h * w, c), [b, h, w, c]), &d)
            .permute([0, 3, 1, 2]);
        let mut acc = CovarianceAccumulator::new(PcaKind::Structure, c).unwrap();
        acc.add_codes(codes.clone()).unwrap();
        assert_eq!(acc.count(), (b * h * w) as u64);
        let pca = acc.finish(None).unwrap();
        assert_eq!(pca.images, b as u64);
        // The same rows in location order give the same PCA.
        let mut flat = CovarianceAccumulator::new(PcaKind::Structure, c).unwrap();
        flat.add_rows(&data(b * h * w, c)).unwrap();
        let other = flat.finish(None).unwrap();
        for (a, e) in pca.variances.iter().zip(&other.variances) {
            assert!((a - e).abs() < 1e-4 * e.max(1.0));
        }
        // A mask of the left half: the right half is untouched.
        let mut m = vec![0f32; h * w];
        for y in 0..h {
            for x in 0..w / 2 {
                m[y * w + x] = 1.0;
            }
        }
        let mask = Tensor::<4>::from_data(TensorData::new(m, [1, 1, h, w]), &d);
        let edited = pca.edit_structure(codes.clone(), 0, 3.0, mask).unwrap();
        let diff = (edited - codes).abs();
        let right: f32 = diff
            .clone()
            .slice([0..b, 0..c, 0..h, w / 2..w])
            .max()
            .into_scalar();
        let left: f32 = diff.slice([0..b, 0..c, 0..h, 0..w / 2]).max().into_scalar();
        assert_eq!(right, 0.0);
        assert!(left > 0.1);
        assert!(matches!(
            pca.edit_structure(
                Tensor::zeros([1, c + 1, h, w], &d),
                0,
                1.0,
                Tensor::ones([1, 1, h, w], &d)
            ),
            Err(PcaError::Dimension { .. })
        ));
        assert!(matches!(
            pca.direction(c, &d),
            Err(PcaError::NoComponent { .. })
        ));
    }

    #[test]
    fn bad_input_is_refused() {
        let mut acc = CovarianceAccumulator::new(PcaKind::Texture, 3).unwrap();
        assert!(matches!(
            acc.add_rows(&[1.0, f32::NAN, 0.0]),
            Err(PcaError::NonFinite { .. })
        ));
        assert!(matches!(
            acc.add_rows(&[1.0, 2.0]),
            Err(PcaError::Dimension { .. })
        ));
        acc.add_rows(&[1.0, 2.0, 3.0]).unwrap();
        assert!(matches!(
            acc.finish(None),
            Err(PcaError::TooFewSamples { count: 1, .. })
        ));
        assert!(CovarianceAccumulator::new(PcaKind::Texture, 0).is_err());
        assert!(CovarianceAccumulator::new(PcaKind::Texture, MAX_PCA_DIM + 1).is_err());
    }

    #[test]
    fn saves_loads_and_refuses_damaged_files() {
        let dir = std::env::temp_dir().join(format!("sae-pca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.safetensors");
        let d = device();
        let mut b = CodePcaBuilder::new(4, 6).unwrap();
        for i in 0..3 {
            let codes = crate::Codes {
                structure: Tensor::<4>::from_data(
                    TensorData::new(data(2 * 9 + i, 4)[..2 * 9 * 4].to_vec(), [2, 3, 3, 4]),
                    &d,
                )
                .permute([0, 3, 1, 2]),
                texture: Tensor::<2>::from_data(
                    TensorData::new(data(2 + i, 6)[..12].to_vec(), [2, 6]),
                    &d,
                ),
            };
            b.add(&codes).unwrap();
        }
        assert_eq!(b.images(), 6);
        let pca = b.finish(10).unwrap();
        // 6 images: at most 5 texture components carry variance.
        assert_eq!((pca.structure.len(), pca.texture.len()), (4, 5));
        assert_eq!(pca.structure.samples, 54);
        pca.save(&path).unwrap();
        assert_eq!(CodePca::load(&path).unwrap(), pca);
        let bytes = std::fs::read(&path).unwrap();
        // Truncated, and every byte of the header flipped: an error, never a panic.
        for cut in [0, 8, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(CodePca::load(&path).is_err(), "cut {cut}");
        }
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for i in 0..header.min(bytes.len()) {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            std::fs::write(&path, &b).unwrap();
            let _ = CodePca::load(&path);
        }
        // A scaled component is refused.
        let mut scaled = pca.clone();
        scaled.texture.components[0] *= 3.0;
        scaled.save(&path).unwrap();
        let e = CodePca::load(&path).unwrap_err().to_string();
        assert!(e.contains("norm"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn self_similarity_selects_similar_locations() {
        let d = device();
        // Two code "materials": left half along e0, right half along e1.
        let (h, w) = (4, 6);
        let mut v = vec![0f32; 2 * h * w];
        for y in 0..h {
            for x in 0..w {
                let ch = usize::from(x >= w / 2);
                v[ch * h * w + y * w + x] = 1.0 + 0.1 * y as f32;
            }
        }
        let s = Tensor::<4>::from_data(TensorData::new(v, [1, 2, h, w]), &d);
        let m = self_similarity_mask(s, [1, 0], 0.9);
        let m: Vec<f32> = m.into_data().try_into_vec().unwrap();
        for y in 0..h {
            for x in 0..w {
                assert_eq!(m[y * w + x], if x < w / 2 { 1.0 } else { 0.0 });
            }
        }
    }
}
