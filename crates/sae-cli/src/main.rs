//! `sae`: the Swapping Autoencoder command-line tool. Every flag is validated before any work,
//! and a bad one is named in the error.

mod serve;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Parser, Subcommand, ValueEnum};
use sae_data::{DatasetPcaOptions, convert_to_zip, dataset_pca, open_dataset};
use sae_model::atomic::write_atomic;
use sae_model::image_io::{self, ImageTensor, Preprocess};
use sae_model::inference::{Decoder, NoiseMode, images_to_tensor, tensor_to_images};
use sae_model::native::save_native;
use sae_model::pca::MAX_PCA_DIM;
use sae_model::{DeviceSpec, ModelConfig, SwappingAutoencoder};
use sae_nn::Style;
use sae_train::{TRAIN_PRESETS, TrainArgs, TrainDevices, launch, stop_on_signals};

/// The largest `--load-size`: 8192 px, four times the largest official model.
const MAX_LOAD_SIZE: usize = 8192;

/// The default pixel budget of one network input: 1024 × 1024, the largest official model's
/// resolution. A church-256 `sae swap` of this size peaks at about 2 GB of memory, one of
/// 2048 × 2048 at 8 GB (`docs/reliability.md`); `--max-pixels` raises the budget.
const DEFAULT_MAX_PIXELS: usize = 1024 * 1024;

#[derive(Parser, Debug)]
#[command(
    name = "sae",
    version,
    about = "Swapping Autoencoder: inspect, convert, encode, swap"
)]
struct Cli {
    /// Device to run on: flex, ndarray, wgpu[:N], vulkan[:N] or cuda[:N], of the backends
    /// compiled into this binary.
    /// [default: flex; without it cuda, wgpu, vulkan, ndarray, the first compiled in]
    #[arg(long, global = true, value_parser = parse_device_spec)]
    device: Option<DeviceSpec>,
    #[command(subcommand)]
    command: Command,
}

fn parse_device_spec(s: &str) -> Result<DeviceSpec, String> {
    s.parse().map_err(|e: sae_model::DeviceError| e.to_string())
}

