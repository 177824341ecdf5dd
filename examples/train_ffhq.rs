//! Train the official FFHQ presets (`experiments/ffhq_launcher.py`): `ffhq512` (images squashed
//! to 512², batch 16 as 8 GPU chunks of 2), `ffhq1024` (1024² images, random 768 crops, the
//! 0.8/0.4-capacity networks) or, with `--small-structure`,
//! `ffhq1024_patchDv7_L1_smallerstructurecode` (`experiments/ffhq1024_pretrained_launcher.py`).
//!
//! ```text
//! cargo run --release --example train_ffhq -- --resolution 512 --data ffhq.zip --out runs/ffhq512
//! ```
//!
//! Run with `--help` for where to get the data.

use std::path::PathBuf;

use clap::Parser;
use sae::train::{TrainArgs, launch, stop_on_signals, train_devices};

/// Train a Swapping Autoencoder on FFHQ, the official 25M-image schedule unless --kimg says
/// otherwise.
#[derive(Parser, Debug)]
#[command(
    after_help = "DATA: FFHQ is distributed by NVIDIA (github.com/NVlabs/ffhq-dataset): \
the 70,000 1024×1024 PNGs (`images1024x1024/`, 89 GB) or a zip of them (e.g. the `ffhq.zip` \
written by StyleGAN2-ADA's dataset_tool.py). Pass the folder or the zip to --data; the zip is \
read in place, never extracted. The official runs read the 1024² PNGs for both resolutions.

Stop with Ctrl-C (a checkpoint is written) and continue with `--resume --out RUN_DIR`."
)]
struct Args {
    /// Training resolution: 512 (`ffhq512`) or 1024 (`ffhq1024`, 768 crops).
    #[arg(long, value_parser = ["512", "1024"])]
    resolution: String,
    /// With --resolution 1024: the smaller structure code variant (12×12×64 at training).
    #[arg(long)]
    small_structure: bool,
    /// The image folder or zip.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// The run directory.
    #[arg(long)]
    out: PathBuf,
    /// Total thousands of images (official: 25000).
    #[arg(long)]
    kimg: Option<f64>,
    /// Images per optimizer call (even); the official batch by default.
    #[arg(long)]
    batch: Option<usize>,
    /// Continue the run in --out.
    #[arg(long)]
    resume: bool,
    /// The device: flex, ndarray, wgpu[:N], vulkan[:N] or cuda[:N] (of the backends this
    /// binary was built with); Burn's default device (a GPU if one is compiled in) otherwise.
    #[arg(long)]
    device: Option<String>,
    /// Train data-parallel on these devices, comma-separated in chunk order, e.g.
    /// cuda:0,cuda:1,cuda:2,cuda:3. Each takes whole chunks of the batch, so the count must
    /// divide the preset's official GPU count (church 4, bedroom and FFHQ 8). --resume may use
    /// another list.
    #[arg(long)]
    devices: Option<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    sae::model::device::keep_freed_memory();
    let a = Args::parse();
    let preset = match (a.resolution.as_str(), a.small_structure) {
        ("512", false) => "ffhq512",
        ("1024", false) => "ffhq1024",
        ("1024", true) => "ffhq1024-small-structure",
        _ => return Err("--small-structure: only with --resolution 1024".into()),
    };
    let args = TrainArgs {
        preset: (!a.resume).then(|| preset.to_string()),
        data: a.data,
        out: a.out,
        kimg: a.kimg,
        batch: a.batch,
        resume: a.resume,
        ..TrainArgs::default()
    };
    let devices = train_devices(a.device.as_deref(), a.devices.as_deref())?;
    let stop = stop_on_signals()?;
    launch(&args, devices, &stop)?;
    Ok(())
}
