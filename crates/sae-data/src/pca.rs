//! The PCA of a model's codes over a dataset (`sae pca`): a seeded sample of images of any
//! layout [`crate::open_dataset`] reads, encoded in batches and streamed into
//! [`sae_model::pca::CodePcaBuilder`].

use burn::tensor::Device;
use sae_model::image_io::{Preprocess, test_transform};
use sae_model::inference::images_to_tensor;
use sae_model::pca::{CodePca, CodePcaBuilder, PcaError};
use sae_model::{ModelConfig, SwappingAutoencoder};
use thiserror::Error;

use crate::Dataset;
use crate::loader::permutation;

/// How `dataset_pca` samples and prepares the images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetPcaOptions {
    /// How many images (fewer if the dataset is smaller).
    pub images: usize,
    /// The sample's seed: the same seed picks the same images.
    pub seed: u64,
    /// Every image is resized to `load_size × load_size` (the official `resize` preprocessing).
    pub load_size: usize,
    /// Images per encoder call.
    pub batch: usize,
    /// How many texture components to keep.
    pub texture_components: usize,
}

/// Why a dataset PCA failed.
#[derive(Debug, Error)]
pub enum DatasetPcaError {
    /// Fewer than two images could be decoded.
    #[error("only {decoded} of the {sampled} sampled images could be decoded; a PCA needs 2")]
    TooFewImages {
        /// Images sampled.
        sampled: usize,
        /// Images that decoded.
        decoded: usize,
    },
    /// Options out of range.
    #[error("{0}")]
    Options(String),
    /// The decoded images could not form a batch.
    #[error(transparent)]
    Image(#[from] sae_model::image_io::ImageError),
    /// The PCA itself.
    #[error(transparent)]
    Pca(#[from] PcaError),
}

/// What `dataset_pca` produced.
#[derive(Debug)]
pub struct DatasetPca {
    /// Both PCAs.
    pub pca: CodePca,
    /// `(image, reason)` of every sampled image that could not be decoded (skipped).
    pub skipped: Vec<(String, String)>,
}

/// The PCA of `model`'s structure and texture codes (`config` is the model's configuration, as
/// [`SwappingAutoencoder::load`] returns it) over a seeded sample of `dataset`;
/// `progress(done, total)` is called after every batch.
///
/// # Errors
/// [`DatasetPcaError`]: bad options, too few decodable images, or non-finite codes.
pub fn dataset_pca(
    dataset: &dyn Dataset,
    model: &SwappingAutoencoder,
    config: &ModelConfig,
    opts: &DatasetPcaOptions,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<DatasetPca, DatasetPcaError> {
    if opts.batch == 0 || opts.images < 2 || opts.texture_components == 0 {
        return Err(DatasetPcaError::Options(format!(
            "images ({}) must be at least 2, batch ({}) and texture components ({}) at least 1",
            opts.images, opts.batch, opts.texture_components
        )));
    }
    let n = opts.images.min(dataset.len());
    // `permutation` takes u32 indices; no dataset opener lists more.
    let order: Vec<usize> = permutation(dataset.len(), opts.seed, 0)
        .into_iter()
        .take(n)
        .map(|i| i as usize)
        .collect();
    let mut builder = CodePcaBuilder::new(
        config.encoder.spatial_code_ch,
        config.encoder.global_code_ch,
    )?;
    let mut skipped = Vec::new();
    let pre = Preprocess::resize(opts.load_size);
    for (done, chunk) in order.chunks(opts.batch).enumerate() {
        let mut images = Vec::with_capacity(chunk.len());
        for &i in chunk {
            match dataset.decode(i) {
                Ok(img) => images.push(test_transform(&img, pre)),
                Err(e) => {
                    skipped.push((dataset.display_name(i).display().to_string(), e.to_string()))
                }
            }
        }
        if !images.is_empty() {
            let x = images_to_tensor(&images, device)?;
            builder.add(&model.e.forward(x))?;
        }
        progress(((done + 1) * opts.batch).min(n), n);
    }
    let decoded = builder.images() as usize;
    if decoded < 2 {
        return Err(DatasetPcaError::TooFewImages {
            sampled: n,
            decoded,
        });
    }
    Ok(DatasetPca {
        pca: builder.finish(opts.texture_components)?,
        skipped,
    })
}