/// flex when compiled in (a plain `cargo build`), else a GPU backend, else ndarray.
#[allow(unreachable_code)]
fn default_device() -> DeviceSpec {
    #[cfg(feature = "flex")]
    return DeviceSpec::Flex;
    #[cfg(feature = "cuda")]
    return DeviceSpec::Cuda(0);
    #[cfg(feature = "wgpu")]
    return DeviceSpec::Wgpu(None);
    #[cfg(feature = "vulkan")]
    return DeviceSpec::Vulkan(None);
    DeviceSpec::NdArray
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum NoiseArg {
    /// Fresh seeded noise per decode.
    Random,
    /// One noise map per layer, shared by every output (the official `fix_noise`).
    Fixed,
    /// No noise.
    Zero,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the configuration inferred from a checkpoint, parameter counts, and which networks it holds.
    Info {
        /// An official `.pth` or a native `.safetensors` checkpoint.
        checkpoint: PathBuf,
    },
    /// Encode an image to its structure and texture codes.
    Encode {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        image: PathBuf,
        /// Output safetensors with tensors `structure` [1,C,h,w] and `texture` [1,D].
        #[arg(long)]
        out: PathBuf,
        /// Scale the short side to this many pixels first (default: keep the size).
        #[arg(long)]
        load_size: Option<usize>,
        /// Refuse images larger than this many pixels after preprocessing.
        #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
        max_pixels: usize,
    },
    /// Structure of one image, texture of another, for one or more texture-mix alphas.
    Swap {
        #[arg(long)]
        checkpoint: PathBuf,
        /// The image whose structure (layout) is kept.
        #[arg(long)]
        structure: PathBuf,
        /// The image whose texture (appearance) is used.
        #[arg(long)]
        texture: PathBuf,
        /// Texture-mix alphas in [0, 1]: 0 reconstructs, 1 swaps (comma-separated, distinct to
        /// two decimals, since they name the outputs).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "1",
            allow_negative_numbers = true
        )]
        alpha: Vec<f32>,
        /// Allow alphas outside [0, 1] (extrapolating past either texture).
        #[arg(long)]
        extrapolate: bool,
        /// A mask image of the structure image's size (as given, or after --load-size): the
        /// texture is swapped inside it (white) and kept outside.
        #[arg(long)]
        mask: Option<PathBuf>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Also write the float outputs to OUT/outputs.safetensors (`alpha_<a>` tensors).
        #[arg(long)]
        raw: bool,
        /// Scale the short sides to this many pixels (default: keep sizes already multiple of 16).
        #[arg(long)]
        load_size: Option<usize>,
        /// Refuse images larger than this many pixels after preprocessing.
        #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
        max_pixels: usize,
        #[arg(long, value_enum, default_value_t = NoiseArg::Fixed)]
        noise: NoiseArg,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// The official swapping grid: structure images down, texture images across.
    Grid {
        #[arg(long)]
        checkpoint: PathBuf,
        /// Folder of structure images.
        #[arg(long)]
        structures: PathBuf,
        /// Folder of texture images.
        #[arg(long)]
        textures: PathBuf,
        /// The grid PNG; the single images go to a folder beside it named after it.
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        load_size: Option<usize>,
        /// Refuse images larger than this many pixels after preprocessing.
        #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
        max_pixels: usize,
        #[arg(long, value_enum, default_value_t = NoiseArg::Fixed)]
        noise: NoiseArg,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// The official `swapping_for_eval` export: DATAROOT/input_structure/*.png and
    /// DATAROOT/input_style/*.png (same names, pre-sized) → OUT/images/<f>_{structure,style,rec,swap}.png.
    EvalExport {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        dataroot: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Refuse images larger than this many pixels.
        #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
        max_pixels: usize,
        #[arg(long, value_enum, default_value_t = NoiseArg::Random)]
        noise: NoiseArg,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Train a model: a new run in --out, or --resume the run there. Ctrl-C, SIGTERM or SIGHUP
    /// finishes the step, writes a checkpoint and exits; --resume continues bit for bit.
    #[command(after_help = TRAIN_HELP)]
    Train {
        /// The training preset.
        #[arg(long, value_parser = preset_parser())]
        preset: Option<String>,
        /// The images: a folder (recursive), a .zip of images, or an LMDB folder (data.mdb).
        #[arg(long)]
        data: Option<PathBuf>,
        /// The run directory (options.json, stats.jsonl, snapshots/, checkpoints/).
        #[arg(long)]
        out: PathBuf,
        /// Total optimizer calls (D and G alike; each sees --batch images).
        #[arg(long)]
        steps: Option<u64>,
        /// Total thousands of images (the official schedule is 25000).
        #[arg(long)]
        kimg: Option<f64>,
        /// Images per optimizer call; must be even (the preset's official batch by default).
        #[arg(long)]
        batch: Option<usize>,
        /// Split each batch into this many chunks as the official multi-GPU run did (pairs and
        /// reconstructed halves per chunk); defaults to the preset's GPU count, or with --batch
        /// to one chunk per device.
        #[arg(long)]
        num_gpus: Option<usize>,
        /// Train data-parallel on these devices, comma-separated, in chunk order (e.g.
        /// cuda:0,cuda:1,cuda:2,cuda:3 or wgpu:0,wgpu:1; flex,flex runs two CPU replicas).
        /// Each device takes an equal share of whole chunks of every batch; the count must
        /// divide --num-gpus. Not part of the run: --resume may use another list.
        #[arg(long)]
        devices: Option<String>,
        /// Seed of the initial weights, data order, crops and noise.
        #[arg(long)]
        seed: Option<u64>,
        /// Image-decoding threads.
        #[arg(long)]
        workers: Option<usize>,
        /// Continue the run in --out from its newest readable checkpoint (flags equal to the
        /// run's options are accepted; --data may name the dataset's new place).
        #[arg(long)]
        resume: bool,
        /// Also checkpoint every this many seconds (0: only by images) [default: 600].
        #[arg(long)]
        checkpoint_every_s: Option<u64>,
    },
    /// Principal directions of the structure codes (per location) and texture codes (per
    /// image) over a seeded sample of a dataset: the file `sae serve --pca` edits along.
    Pca {
        #[arg(long)]
        checkpoint: PathBuf,
        /// The images: a folder (recursive), a .zip of images, or an LMDB folder (data.mdb).
        #[arg(long)]
        data: PathBuf,
        /// The output `.safetensors`.
        #[arg(long)]
        out: PathBuf,
        /// How many images to sample (all of a smaller dataset).
        #[arg(long, default_value_t = 2000)]
        images: usize,
        /// The sample's seed: the same seed picks the same images.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Every image is resized to this square size before encoding.
        #[arg(long, default_value_t = 256)]
        load_size: usize,
        /// How many texture components to keep (structure codes keep all).
        #[arg(long, default_value_t = 64)]
        texture_components: usize,
        /// Images per encoder call.
        #[arg(long, default_value_t = 8)]
        batch: usize,
    },
    /// The interactive editor as a local web app: swaps, texture mixing, region editing and
    /// PCA edits (open the printed address in a browser).
    Serve {
        #[arg(long)]
        checkpoint: PathBuf,
        /// The PCA file of `sae pca` (enables the structure and texture direction edits).
        #[arg(long)]
        pca: Option<PathBuf>,
        /// Address to listen on; anything but a loopback address serves other machines too.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Port (0: any free port; the address is printed).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Every image is resized to this square size.
        #[arg(long, default_value_t = 256)]
        load_size: usize,
        /// The most pixels an uploaded image may decode to.
        #[arg(long, default_value_t = 4096 * 4096)]
        max_pixels: usize,
    },
    /// Dataset tools.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Write a model of a training preset with freshly initialised weights (for benchmarks and
    /// tests; `sae train` initialises its own).
    Init {
        /// The training preset whose networks to build.
        #[arg(long, value_parser = preset_parser())]
        preset: String,
        /// Seed of the weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The native output (`.safetensors`).
        #[arg(long)]
        out: PathBuf,
    },
    /// Convert an official `.pth` checkpoint to the native safetensors format.
    Convert {
        /// The official checkpoint.
        input: PathBuf,
        /// The native output (`.safetensors`).
        output: PathBuf,
    },
}

const TRAIN_HELP: &str = "Examples:
  sae train --preset tiny --data assets/shapes --out runs/tiny --steps 2000
  sae train --preset church256 --data church_outdoor_train_lmdb --out runs/church
  sae train --resume --out runs/church";

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Copy a dataset (an LMDB folder, a zip or an image folder) into a zip of its encoded
    /// images, so the default build (no C) can train on LSUN.
    Convert {
        /// The source dataset.
        #[arg(long)]
        from: PathBuf,
        /// The zip to write.
        #[arg(long)]
        to: PathBuf,
    },
}

type Res<T> = Result<T, String>;

fn noise_mode(noise: NoiseArg, seed: u64) -> NoiseMode {
    match noise {
        NoiseArg::Random => NoiseMode::Random(seed),
        NoiseArg::Fixed => NoiseMode::Fixed(seed),
        NoiseArg::Zero => NoiseMode::Zero,
    }
}

/// The `--preset` values with their one-line help, from the preset table.
fn preset_parser() -> PossibleValuesParser {
    PossibleValuesParser::new(
        TRAIN_PRESETS
            .iter()
            .map(|p| PossibleValue::new(p.name).help(p.about)),
    )
}

/// Loads a checkpoint of either format.
fn load_model(path: &Path, device: &Device) -> Res<(SwappingAutoencoder, ModelConfig)> {
    SwappingAutoencoder::load(path, device).map_err(|e| format!("--checkpoint: {e}"))
}

fn preprocess(load_size: Option<usize>) -> Preprocess {
    load_size.map_or(Preprocess::NONE, Preprocess::scale_shortside)
}

/// The largest `--max-pixels`: 16384 × 16384. Beyond it a single activation of the smallest
/// network would not fit in memory anyway.
const MAX_MAX_PIXELS: usize = 16384 * 16384;

fn check_max_pixels(n: usize) -> Res<()> {
    if n > MAX_MAX_PIXELS {
        return Err(format!(
            "--max-pixels {n}: at most {MAX_MAX_PIXELS} (16384 × 16384)"
        ));
    }
    Ok(())
}

/// The output names must be distinct, or one output would silently replace another.
fn check_distinct_names<'a>(
    names: impl IntoIterator<Item = (String, &'a Path)>,
    flag: &str,
) -> Res<()> {
    let mut seen: HashMap<String, &Path> = HashMap::new();
    for (name, source) in names {
        if let Some(first) = seen.insert(name.to_lowercase(), source) {
            return Err(format!(
                "{flag}: {} and {} would both write {name}; rename one",
                first.display(),
                source.display()
            ));
        }
    }
    Ok(())
}

fn check_load_size(load_size: Option<usize>) -> Res<()> {
    match load_size {
        Some(n) if !(16..=MAX_LOAD_SIZE).contains(&n) => Err(format!(
            "--load-size {n}: must be between 16 and {MAX_LOAD_SIZE}"
        )),
        _ => Ok(()),
    }
}

/// How one command reads its images: the preprocessing, the pixel budget and the smallest side
/// the checkpoint's encoder takes.
struct ImageInput {
    pre: Preprocess,
    max_pixels: usize,
    min_side: usize,
}

impl ImageInput {
    /// The input of a checkpoint whose configuration is `cfg` (`--load-size` already checked).
    fn new(load_size: Option<usize>, max_pixels: usize, cfg: &ModelConfig) -> Self {
        ImageInput {
            pre: preprocess(load_size),
            max_pixels,
            min_side: cfg.encoder.min_input_size(),
        }
    }

    /// Loads an image for the model, naming `flag` in every error: over the budget, or smaller
    /// than the encoder takes (its texture branch would shrink it below a 3×3 kernel,
    /// `EncoderConfig::min_input_size`).
    fn load(&self, path: &Path, flag: &str) -> Res<ImageTensor> {
        let img = image_io::load_image_within(path, self.pre, self.max_pixels).map_err(|e| {
            let hint = match e {
                image_io::ImageError::TooManyPixels { .. } => {
                    " (raise --max-pixels, or shrink it with --load-size)"
                }
                _ => "",
            };
            format!("{flag}: {e}{hint}")
        })?;
        if img.height.min(img.width) < self.min_side {
            return Err(format!(
                "{flag}: {} is {}x{} after preprocessing; this checkpoint's encoder needs at \
                 least {} px on each side (raise --load-size)",
                path.display(),
                img.width,
                img.height,
                self.min_side
            ));
        }
        Ok(img)
    }

    fn tensor(&self, path: &Path, flag: &str, device: &Device) -> Res<Tensor<4>> {
        let img = self.load(path, flag)?;
        images_to_tensor(&[img], device).map_err(|e| format!("{flag}: {e}"))
    }
}

/// Checks the texture-mix alphas: finite, in [0, 1] unless `extrapolate`, and distinct to two
/// decimals (they name the output files and tensors).
fn check_alphas(alphas: &[f32], extrapolate: bool) -> Res<()> {
    let mut names = std::collections::BTreeSet::new();
    for &a in alphas {
        if !a.is_finite() {
            return Err(format!("--alpha {a}: every alpha must be a finite number"));
        }
        if !extrapolate && !(0.0..=1.0).contains(&a) {
            return Err(format!(
                "--alpha {a}: must be in [0, 1] (0 reconstructs, 1 swaps); pass --extrapolate \
                 to go beyond"
            ));
        }
        if !names.insert(alpha_name(a)) {
            return Err(format!(
                "--alpha {a}: two alphas are {} to two decimals and would write the same output",
                alpha_name(a)
            ));
        }
    }
    Ok(())
}

fn alpha_name(a: f32) -> String {
    let name = format!("{a:.2}");
    // −0 (and anything that rounds to it) is the same output as 0.
    if name == "-0.00" {
        "0.00".to_string()
    } else {
        name
    }
}

/// The first image of a `[1, 3, h, w]` tensor.
fn first_image(t: Tensor<4>) -> Res<ImageTensor> {
    tensor_to_images(t)
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or_else(|| "the generator produced no image".to_string())
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn ensure_dir(path: &Path, flag: &str) -> Res<()> {
    std::fs::create_dir_all(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

fn images_in(dir: &Path, flag: &str) -> Res<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{flag} {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| {
                matches!(
                    e.to_string_lossy().to_lowercase().as_str(),
                    "png" | "jpg" | "jpeg"
                )
            })
        })
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(format!("{flag} {}: no PNG or JPEG images", dir.display()));
    }
    Ok(out)
}

