//! `sae serve`: the interactive editor as a local web app (`docs/editor.md`).
//!
//! One page (`editor.html`, served from the binary) talks to a small JSON API. Every model call
//! runs on one worker thread that owns the model; HTTP handlers hand it jobs through a bounded
//! queue and answer "busy" (503) when the queue is full, so many clients are served safely and
//! one is served well. Each uploaded image is preprocessed and encoded once; its codes stay in
//! a small cache, so a slider move runs the generator only.
//!
//! Requests never name a path: images arrive as request bodies or come from the gallery built
//! into the binary, and results leave as PNG bytes.

use std::collections::{HashMap, VecDeque};
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use burn::tensor::{Device, Tensor, TensorData};
use sae_model::image_io::{self, ImageTensor, Preprocess};
use sae_model::inference::{Decoder, NoiseMode, images_to_tensor, mix_textures, tensor_to_images};
use sae_model::{CodePca, Codes, SwappingAutoencoder, self_similarity_mask};
use sae_nn::{Style, nearest_resize};
use serde::Deserialize;
use tokio::sync::oneshot;

/// The page.
const PAGE: &str = include_str!("editor.html");

/// The built-in gallery: the demo scenes of `assets/images`.
const GALLERY: [(&str, &[u8]); 3] = [
    (
        "scene_a",
        include_bytes!("../../../assets/images/scene_a.png"),
    ),
    (
        "scene_b",
        include_bytes!("../../../assets/images/scene_b.png"),
    ),
    (
        "scene_c",
        include_bytes!("../../../assets/images/scene_c.png"),
    ),
];

/// The largest upload: 32 MiB of encoded image.
pub const MAX_UPLOAD_BYTES: usize = 32 << 20;
/// Jobs waiting for the model beyond the one running; more get "busy".
pub const QUEUE_DEPTH: usize = 4;
/// Encoded images kept (oldest dropped first).
const CACHE: usize = 32;

/// How `sae serve` was asked to run.
pub struct ServeOptions {
    /// The checkpoint.
    pub checkpoint: PathBuf,
    /// The PCA file of `sae pca`, if any.
    pub pca: Option<PathBuf>,
    /// Address to bind.
    pub addr: SocketAddr,
    /// Every image is resized to this square size.
    pub load_size: usize,
    /// The most pixels an upload may decode to.
    pub max_pixels: usize,
}

/// One request's edit, as the page sends it.
#[derive(Clone, Debug, Deserialize)]
pub struct RenderRequest {
    /// Image id of the structure image.
    pub structure: u64,
    /// Image id of the texture image.
    pub texture: u64,
    /// Texture mix: 0 reconstructs the structure image, 1 swaps in the texture.
    pub alpha: f32,
    /// Region: base64 of `h·w` bytes (0 outside, 255 inside) at the image size; none = all.
    #[serde(default)]
    pub mask: Option<String>,
    /// Structure edit: `(component, strength in standard deviations)`, inside the region.
    #[serde(default)]
    pub structure_edit: Option<(usize, f32)>,
    /// Texture edit: `(component, strength)`, applied to the mixed texture.
    #[serde(default)]
    pub texture_edit: Option<(usize, f32)>,
}

/// A self-similarity region request: the point in image pixels, the cosine threshold.
#[derive(Clone, Debug, Deserialize)]
pub struct SimilarRequest {
    /// Image id.
    pub structure: u64,
    /// `[x, y]` in image pixels.
    pub point: [usize; 2],
    /// Cosine-similarity threshold in `[-1, 1]`.
    pub threshold: f32,
}

type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Job {
    Upload(Vec<u8>, Reply<(u64, Vec<u8>)>),
    Render(Box<RenderRequest>, Reply<(Vec<u8>, f64)>),
    Similar(SimilarRequest, Reply<String>),
}

struct Entry {
    image: ImageTensor,
    codes: Codes,
}

/// What the worker thread owns.
pub struct Editor {
    model: SwappingAutoencoder,
    pca: Option<CodePca>,
    device: Device,
    pre: Preprocess,
    max_pixels: usize,
    min_side: usize,
    images: HashMap<u64, Entry>,
    order: VecDeque<u64>,
    next_id: u64,
}

