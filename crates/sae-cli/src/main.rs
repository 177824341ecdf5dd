//! `sae`: the Swapping Autoencoder command-line tool. Every flag is validated before any work,
//! and a bad one is named in the error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use clap::{Parser, Subcommand, ValueEnum};
use sae_model::image_io::{self, ImageTensor, Preprocess};
use sae_model::inference::{Decoder, NoiseMode};
use sae_model::native::{load_native, save_native, write_atomic};
use sae_model::{ModelConfig, SwappingAutoencoder};
use sae_nn::Style;
use sae_train::data::{convert_to_zip, open_dataset};
use sae_train::{TrainArgs, launch, stop_on_ctrl_c};

#[derive(Parser, Debug)]
#[command(
    name = "sae",
    version,
    about = "Swapping Autoencoder: inspect, convert, encode, swap"
)]
struct Cli {
    /// Backend to run on (only the backends compiled into this binary are offered).
    #[arg(long, global = true, value_enum, default_value_t = Backend::default_choice())]
    device: Backend,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Backend {
    #[cfg(feature = "flex")]
    Flex,
    #[cfg(feature = "ndarray")]
    Ndarray,
    #[cfg(feature = "wgpu")]
    Wgpu,
    #[cfg(feature = "cuda")]
    Cuda,
}

impl Backend {
    #[allow(unreachable_code)]
    fn default_choice() -> Self {
        #[cfg(feature = "flex")]
        return Backend::Flex;
        #[cfg(feature = "cuda")]
        return Backend::Cuda;
        #[cfg(feature = "wgpu")]
        return Backend::Wgpu;
        #[cfg(feature = "ndarray")]
        return Backend::Ndarray;
    }

