//! Train the official LSUN presets (`experiments/{church,bedroom}_launcher.py`): `church256`
//! (`church_default`: batch 16 as 4 GPU chunks of 4, no patch aggregation) or `bedroom256`
//! (`bedroom_default`: batch 32 as 8 chunks).
//!
//! ```text
//! cargo run --release --features lmdb --example train_lsun -- \
//!     --category church --data church_outdoor_train_lmdb --out runs/church
//! ```
//!
//! Run with `--help` for where to get the data.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use sae::train::{TrainArgs, launch, stop_on_signals, train_devices};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Category {
    /// LSUN Church (outdoor), `church_outdoor_train_lmdb`: 126k images.
    Church,
    /// LSUN Bedroom, `bedroom_train_lmdb`: 3M images.
    Bedroom,
}

/// Train a Swapping Autoencoder on LSUN at 256×256 (short side scaled to 256, random 256
/// crops, random flips), the official 25M-image schedule unless --kimg says otherwise.
#[derive(Parser, Debug)]
#[command(after_help = "DATA: download LSUN with the official script \
(github.com/fyu/lsun: `python3 download.py -c church_outdoor`), unzip it to get \
`church_outdoor_train_lmdb/` (a folder with data.mdb), and pass that folder to --data. \
Reading LMDB needs this example built with `--features lmdb` (it compiles the LMDB C library); \
without it, convert once with `sae data convert --from church_outdoor_train_lmdb --to church.zip` \
on a machine that has the feature and pass the zip. The first run lists the keys once and \
caches them in the LMDB folder.

Stop with Ctrl-C (a checkpoint is written) and continue with `--resume --out RUN_DIR`.")]
struct Args {
    /// Which LSUN category (and preset) to train.
    #[arg(long, value_enum)]
    category: Category,
    /// The LMDB folder (or a zip made by `sae data convert`).
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
    let preset = match a.category {
        Category::Church => "church256",
        Category::Bedroom => "bedroom256",
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