impl Editor {
    /// An editor over `model` (whose encoder takes images of at least `min_side` px).
    pub fn new(
        model: SwappingAutoencoder,
        pca: Option<CodePca>,
        device: Device,
        load_size: usize,
        max_pixels: usize,
        min_side: usize,
    ) -> Self {
        Self {
            model,
            pca,
            device,
            pre: Preprocess::resize(load_size),
            max_pixels,
            min_side,
            images: HashMap::new(),
            order: VecDeque::new(),
            next_id: 1,
        }
    }

    /// Decodes (within the pixel budget, checked before decoding), resizes and encodes an
    /// image; returns its id and the preprocessed image as PNG.
    pub fn upload(&mut self, bytes: &[u8]) -> Result<(u64, Vec<u8>), String> {
        let reader = image::ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("not an image: {e}"))?;
        let (w, h) = reader
            .into_dimensions()
            .map_err(|e| format!("not a readable PNG or JPEG: {e}"))?;
        if (w as usize).saturating_mul(h as usize) > self.max_pixels {
            return Err(format!(
                "the image is {w}×{h}, more than the {} pixels allowed (sae serve --max-pixels)",
                self.max_pixels
            ));
        }
        let rgb = image_io::decode_rgb(bytes, std::path::Path::new("upload"))
            .map_err(|e| e.to_string())?;
        let image = image_io::test_transform(&rgb, self.pre);
        if image.height.min(image.width) < self.min_side {
            return Err(format!(
                "this checkpoint's encoder needs images of at least {} px (sae serve --load-size)",
                self.min_side
            ));
        }
        let png = png_of(&image)?;
        let x = images_to_tensor(std::slice::from_ref(&image), &self.device)
            .map_err(|e| e.to_string())?;
        let codes = self.model.e.forward(x);
        let id = self.next_id;
        self.next_id += 1;
        self.images.insert(id, Entry { image, codes });
        self.order.push_back(id);
        while self.order.len() > CACHE {
            if let Some(old) = self.order.pop_front() {
                self.images.remove(&old);
            }
        }
        Ok((id, png))
    }

    fn entry(&self, id: u64) -> Result<&Entry, String> {
        self.images
            .get(&id)
            .ok_or_else(|| format!("image {id} is not (or no longer) loaded; upload it again"))
    }

    /// The mask of a request as `[1, 1, h, w]` in `[0, 1]`.
    fn mask(&self, mask: &str, h: usize, w: usize) -> Result<Tensor<4>, String> {
        let bytes = B64
            .decode(mask)
            .map_err(|e| format!("mask: not base64: {e}"))?;
        if bytes.len() != h * w {
            return Err(format!(
                "mask: {} bytes for a {w}×{h} image (one byte per pixel)",
                bytes.len()
            ));
        }
        let values: Vec<f32> = bytes.iter().map(|&b| f32::from(b) / 255.0).collect();
        Ok(Tensor::from_data(
            TensorData::new(values, [1, 1, h, w]),
            &self.device,
        ))
    }

    /// Runs one edit and returns the result as PNG and the milliseconds it took. The steps
    /// are the library's (`docs/editor.md`), so the same inputs give the same bytes there.
    pub fn render(&mut self, r: &RenderRequest) -> Result<(Vec<u8>, f64), String> {
        let start = Instant::now();
        if !r.alpha.is_finite() || !(0.0..=1.0).contains(&r.alpha) {
            return Err(format!("alpha {}: must be in [0, 1]", r.alpha));
        }
        let s = self.entry(r.structure)?;
        let t = self.entry(r.texture)?;
        let (h, w) = (s.image.height, s.image.width);
        let mask = r.mask.as_deref().map(|m| self.mask(m, h, w)).transpose()?;
        let pca = |what: &str| {
            self.pca
                .as_ref()
                .ok_or_else(|| format!("{what}: the server has no PCA (sae serve --pca)"))
        };
        let mut structure = s.codes.structure.clone();
        if let Some((component, strength)) = r.structure_edit {
            check_strength(strength)?;
            let region = mask
                .clone()
                .unwrap_or_else(|| Tensor::ones([1, 1, h, w], &self.device));
            structure = pca("structure edit")?
                .structure
                .edit_structure(structure, component, strength, region)
                .map_err(|e| format!("structure edit: {e}"))?;
        }
        let mut mix = mix_textures(s.codes.texture.clone(), t.codes.texture.clone(), r.alpha);
        if let Some((component, strength)) = r.texture_edit {
            check_strength(strength)?;
            mix = pca("texture edit")?
                .texture
                .edit_texture(mix, component, strength)
                .map_err(|e| format!("texture edit: {e}"))?;
        }
        let own = s.codes.texture.clone();
        let mut decoder = Decoder::new(&self.model, NoiseMode::Fixed(0));
        let out = match mask {
            Some(m) => decoder.decode_masked(structure, mix, own, m),
            None => decoder.decode(structure, Style::Global(mix)),
        };
        let image = tensor_to_images(out)
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .ok_or("the generator produced no image")?;
        let png = png_of(&image)?;
        Ok((png, start.elapsed().as_secs_f64() * 1e3))
    }

    /// The self-similarity region around a point, as base64 mask bytes at the image size.
    pub fn similar(&self, r: &SimilarRequest) -> Result<String, String> {
        let s = self.entry(r.structure)?;
        let (h, w) = (s.image.height, s.image.width);
        let [x, y] = r.point;
        if x >= w || y >= h {
            return Err(format!("point ({x}, {y}) is outside the {w}×{h} image"));
        }
        if !r.threshold.is_finite() || !(-1.0..=1.0).contains(&r.threshold) {
            return Err(format!("threshold {}: must be in [-1, 1]", r.threshold));
        }
        let [_, _, ch, cw] = s.codes.structure.dims();
        let m = self_similarity_mask(
            s.codes.structure.clone(),
            [y * ch / h, x * cw / w],
            r.threshold,
        );
        let m = nearest_resize(m, [h, w]);
        let bytes: Vec<u8> = m
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?
            .into_iter()
            .map(|v| if v > 0.5 { 255 } else { 0 })
            .collect();
        Ok(B64.encode(bytes))
    }
}