    fn device(self) -> Device {
        match self {
            #[cfg(feature = "flex")]
            Backend::Flex => Device::flex(),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            Backend::Ndarray => Device::ndarray(),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Device::wgpu(Default::default()),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Device::cuda(0),
        }
    }
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
        /// Texture-mix alphas: 0 reconstructs, 1 swaps (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1")]
        alpha: Vec<f32>,
        /// A mask image: the texture is swapped inside it (white) and kept outside.
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
        #[arg(long, value_enum, default_value_t = NoiseArg::Random)]
        noise: NoiseArg,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Train a model (spec 8): a new run in --out, or --resume the run there. Ctrl-C finishes
    /// the step, writes a checkpoint and exits; --resume continues bit for bit.
    #[command(after_help = TRAIN_HELP)]
    Train {
        /// A training preset: tiny (64 px, for CPU tests), quickstart (32 px, the CPU
        /// quickstart's reweighted recipe), church256, bedroom256, ffhq512, ffhq1024,
        /// ffhq1024-small-structure, mountain512, afhq256, default.
        #[arg(long)]
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
        /// reconstructed halves per chunk); defaults to the preset's GPU count, or 1 with --batch.
        #[arg(long)]
        num_gpus: Option<usize>,
        /// Seed of the initial weights, data order, crops and noise.
        #[arg(long)]
        seed: Option<u64>,
        /// Image-decoding threads.
        #[arg(long)]
        workers: Option<usize>,
        /// Continue the run in --out from its newest checkpoint.
        #[arg(long)]
        resume: bool,
    },
    /// Dataset tools.
    Data {
        #[command(subcommand)]
        command: DataCommand,
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

/// Loads an official `.pth` or a native `.safetensors` checkpoint, by its first bytes.
fn load_model(path: &Path, device: &Device) -> Res<(SwappingAutoencoder, ModelConfig)> {
    let head = std::fs::read(path)
        .map_err(|e| format!("--checkpoint {}: {e}", path.display()))
        .map(|b| b.into_iter().take(8).collect::<Vec<u8>>())?;
    let is_zip = head.starts_with(b"PK");
    let is_pickle = head.first() == Some(&0x80);
    if is_zip || is_pickle {
        SwappingAutoencoder::load_official(path, device)
            .map_err(|e| format!("--checkpoint {}: {e}", path.display()))
    } else {
        load_native(path, device).map_err(|e| format!("--checkpoint {}: {e}", path.display()))
    }
}

fn preprocess(load_size: Option<usize>) -> Preprocess {
    load_size.map_or(Preprocess::None, Preprocess::ScaleShortside)
}

fn check_load_size(load_size: Option<usize>) -> Res<()> {
    match load_size {
        Some(n) if n < 16 => Err(format!("--load-size {n}: must be at least 16")),
        _ => Ok(()),
    }
}

fn to_tensor(img: &ImageTensor, device: &Device) -> Tensor<4> {
    Tensor::from_data(
        burn::tensor::TensorData::new(img.data.clone(), [1, 3, img.height, img.width]),
        device,
    )
}

fn from_tensor(t: Tensor<4>) -> Res<ImageTensor> {
    let [_, c, h, w] = t.dims();
    if c != 3 {
        return Err(format!("the generator produced {c} channels, not 3"));
    }
    let data = t
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| format!("reading the output: {e:?}"))?;
    Ok(ImageTensor {
        height: h,
        width: w,
        data,
    })
}

/// Loads an image for a model whose encoder takes at least `min_side` px (see
/// [`fits_encoder`]).
fn load(
    path: &Path,
    flag: &str,
    pre: Preprocess,
    min_side: usize,
    device: &Device,
) -> Res<Tensor<4>> {
    let img = image_io::load_image(path, pre).map_err(|e| format!("{flag}: {e}"))?;
    fits_encoder(&img, flag, path, min_side)?;
    Ok(to_tensor(&img, device))
}

/// Refuses an image the encoder cannot take (its texture branch would shrink it below a 3×3
/// kernel, `EncoderConfig::min_input_size`), naming the flag, instead of failing inside the
/// network.
fn fits_encoder(img: &ImageTensor, flag: &str, path: &Path, min_side: usize) -> Res<()> {
    if img.height.min(img.width) < min_side {
        return Err(format!(
            "{flag}: {} is {}x{} after preprocessing; this checkpoint's encoder needs at least \
             {min_side} px on each side (raise --load-size)",
            path.display(),
            img.width,
            img.height
        ));
    }
    Ok(())
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
    image_io::save_png(&from_tensor(t)?, path).map_err(|e| e.to_string())
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
    let device = cli.device.device();
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
            seed,
            workers,
            resume,
        } => {
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
            };
            let stop =
                stop_on_ctrl_c().map_err(|e| format!("installing the Ctrl-C handler: {e}"))?;
            launch(&args, &device, &stop).map_err(|e| e.to_string())?;
            Ok(())
        }
        Command::Data {
            command: DataCommand::Convert { from, to },
        } => {
            if to.extension().is_none_or(|e| e != "zip") {
                return Err(format!("--to {}: name the output *.zip", to.display()));
            }
            let src = open_dataset(&from).map_err(|e| format!("--from: {e}"))?;
            let n = convert_to_zip(src.as_ref(), &to).map_err(|e| e.to_string())?;
            println!("wrote {n} images to {}", to.display());
            Ok(())
        }
        Command::Convert { input, output } => {
            if output.extension().is_none_or(|e| e != "safetensors") {
                return Err(format!(
                    "OUTPUT {}: the native format is safetensors; name it *.safetensors",
                    output.display()
                ));
            }
            let (model, config) = SwappingAutoencoder::load_official(&input, &device)
                .map_err(|e| format!("INPUT {}: {e}", input.display()))?;
            save_native(&model, &config, &output).map_err(|e| e.to_string())?;
            println!("wrote {}", output.display());
            Ok(())
        }
        Command::Encode {
            checkpoint,
            image,
            out,
            load_size,
        } => {
            check_load_size(load_size)?;
            let (model, cfg) = load_model(&checkpoint, &device)?;
            let min = cfg.encoder.min_input_size();
            let x = load(&image, "--image", preprocess(load_size), min, &device)?;
            let codes = model.e.forward(x);
            write_tensors(
                &out,
                vec![("structure".into(), codes.structure)],
                vec![("texture".into(), codes.texture)],
            )?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Swap {
            checkpoint,
            structure,
            texture,
            alpha,
            mask,
            out,
            raw,
            load_size,
            noise,
            seed,
        } => {
            check_load_size(load_size)?;
            if let Some(a) = alpha.iter().find(|a| !a.is_finite()) {
                return Err(format!("--alpha {a}: every alpha must be a finite number"));
            }
            let (model, cfg) = load_model(&checkpoint, &device)?;
            let (pre, min) = (preprocess(load_size), cfg.encoder.min_input_size());
            let xs = load(&structure, "--structure", pre, min, &device)?;
            let xt = load(&texture, "--texture", pre, min, &device)?;
            ensure_dir(&out, "--out")?;
            let mut dec = Decoder::new(&model, noise_mode(noise, seed));
            let src = dec.encode(xs);
            let tgt = dec.encode(xt).texture;
            let mask = match &mask {
                Some(m) => {
                    let [_, _, h, w] = src.structure.dims();
                    let values =
                        image_io::load_mask(m, h, w).map_err(|e| format!("--mask: {e}"))?;
                    Some(Tensor::<4>::from_data(
                        burn::tensor::TensorData::new(values, [1, 1, h, w]),
                        &device,
                    ))
                }
                None => None,
            };
            let mut raws = Vec::new();
            for &a in &alpha {
                let mix = src.texture.clone() * (1.0 - a) + tgt.clone() * a;
                let img = match &mask {
                    Some(m) => dec.decode_masked(
                        src.structure.clone(),
                        mix,
                        src.texture.clone(),
                        m.clone(),
                    ),
                    None => dec.decode(src.structure.clone(), Style::Global(mix)),
                };
                let name = format!("{}_{}_{a:.2}.png", stem(&structure), stem(&texture));
                save(img.clone(), &out.join(&name))?;
                println!("wrote {}", out.join(&name).display());
                raws.push((format!("alpha_{a:.2}"), img));
            }
            if raw {
                let path = out.join("outputs.safetensors");
                write_tensors(&path, raws, vec![])?;
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
            noise,
            seed,
        } => {
            check_load_size(load_size)?;
            let (model, cfg) = load_model(&checkpoint, &device)?;
            let (pre, min) = (preprocess(load_size), cfg.encoder.min_input_size());
            let s_paths = images_in(&structures, "--structures")?;
            let t_paths = images_in(&textures, "--textures")?;
            let singles = out.with_extension("");
            ensure_dir(&singles, "--out")?;
            let mut dec = Decoder::new(&model, noise_mode(noise, seed));
            let mut t_imgs = Vec::new();
            let mut t_codes = Vec::new();
            for p in &t_paths {
                let x = load(p, "--textures", pre, min, &device)?;
                t_codes.push(dec.encode(x.clone()).texture);
                t_imgs.push(image_io::to_rgb8(&from_tensor(x)?).map_err(|e| e.to_string())?);
            }
            let mut rows: Vec<Vec<image_io::RgbImage>> = Vec::new();
            for p in &s_paths {
                let x = load(p, "--structures", pre, min, &device)?;
                let sp = dec.encode(x.clone()).structure;
                let mut row = vec![image_io::to_rgb8(&from_tensor(x)?).map_err(|e| e.to_string())?];
                for (tp, g) in t_paths.iter().zip(&t_codes) {
                    let y = from_tensor(dec.decode(sp.clone(), Style::Global(g.clone())))?;
                    let path = singles.join(format!("{}_{}.png", stem(p), stem(tp)));
                    image_io::save_png(&y, &path).map_err(|e| e.to_string())?;
                    row.push(image_io::to_rgb8(&y).map_err(|e| e.to_string())?);
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
            image_io::save_rgb8(&grid, &out).map_err(|e| e.to_string())?;
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
            noise,
            seed,
        } => {
            let (model, cfg) = load_model(&checkpoint, &device)?;
            let min = cfg.encoder.min_input_size();
            let s_dir = dataroot.join("input_structure");
            let t_dir = dataroot.join("input_style");
            let files = images_in(&s_dir, "--dataroot")?;
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
                // The official evaluator loads these without any resize: they must be pre-sized.
                let raw = |p: &Path| -> Res<Tensor<4>> {
                    let img = image_io::load_rgb(p).map_err(|e| format!("--dataroot: {e}"))?;
                    let img = ImageTensor::from_rgb8(&img);
                    fits_encoder(&img, "--dataroot", p, min)?;
                    Ok(to_tensor(&img, &device))
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

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
