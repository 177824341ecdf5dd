//! The generator G (the official `models/networks/generator.py::StyleGAN2ResnetGenerator`).

use std::collections::BTreeMap;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use sae_nn::{
    ConvLayer, ConvLayerConfig, GeneratorModulation, GeneratorModulationConfig, Noise, NoiseRng,
    Style, StyledConv, StyledConvConfig, ToRgb, ToRgbConfig, bilinear_up2, nearest_resize,
    normalize,
};

/// Explicit configuration of a [`Generator`].
#[derive(Config, Debug, PartialEq)]
pub struct GeneratorConfig {
    /// Structure-code channels (the input).
    pub spatial_code_ch: usize,
    /// Style dimension (texture-code width).
    pub style_dim: usize,
    /// Output widths of the resolution-preserving head blocks.
    pub head_channels: Vec<usize>,
    /// Output widths of the ×2 upsampling blocks (one per encoder downsampling).
    pub up_channels: Vec<usize>,
    /// Noise in the upsampling blocks (head blocks always add noise, as in the official code).
    #[config(default = true)]
    pub use_noise: bool,
    /// 1-D taps of the upsampling blur (`[1, 3, 3, 1]`, or `[1]` without antialiasing).
    #[config(default = "vec![1.0, 3.0, 3.0, 1.0]")]
    pub blur_kernel: Vec<f32>,
}

impl GeneratorConfig {
    /// Builds the generator.
    ///
    /// # Panics
    /// If there are no head or no upsampling blocks.
    pub fn init(&self, device: &Device) -> Generator {
        assert!(
            !self.head_channels.is_empty() && !self.up_channels.is_empty(),
            "GeneratorConfig: needs at least one head and one upsampling block, got {self:?}"
        );
        let s = self.style_dim;
        let mut cin = self.spatial_code_ch;
        let mut head = Vec::new();
        for &cout in &self.head_channels {
            head.push(GeneratorBlock {
                conv1: StyledConvConfig::new(cin, cout, 3, s).init(device),
                conv2: StyledConvConfig::new(cout, cout, 3, s).init(device),
                skip: (cin != cout).then(|| {
                    ConvLayerConfig::new(cin, cout, 1)
                        .with_activate(false)
                        .with_bias(false)
                        .init(device)
                }),
                upsample: false,
            });
            cin = cout;
        }
        let mut up = Vec::new();
        for &cout in &self.up_channels {
            up.push(GeneratorBlock {
                conv1: StyledConvConfig::new(cin, cout, 3, s)
                    .with_upsample(true)
                    .with_blur_kernel(self.blur_kernel.clone())
                    .with_use_noise(self.use_noise)
                    .init(device),
                conv2: StyledConvConfig::new(cout, cout, 3, s)
                    .with_use_noise(self.use_noise)
                    .init(device),
                skip: (cin != cout).then(|| ConvLayerConfig::new(cin, cout, 1).init(device)),
                upsample: true,
            });
            cin = cout;
        }
        Generator {
            spatial_code_modulation: GeneratorModulationConfig::new(s, self.spatial_code_ch)
                .init(device),
            head,
            up,
            to_rgb: ToRgbConfig::new(cin, s).init(device),
        }
    }
}

/// One residual block of G: the official `ResolutionPreservingResnetBlock` (head) or
/// `UpsamplingResnetBlock`. `y = (skip(x) + conv2(conv1(x))) / √2`, the skip bilinearly
/// upsampled ×2 (`align_corners=False`) in the upsampling blocks.
///
/// The skip is identity when the width does not change; otherwise a bias-free 1×1 conv (head)
/// or a 1×1 conv with bias and `√2`-leaky-ReLU (upsampling). State keys: `conv1.*`, `conv2.*`,
/// `skip.conv.weight`, `skip.act.bias`.
#[derive(Module, Debug)]
pub struct GeneratorBlock {
    /// First styled conv (upsamples in an upsampling block).
    pub conv1: StyledConv,
    /// Second styled conv.
    pub conv2: StyledConv,
    /// 1×1 skip conv when the width changes.
    pub skip: Option<ConvLayer>,
    /// Whether the block doubles the resolution.
    pub upsample: bool,
}