fn save(t: Tensor<4>, path: &Path) -> Res<()> {
    image_io::save_png(&first_image(t)?, path).map_err(|e| e.to_string())
}

fn info(path: &Path, device: &Device) -> Res<()> {
    let (model, config) = load_model(path, device)?;
    println!("checkpoint: {}", path.display());
    println!(
        "networks:   E, G{}{}",
        if model.d.is_some() { ", D" } else { "" },
        if model.dpatch.is_some() {
            ", Dpatch"
        } else {
            ""
        }
    );
    println!(
        "parameters: E {}  G {}",
        model.e.num_params(),
        model.g.num_params()
    );
    if let Some(d) = &model.d {
        println!("            D {}", d.num_params());
    }
    if let Some(p) = &model.dpatch {
        println!("            Dpatch {}", p.num_params());
    }
    let factor = 1usize << config.encoder.num_downsampling_sp;
    println!(
        "structure code: {} channels at 1/{factor} resolution; texture code: {} dims",
        config.encoder.spatial_code_ch, config.encoder.global_code_ch
    );
    println!(
        "config:\n{}",
        serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn write_tensors(
    path: &Path,
    tensors: Vec<(String, Tensor<4>)>,
    extra: Vec<(String, Tensor<2>)>,
) -> Res<()> {
    let mut datas: Vec<(String, burn::tensor::TensorData)> = tensors
        .into_iter()
        .map(|(k, t)| (k, t.into_data().convert::<f32>()))
        .collect();
    datas.extend(
        extra
            .into_iter()
            .map(|(k, t)| (k, t.into_data().convert::<f32>())),
    );
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = datas
        .iter()
        .map(|(k, d)| {
            let v = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                d.shape().to_vec(),
                d.as_bytes(),
            )
            .expect("f32 data matches its shape");
            (k.clone(), v)
        })
        .collect();
    let bytes = safetensors::serialize(views, None::<HashMap<String, String>>)
        .map_err(|e| e.to_string())?;
    write_atomic(path, &bytes).map_err(|e| e.to_string())
}

fn run(cli: Cli) -> Res<()> {
    let device = cli.device.unwrap_or_else(default_device).device();
    match cli.command {
        Command::Info { checkpoint } => info(&checkpoint, &device),
        Command::Train {
            preset,
            data,
            out,
            steps,
            kimg,
            batch,
            num_gpus,
            devices,
            seed,
            workers,
            resume,
            checkpoint_every_s,
        } => {
            let devices = match (devices, cli.device) {
                (Some(_), Some(_)) => {
                    return Err("--devices: give either --device or --devices, not both".into());
                }
                (Some(list), None) => {
                    TrainDevices::parse(&list).map_err(|e| format!("--devices {list}: {e}"))?
                }
                (None, _) => TrainDevices::single(device.clone()),
            };
            let args = TrainArgs {
                preset,
                data,
                out,
                steps,
                kimg,
                batch,
                num_gpus,
                seed,
                workers,
                resume,
                checkpoint_every_s,
            };
            let stop =
                stop_on_signals().map_err(|e| format!("installing the signal handler: {e}"))?;
            launch(&args, devices, &stop).map_err(|e| e.to_string())?;
            Ok(())
        }
        Command::Data {
            command: DataCommand::Convert { from, to },
        } => {
            if to.extension().is_none_or(|e| e != "zip") {
                return Err(format!("--to {}: name the output *.zip", to.display()));
            }
            let src = open_dataset(&from).map_err(|e| format!("--from: {e}"))?;
            let n = convert_to_zip(src.as_ref(), &to).map_err(|e| format!("--to: {e}"))?;
            println!("wrote {n} images to {}", to.display());
            Ok(())
        }
        Command::Pca {
            checkpoint,
            data,
            out,
            images,
            seed,
            load_size,
            texture_components,
            batch,
        } => pca_command(
            &checkpoint,
            &data,
            &out,
            &DatasetPcaOptions {
                images,
                seed,
                load_size,
                batch,
                texture_components,
            },
            &device,
        ),
        Command::Serve {
            checkpoint,
            pca,
            host,
            port,
            load_size,
            max_pixels,
        } => {
            check_load_size(Some(load_size))?;
            if !load_size.is_multiple_of(16) {
                return Err(format!(
                    "--load-size {load_size}: must be a multiple of 16 (the images the encoder takes)"
                ));
            }
            check_max_pixels(max_pixels)?;
            serve::serve(
                serve::ServeOptions {
                    checkpoint,
                    pca,
                    addr: std::net::SocketAddr::new(host, port),
                    load_size,
                    max_pixels,
                },
                device,
            )
        }
        Command::Init { preset, seed, out } => {
            if out.extension().is_none_or(|e| e != "safetensors") {
                return Err(format!("--out {}: name it *.safetensors", out.display()));
            }
            let opts = sae_train::TrainOptions::preset(&preset, PathBuf::new())
                .ok_or_else(|| format!("--preset {preset}: unknown"))?;
            device.seed(seed);
            let model = opts.model.init(&device);
            save_native(&model, &opts.model, &out).map_err(|e| format!("--out: {e}"))?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Convert { input, output } => {
            if output.extension().is_none_or(|e| e != "safetensors") {
                return Err(format!(
                    "OUTPUT {}: the native format is safetensors; name it *.safetensors",
                    output.display()
                ));
            }
            let (model, config) =
                SwappingAutoencoder::load(&input, &device).map_err(|e| format!("INPUT: {e}"))?;
            save_native(&model, &config, &output).map_err(|e| format!("OUTPUT: {e}"))?;
            println!("wrote {}", output.display());
            Ok(())
        }
        Command::Encode {
            checkpoint,
            image,
            out,
            load_size,
            max_pixels,
        } => {
            check_load_size(load_size)?;
            check_max_pixels(max_pixels)?;
            let (model, cfg) = load_model(&checkpoint, &device)?;
            let input = ImageInput::new(load_size, max_pixels, &cfg);
            let x = input.tensor(&image, "--image", &device)?;
            let codes = Decoder::new(&model, NoiseMode::Zero).encode(x);
            write_tensors(
                &out,
                vec![("structure".into(), codes.structure)],
                vec![("texture".into(), codes.texture)],
            )
            .map_err(|e| format!("--out: {e}"))?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Swap {
            checkpoint,
            structure,
            texture,
            alpha,
            extrapolate,
            mask,
            out,
            raw,
            load_size,
            max_pixels,
            noise,
            seed,
        } => {
            check_load_size(load_size)?;
            check_max_pixels(max_pixels)?;
            check_alphas(&alpha, extrapolate)?;
            let (model, cfg) = load_model(&checkpoint, &device)?;
            let input = ImageInput::new(load_size, max_pixels, &cfg);
            let xs = input.load(&structure, "--structure")?;
            let xt = input.tensor(&texture, "--texture", &device)?;
            let mut dec = Decoder::new(&model, noise_mode(noise, seed));
            let src = dec.encode(
                images_to_tensor(std::slice::from_ref(&xs), &device).map_err(|e| e.to_string())?,
            );
            let tgt = dec.encode(xt).texture;
            let mask = match &mask {
                Some(m) => {
                    let dims = image_io::image_dimensions(m).map_err(|e| format!("--mask: {e}"))?;
                    let (ow, oh) = image_io::image_dimensions(&structure)
                        .map_err(|e| format!("--structure: {e}"))?;
                    if dims != (ow, oh) && dims != (xs.width, xs.height) {
                        return Err(format!(
                            "--mask: {} is {}x{}; it must be the structure image's size ({ow}x{oh}, \
                             or {}x{} after --load-size)",
                            m.display(),
                            dims.0,
                            dims.1,
                            xs.width,
                            xs.height
                        ));
                    }
                    let [_, _, h, w] = src.structure.dims();
                    let values =
                        image_io::load_mask(m, h, w).map_err(|e| format!("--mask: {e}"))?;
                    Some(Tensor::<4>::from_data(
                        TensorData::new(values, [1, 1, h, w]),
                        &device,
                    ))
                }
                None => None,
            };
            ensure_dir(&out, "--out")?;
            let images = dec.interpolate_codes(&src, tgt, &alpha, mask.as_ref());
            let mut raws = Vec::new();
            for (&a, img) in alpha.iter().zip(images) {
                let name = format!(
                    "{}_{}_{}.png",
                    stem(&structure),
                    stem(&texture),
                    alpha_name(a)
                );
                let path = out.join(&name);
                save(img.clone(), &path).map_err(|e| format!("--out: {e}"))?;
                println!("wrote {}", path.display());
                raws.push((format!("alpha_{}", alpha_name(a)), img));
            }
            if raw {
                let path = out.join("outputs.safetensors");
                write_tensors(&path, raws, vec![]).map_err(|e| format!("--out: {e}"))?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Grid {
            checkpoint,
            structures,
            textures,
            out,
            load_size,
            max_pixels,
            noise,
            seed,
        } => {
            check_load_size(load_size)?;
            check_max_pixels(max_pixels)?;
            let (model, cfg) = load_model(&checkpoint, &device)?;
            let input = ImageInput::new(load_size, max_pixels, &cfg);
            let s_paths = images_in(&structures, "--structures")?;
            let t_paths = images_in(&textures, "--textures")?;
            sae_model::atomic::check_target(&out).map_err(|e| format!("--out: {e}"))?;
            let singles = out.with_extension("");
            check_distinct_names(
                s_paths.iter().flat_map(|s| {
                    t_paths
                        .iter()
                        .map(move |t| (format!("{}_{}.png", stem(s), stem(t)), s.as_path()))
                }),
                "--structures/--textures",
            )?;
            ensure_dir(&singles, "--out")?;
            let mut dec = Decoder::new(&model, noise_mode(noise, seed));
            let rgb = |img: &ImageTensor| image_io::to_rgb8(img).map_err(|e| e.to_string());
            let mut t_imgs = Vec::new();
            let mut t_codes = Vec::new();
            for p in &t_paths {
                let img = input.load(p, "--textures")?;
                let x = images_to_tensor(std::slice::from_ref(&img), &device)
                    .map_err(|e| e.to_string())?;
                t_codes.push(dec.encode(x).texture);
                t_imgs.push(rgb(&img)?);
            }
            let mut rows: Vec<Vec<image_io::RgbImage>> = Vec::new();
            for p in &s_paths {
                let img = input.load(p, "--structures")?;
                let x = images_to_tensor(std::slice::from_ref(&img), &device)
                    .map_err(|e| e.to_string())?;
                let sp = dec.encode(x).structure;
                let mut row = vec![rgb(&img)?];
                for (tp, g) in t_paths.iter().zip(&t_codes) {
                    let y = first_image(dec.decode(sp.clone(), Style::Global(g.clone())))?;
                    let path = singles.join(format!("{}_{}.png", stem(p), stem(tp)));
                    image_io::save_png(&y, &path).map_err(|e| format!("--out: {e}"))?;
                    row.push(rgb(&y)?);
                }
                rows.push(row);
            }
            let cell = rows
                .iter()
                .flatten()
                .chain(&t_imgs)
                .fold((0, 0), |(w, h), im| (w.max(im.width()), h.max(im.height())));
            let mut layout: Vec<Vec<Option<&image_io::RgbImage>>> = vec![
                std::iter::once(None)
                    .chain(t_imgs.iter().map(Some))
                    .collect(),
            ];
            layout.extend(rows.iter().map(|r| r.iter().map(Some).collect()));
            let grid = image_io::grid(&layout, cell);
            image_io::save_rgb_png(&grid, &out).map_err(|e| format!("--out: {e}"))?;
            println!(
                "wrote {} and {} images in {}",
                out.display(),
                s_paths.len() * t_paths.len(),
                singles.display()
            );
            Ok(())
        }
        Command::EvalExport {
            checkpoint,
            dataroot,
            out,
            max_pixels,
            noise,
            seed,
        } => {
            check_max_pixels(max_pixels)?;
            let (model, cfg) = load_model(&checkpoint, &device)?;
            // The official evaluator loads these without any resize: they must be pre-sized.
            let input = ImageInput {
                pre: Preprocess::NONE,
                max_pixels,
                min_side: cfg.encoder.min_input_size(),
            };
            let s_dir = dataroot.join("input_structure");
            let t_dir = dataroot.join("input_style");
            let files = images_in(&s_dir, "--dataroot")?;
            check_distinct_names(files.iter().map(|f| (stem(f), f.as_path())), "--dataroot")?;
            let images = out.join("images");
            ensure_dir(&images, "--out")?;
            let mut dec = Decoder::new(&model, noise_mode(noise, seed));
            for s in &files {
                let name = s.file_name().expect("listed files have names");
                let t = t_dir.join(name);
                if !t.exists() {
                    return Err(format!(
                        "--dataroot: {} has no partner {}",
                        s.display(),
                        t.display()
                    ));
                }
                let raw = |p: &Path| -> Res<Tensor<4>> {
                    let img = image_io::load_rgb(p).map_err(|e| format!("--dataroot: {e}"))?;
                    let (w, h) = (img.width() as usize, img.height() as usize);
                    if w * h > input.max_pixels {
                        return Err(format!(
                            "--dataroot: {} is {w}x{h}, over the budget of {} pixels (raise \
                             --max-pixels)",
                            p.display(),
                            input.max_pixels
                        ));
                    }
                    let img = ImageTensor::from_rgb8(&img);
                    if img.height.min(img.width) < input.min_side {
                        return Err(format!(
                            "--dataroot: {} is {w}x{h}; this checkpoint's encoder needs at least \
                             {} px on each side",
                            p.display(),
                            input.min_side
                        ));
                    }
                    images_to_tensor(&[img], &device).map_err(|e| e.to_string())
                };
                let (xs, xt) = (raw(s)?, raw(&t)?);
                let cs = dec.encode(xs.clone());
                let gt = dec.encode(xt.clone()).texture;
                let f = stem(s);
                save(xs, &images.join(format!("{f}_structure.png")))?;
                save(xt, &images.join(format!("{f}_style.png")))?;
                save(
                    dec.decode(cs.structure.clone(), Style::Global(cs.texture)),
                    &images.join(format!("{f}_rec.png")),
                )?;
                save(
                    dec.decode(cs.structure, Style::Global(gt)),
                    &images.join(format!("{f}_swap.png")),
                )?;
            }
            println!("wrote {} pairs to {}", files.len(), images.display());
            Ok(())
        }
    }
}

/// `sae pca`: every flag checked before the model or the data is read.
fn pca_command(
    checkpoint: &Path,
    data: &Path,
    out: &Path,
    opts: &DatasetPcaOptions,
    device: &Device,
) -> Res<()> {
    if out.extension().is_none_or(|e| e != "safetensors") {
        return Err(format!("--out {}: name it *.safetensors", out.display()));
    }
    if !(2..=10_000_000).contains(&opts.images) {
        return Err(format!(
            "--images {}: must be between 2 and 10000000",
            opts.images
        ));
    }
    if !(1..=256).contains(&opts.batch) {
        return Err(format!("--batch {}: must be between 1 and 256", opts.batch));
    }
    if !(1..=MAX_PCA_DIM).contains(&opts.texture_components) {
        return Err(format!(
            "--texture-components {}: must be between 1 and {MAX_PCA_DIM}",
            opts.texture_components
        ));
    }
    check_load_size(Some(opts.load_size))?;
    let dataset = open_dataset(data).map_err(|e| format!("--data: {e}"))?;
    let (model, config) = load_model(checkpoint, device)?;
    let step = 1usize << config.encoder.num_downsampling_sp;
    let min = config.encoder.min_input_size();
    if opts.load_size < min || !opts.load_size.is_multiple_of(step) {
        return Err(format!(
            "--load-size {}: this checkpoint's encoder needs a multiple of {step} of at least {min}",
            opts.load_size
        ));
    }
    let tty = std::io::stderr().is_terminal();
    let mut last_tenth = 0;
    let result = dataset_pca(
        dataset.as_ref(),
        &model,
        &config,
        opts,
        device,
        |done, total| {
            if tty {
                let filled = 30 * done / total.max(1);
                eprint!(
                    "\r[{}{}] {done}/{total} images",
                    "#".repeat(filled),
                    " ".repeat(30 - filled)
                );
            } else if 10 * done / total.max(1) > last_tenth {
                last_tenth = 10 * done / total.max(1);
                eprintln!("{done}/{total} images");
            }
        },
    )
    .map_err(|e| format!("--data: {e}"))?;
    if tty {
        eprintln!();
    }
    for (image, reason) in &result.skipped {
        eprintln!("skipped {image}: {reason}");
    }
    result.pca.save(out).map_err(|e| format!("--out: {e}"))?;
    let (s, t) = (&result.pca.structure, &result.pca.texture);
    let share = |p: &sae_model::Pca, k: usize| {
        let total: f32 = p.variances.iter().sum();
        100.0 * p.variances.iter().take(k).sum::<f32>() / total.max(f32::MIN_POSITIVE)
    };
    println!(
        "wrote {}: {} images; structure: {} components over {} locations (first 3: {:.0} % of \
         the variance); texture: {} components (first 3: {:.0} %)",
        out.display(),
        t.images,
        s.len(),
        s.samples,
        share(s, 3),
        t.len(),
        share(t, 3)
    );
    Ok(())
}

fn main() -> ExitCode {
    sae_model::device::keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
