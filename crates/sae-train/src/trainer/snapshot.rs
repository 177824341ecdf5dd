//! Snapshot grids: real images, their reconstructions and swaps, on fixed images with fixed
//! noise, so that snapshots of one run are comparable.

use burn::tensor::{Device, Int, Tensor, TensorData};
use sae_data::{Augment, DataError, Dataset};
use sae_model::image_io::{self, ImageTensor, RgbImage};
use sae_model::inference::{images_to_tensor, tensor_to_images};
use sae_model::{Encoder, Generator, GeneratorNoise};
use sae_nn::{NoiseRng, Style};

use super::error::TrainError;
use crate::options::TrainOptions;

/// The fixed images of the snapshot grids: the first images of the dataset (in key order, up
/// to 8 and at most the batch size, an even number), centre-cropped, unflipped, on the inner
/// (non-autodiff) backend of the training `device`.
///
/// # Errors
/// [`DataError::Empty`] when fewer than two images decode.
pub(crate) fn snapshot_batch(
    opts: &TrainOptions,
    dataset: &dyn Dataset,
    device: &Device,
) -> Result<Tensor<4>, TrainError> {
    let want = opts.batch_size.min(8);
    let mut transform = opts.data.transform()?;
    transform.flip = false;
    let c = opts.data.crop_size;
    let mut images: Vec<ImageTensor> = Vec::new();
    for i in 0..dataset.len() {
        if images.len() == want {
            break;
        }
        let Ok(img) = dataset.decode(i) else {
            continue;
        };
        let (w, h) = transform.resized_size(img.width() as usize, img.height() as usize);
        let aug = Augment {
            crop_x: w.saturating_sub(c) / 2,
            crop_y: h.saturating_sub(c) / 2,
            flip: false,
        };
        if let Ok(t) = transform.apply_with(&img, aug, &dataset.key(i)) {
            images.push(t);
        }
    }
    if images.len() < 2 {
        return Err(TrainError::Data(DataError::Empty {
            path: opts.data.path.clone(),
        }));
    }
    images.truncate(images.len() / 2 * 2);
    // The snapshot networks run without autodiff (`Module::valid`).
    Ok(images_to_tensor(&images, device)
        .map_err(DataError::from)?
        .inner())
}

/// The grid: rows real, reconstruction, swap (each image's texture on its neighbour's
/// structure, as the training swap pairs them), with noise seed 0.
///
/// # Errors
/// A non-finite output, which has no 8-bit value.
pub(crate) fn snapshot_grid(
    e: &Encoder,
    g: &Generator,
    real: Tensor<4>,
) -> Result<RgbImage, TrainError> {
    let n = real.dims()[0];
    let codes = e.forward(real.clone());
    let mut rng = NoiseRng::seed(0);
    let rec = g.forward(
        codes.structure.clone(),
        Style::Global(codes.texture.clone()),
        GeneratorNoise::Random(&mut rng),
    );
    let swap_idx: Vec<i64> = (0..n as i64).map(|i| i ^ 1).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(swap_idx, [n]), &real.device());
    let mix = g.forward(
        codes.structure.select(0, idx),
        Style::Global(codes.texture),
        GeneratorNoise::Random(&mut rng),
    );
    let mut rows: Vec<Vec<RgbImage>> = Vec::new();
    for t in [real, rec, mix] {
        let row = tensor_to_images(t)
            .and_then(|imgs| imgs.iter().map(image_io::to_rgb8).collect())
            .map_err(DataError::from)?;
        rows.push(row);
    }
    let cell = (rows[0][0].width(), rows[0][0].height());
    let refs: Vec<Vec<Option<&RgbImage>>> =
        rows.iter().map(|r| r.iter().map(Some).collect()).collect();
    Ok(image_io::grid(&refs, cell))
}