/// The noise of every `NoiseInjection` of a generator pass.
pub enum GeneratorNoise<'a> {
    /// Fresh noise from a seeded generator (the official behaviour).
    Random(&'a mut NoiseRng),
    /// Shard `index` of `of` of the noise `Random` would draw for `of` times this batch
    /// (data-parallel training: each device draws the whole batch's noise and keeps its rows,
    /// see [`NoiseRng::sample_shard`]).
    Shard {
        /// The generator, advanced as for the whole batch.
        rng: &'a mut NoiseRng,
        /// Which shard this batch is.
        index: usize,
        /// How many equal shards the whole batch has.
        of: usize,
    },
    /// Fixed noise per layer, keyed by the official module path relative to G (e.g.
    /// `UpsamplingResBlock64.conv1.noise`), nearest-resized to each layer (official
    /// `fix_noise`). A layer without an entry gets no noise.
    Fixed(&'a BTreeMap<String, Tensor<4>>),
    /// No noise anywhere.
    None,
}

impl GeneratorNoise<'_> {
    fn for_layer(&mut self, path: &str) -> Noise<'_> {
        match self {
            GeneratorNoise::Random(rng) => Noise::Random(rng),
            GeneratorNoise::Shard { rng, index, of } => Noise::Shard {
                rng,
                index: *index,
                of: *of,
            },
            GeneratorNoise::Fixed(map) => map.get(path).map_or(Noise::None, Noise::Fixed),
            GeneratorNoise::None => Noise::None,
        }
    }
}

impl GeneratorBlock {
    fn forward(
        &self,
        x: Tensor<4>,
        style: &Style,
        noise: &mut GeneratorNoise,
        name: &str,
    ) -> Tensor<4> {
        let h = self.conv1.forward(
            x.clone(),
            style,
            noise.for_layer(&format!("{name}.conv1.noise")),
        );
        let h = self
            .conv2
            .forward(h, style, noise.for_layer(&format!("{name}.conv2.noise")));
        let skip = match &self.skip {
            Some(conv) => conv.forward(x),
            None => x,
        };
        let skip = if self.upsample {
            bilinear_up2(skip)
        } else {
            skip
        };
        (skip + h) / std::f64::consts::SQRT_2
    }
}

/// The generator: a structure code and a texture code → an image (unbounded; clamp to
/// `[-1, 1]` only to save it).
///
/// Official key → field: `G.SpatialCodeModulation` → `spatial_code_modulation`,
/// `G.HeadResnetBlock{i}` → `head.{i}`, `G.UpsamplingResBlock{2^(4+j)}` → `up.{j}`,
/// `G.ToRGB` → `to_rgb`.
#[derive(Module, Debug)]
pub struct Generator {
    /// `x = s·scale(g) + bias(g)`.
    pub spatial_code_modulation: GeneratorModulation,
    /// Resolution-preserving blocks.
    pub head: Vec<GeneratorBlock>,
    /// ×2 upsampling blocks.
    pub up: Vec<GeneratorBlock>,
    /// Modulated 1×1 conv to RGB.
    pub to_rgb: ToRgb,
}

impl Generator {
    /// The official module name of head block `i` (used for fixed-noise keys).
    pub fn head_name(i: usize) -> String {
        format!("HeadResnetBlock{i}")
    }

    /// The official module name of upsampling block `j`: 16, 32, 64, … whatever the resolution.
    pub fn up_name(j: usize) -> String {
        format!("UpsamplingResBlock{}", 16usize << j)
    }

    /// Decodes. Both codes are L2-normalised first (per pixel for spatial ones), as in the
    /// official generator, so interpolated or edited codes need no renormalisation.
    ///
    /// # Shapes
    /// - `structure`: `[batch, spatial_code_ch, h, w]`
    /// - `texture`: `[batch, style_dim]` or `[batch, style_dim, h', w']` (spatially varying)
    /// - output: `[batch, 3, h·2^sp, w·2^sp]`
    ///
    /// # Panics
    /// On channel or batch mismatches (see `sae_nn`).
    pub fn forward(
        &self,
        structure: Tensor<4>,
        texture: Style,
        mut noise: GeneratorNoise,
    ) -> Tensor<4> {
        let style = texture.normalized();
        let mut x = self
            .spatial_code_modulation
            .forward(normalize(structure), &style);
        for (i, block) in self.head.iter().enumerate() {
            x = block.forward(x, &style, &mut noise, &Self::head_name(i));
        }
        for (j, block) in self.up.iter().enumerate() {
            x = block.forward(x, &style, &mut noise, &Self::up_name(j));
        }
        self.to_rgb.forward(x, &style)
    }
}

