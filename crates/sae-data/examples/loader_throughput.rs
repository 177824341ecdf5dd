//! Loader throughput on 256-pixel JPEGs (the LSUN / FFHQ-256 training setting).
//!
//! Writes `IMAGES` (default 200) 256×256 JPEGs (synthetic shapes plus pixel noise, so that
//! they carry photo-like detail and size, quality 90) to a scratch folder, then times the loader with `scale_shortside_and_crop`, load 256, crop 256, random
//! flips, batches of 8, and prints images per second, next to the single-thread decode rate.
//!
//! ```sh
//! cargo run --release -p sae-train --example loader_throughput [WORKERS [IMAGES]]
//! ```

use std::fs;
use std::sync::Arc;
use std::time::Instant;

use image::ImageEncoder;
use sae_data::{Loader, LoaderConfig, LoaderState, SyntheticShapes, TrainTransform, open_dataset};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let workers: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2);
    let count: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let batch_size = 8;

    let dir = std::env::temp_dir().join(format!("sae-loader-throughput-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let shapes = SyntheticShapes::new(count, 256, 0)?;
    let mut total_bytes = 0;
    for i in 0..count {
        let mut img = shapes.render(i);
        // -32..+31 levels of hashed noise: flat synthetic regions would make the JPEGs unusually
        // small and fast to decode.
        for (j, v) in img.iter_mut().enumerate() {
            let h = (j as u64 ^ (i as u64) << 32).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
            *v = (i64::from(*v) + h as i64 - 32).clamp(0, 255) as u8;
        }
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90).write_image(
            img.as_raw(),
            256,
            256,
            image::ExtendedColorType::Rgb8,
        )?;
        total_bytes += bytes.len();
        fs::write(dir.join(format!("{i:06}.jpg")), bytes)?;
    }
    println!(
        "{count} JPEGs of 256x256, {:.1} KB each on average, in {}",
        total_bytes as f64 / count as f64 / 1e3,
        dir.display()
    );

    let dataset = open_dataset(&dir)?;
    // Decode only, one thread: the floor of what a worker can do.
    let start = Instant::now();
    for i in 0..count {
        dataset.decode(i)?;
    }
    let decode_rate = count as f64 / start.elapsed().as_secs_f64();
    println!("decode only, 1 thread: {decode_rate:.0} images/s");

    let transform = TrainTransform::new("scale_shortside_and_crop", 256, 256, true)?;
    let config = LoaderConfig {
        batch_size,
        workers,
        prefetch: 4,
        seed: 0,
        transform,
    };
    let mut loader = Loader::new(Arc::clone(&dataset), config, LoaderState::default())?;
    loader.next_batch()?; // warm-up: threads started, queues filled
    let batches = (4 * count / batch_size).max(10);
    let start = Instant::now();
    for _ in 0..batches {
        let batch = loader.next_batch()?;
        assert_eq!(batch.shape, [batch_size, 3, 256, 256]);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "loader, {workers} workers, batch {batch_size}: {} images in {secs:.2} s = {:.0} images/s",
        batches * batch_size,
        (batches * batch_size) as f64 / secs
    );
    drop(loader);
    fs::remove_dir_all(&dir)?;
    Ok(())
}