fn check_strength(s: f32) -> Result<(), String> {
    if !s.is_finite() || s.abs() > 10.0 {
        return Err(format!(
            "strength {s}: must be within ±10 standard deviations"
        ));
    }
    Ok(())
}

fn png_of(image: &ImageTensor) -> Result<Vec<u8>, String> {
    let rgb = image_io::to_rgb8(image).map_err(|e| e.to_string())?;
    image_io::encode_png(&rgb).map_err(|e| e.to_string())
}

#[derive(Clone)]
struct AppState {
    jobs: SyncSender<Job>,
    info: Arc<serde_json::Value>,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": msg.into() })),
    )
        .into_response()
}

/// Queues a job; "busy" when the queue is full.
async fn submit<T>(state: &AppState, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    match state.jobs.try_send(job(tx)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy: the editor is working on other requests; try again",
            ));
        }
        Err(TrySendError::Disconnected(_)) => {
            return Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the model worker stopped",
            ));
        }
    }
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(StatusCode::UNPROCESSABLE_ENTITY, e)),
        Err(_) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the model worker stopped",
        )),
    }
}

fn image_response(id: u64, png: Vec<u8>) -> Response {
    axum::Json(serde_json::json!({ "id": id, "png": B64.encode(png) })).into_response()
}

async fn upload(State(state): State<AppState>, body: Bytes) -> Response {
    match submit(&state, |tx| Job::Upload(body.to_vec(), tx)).await {
        Ok((id, png)) => image_response(id, png),
        Err(r) => r,
    }
}

async fn gallery_image(State(state): State<AppState>, UrlPath(name): UrlPath<String>) -> Response {
    let Some((_, bytes)) = GALLERY.iter().find(|(n, _)| *n == name) else {
        return error(StatusCode::NOT_FOUND, format!("no gallery image {name:?}"));
    };
    match submit(&state, |tx| Job::Upload(bytes.to_vec(), tx)).await {
        Ok((id, png)) => image_response(id, png),
        Err(r) => r,
    }
}