/// The noise inputs by name, for [`GeneratorNoise::Fixed`] (the official `fix_noise`).
impl Generator {
    /// The `(official path, [1, 1, h, w])` of every noise input for a structure code of spatial
    /// size `[h, w]`, in layer order.
    pub fn noise_shapes(&self, size: [usize; 2]) -> Vec<(String, [usize; 4])> {
        let [mut h, mut w] = size;
        let mut out = Vec::new();
        for i in 0..self.head.len() {
            for conv in ["conv1", "conv2"] {
                out.push((format!("{}.{conv}.noise", Self::head_name(i)), [1, 1, h, w]));
            }
        }
        for (j, block) in self.up.iter().enumerate() {
            h *= 2;
            w *= 2;
            if block.conv1.use_noise {
                for conv in ["conv1", "conv2"] {
                    out.push((format!("{}.{conv}.noise", Self::up_name(j)), [1, 1, h, w]));
                }
            }
        }
        out
    }

    /// The `(official path, [h, w])` of every noise input a pass draws from, in the order it
    /// draws them, for a structure code of spatial size `size`.
    fn drawn_noise(&self, size: [usize; 2]) -> Vec<(String, [usize; 2])> {
        let [mut h, mut w] = size;
        let mut out = Vec::new();
        let blocks = self
            .head
            .iter()
            .enumerate()
            .map(|(i, b)| (Self::head_name(i), b, false));
        let ups = self
            .up
            .iter()
            .enumerate()
            .map(|(j, b)| (Self::up_name(j), b, true));
        for (name, block, up) in blocks.chain(ups) {
            if up {
                h *= 2;
                w *= 2;
            }
            for (conv, layer) in [("conv1", &block.conv1), ("conv2", &block.conv2)] {
                if layer.use_noise {
                    out.push((format!("{name}.{conv}.noise"), [h, w]));
                }
            }
        }
        out
    }

    /// The noise one pass over `batch` images with structure codes of spatial size `size`
    /// would add, drawn from `noise` in the order the pass draws it, as `[batch, 1, h, w]`
    /// maps for [`GeneratorNoise::Fixed`] (layers that get no noise are left out). Decoding
    /// several batches as one pass with the concatenation of their maps adds exactly the noise
    /// separate passes add.
    pub fn draw_noise(
        &self,
        mut noise: GeneratorNoise,
        batch: usize,
        size: [usize; 2],
        device: &Device,
    ) -> BTreeMap<String, Tensor<4>> {
        let mut out = BTreeMap::new();
        for (path, [h, w]) in self.drawn_noise(size) {
            let map = match noise.for_layer(&path) {
                Noise::Random(rng) => rng.sample([batch, 1, h, w], device),
                Noise::Shard { rng, index, of } => {
                    rng.sample_shard([batch, 1, h, w], index, of, device)
                }
                Noise::Fixed(t) => {
                    let t = nearest_resize(t.clone(), [h, w]);
                    if t.dims()[0] == batch {
                        t
                    } else {
                        t.expand([batch, 1, h, w])
                    }
                }
                Noise::None => continue,
            };
            out.insert(path, map);
        }
        out
    }

    /// One fixed `N(0, 1)` noise map per layer (batch 1, broadcast over any batch), as the
    /// official `fix_noise` draws them.
    pub fn fixed_noise(
        &self,
        size: [usize; 2],
        seed: u64,
        device: &Device,
    ) -> BTreeMap<String, Tensor<4>> {
        let mut rng = NoiseRng::seed(seed);
        self.noise_shapes(size)
            .into_iter()
            .map(|(path, shape)| (path, rng.sample(shape, device)))
            .collect()
    }
}