async fn render(State(state): State<AppState>, body: Bytes) -> Response {
    let req: RenderRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("render request: {e}")),
    };
    match submit(&state, |tx| Job::Render(Box::new(req), tx)).await {
        Ok((png, ms)) => (
            [
                (header::CONTENT_TYPE, "image/png".to_string()),
                (
                    header::HeaderName::from_static("x-render-ms"),
                    format!("{ms:.1}"),
                ),
            ],
            png,
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn similar(State(state): State<AppState>, body: Bytes) -> Response {
    let req: SimilarRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("similar request: {e}")),
    };
    match submit(&state, |tx| Job::Similar(req, tx)).await {
        Ok(mask) => axum::Json(serde_json::json!({ "mask": mask })).into_response(),
        Err(r) => r,
    }
}

/// Loads the checkpoint and the PCA and checks that they belong together.
fn load_editor(
    checkpoint: &std::path::Path,
    pca: Option<&std::path::Path>,
    device: Device,
    load_size: usize,
    max_pixels: usize,
) -> Result<(Editor, serde_json::Value), String> {
    let (model, config) =
        SwappingAutoencoder::load(checkpoint, &device).map_err(|e| format!("--checkpoint: {e}"))?;
    let pca = pca
        .map(|p| CodePca::load(p).map_err(|e| format!("--pca: {e}")))
        .transpose()?;
    if let Some(p) = &pca
        && (p.structure.dim != config.encoder.spatial_code_ch
            || p.texture.dim != config.encoder.global_code_ch)
    {
        return Err(format!(
            "--pca: made for codes of {} and {} channels, the checkpoint has {} and {}",
            p.structure.dim,
            p.texture.dim,
            config.encoder.spatial_code_ch,
            config.encoder.global_code_ch
        ));
    }
    let min_side = config.encoder.min_input_size();
    if load_size < min_side {
        return Err(format!(
            "--load-size {load_size}: this checkpoint's encoder needs at least {min_side}"
        ));
    }
    let info = serde_json::json!({
        "load_size": load_size,
        "structure_components": pca.as_ref().map_or(0, |p| p.structure.len()),
        "texture_components": pca.as_ref().map_or(0, |p| p.texture.len()),
        "gallery": GALLERY.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "queue": QUEUE_DEPTH,
    });
    let editor = Editor::new(model, pca, device, load_size, max_pixels, min_side);
    Ok((editor, info))
}

/// Runs the server until Ctrl-C. Prints `serving on http://ADDR/` once it listens.
///
/// # Errors
/// The checkpoint or PCA file cannot be read, or the address cannot be bound.
pub fn serve(opts: ServeOptions, device: Device) -> Result<(), String> {
    let (jobs, queue) = sync_channel::<Job>(QUEUE_DEPTH);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (checkpoint, pca_path) = (opts.checkpoint.clone(), opts.pca.clone());
    let (load_size, max_pixels) = (opts.load_size, opts.max_pixels);
    // The worker owns the model from the start: loading happens on its thread, and whether it
    // worked comes back before the server listens.
    std::thread::spawn(move || {
        let mut editor = match load_editor(
            &checkpoint,
            pca_path.as_deref(),
            device,
            load_size,
            max_pixels,
        ) {
            Ok((editor, info)) => {
                let _ = ready_tx.send(Ok(info));
                editor
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        // A client that gave up has dropped its receiver; its result is discarded.
        for job in queue {
            match job {
                Job::Upload(bytes, tx) => {
                    let _ = tx.send(editor.upload(&bytes));
                }
                Job::Render(r, tx) => {
                    let _ = tx.send(editor.render(&r));
                }
                Job::Similar(r, tx) => {
                    let _ = tx.send(editor.similar(&r));
                }
            }
        }
    });
    let info = Arc::new(
        ready_rx
            .recv()
            .map_err(|_| "the model worker stopped while loading".to_string())??,
    );
    let state = AppState { jobs, info };
    let app = Router::new()
        .route(
            "/",
            get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE) }),
        )
        .route(
            "/api/info",
            get(|State(s): State<AppState>| async move { axum::Json((*s.info).clone()) }),
        )
        .route("/api/image", post(upload))
        .route("/api/gallery/{name}", post(gallery_image))
        .route("/api/render", post(render))
        .route("/api/similar", post(similar))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES))
        .with_state(state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the server runtime: {e}"))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.addr)
            .await
            .map_err(|e| format!("--host/--port {}: {e}", opts.addr))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("--host/--port: {e}"))?;
        println!("serving on http://{addr}/");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| format!("server: {e}"))
    })
}
