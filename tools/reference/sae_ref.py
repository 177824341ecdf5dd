"""Plain-PyTorch reference implementation of the Swapping Autoencoder layers, E, G, D and Dpatch.

Written from a description of the official code (`../shared/spec`), not from the code itself
(which was only read to settle two D/Dpatch width details the description leaves implicit: D's
16/32 entries are min(512, int(512·m)), and Dpatch's convs.5/6 widths come from
netPatchD_max_nc). It is the oracle for the Rust (Burn) port: `make_fixtures.py` records its
outputs and gradients, and `check_official.py` proves it against the fixture produced by the
official implementation.

Parameter names follow the *Rust* module paths (`conv.weight`, `act.bias`, 4-D modulated
weights), not the official state_dict; `official_to_ref_state_dict` does the translation the
Rust loader must also do (see `docs/checkpoints.md`) and `ref_to_official_state_dict` the inverse
(a complete official-format state_dict, checked by `check_state_dict.py`). Everything is float32
on CPU; `lr_mul` is omitted because it is 1 in every SAE layer (official
`models/networks/stylegan2_layers.py`).
"""

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


# --------------------------------------------------------------------------------------------
# FIR kernels and upfirdn2d (official stylegan2_op/upfirdn2d.py; Blur, Upsample in stylegan2_layers)
# --------------------------------------------------------------------------------------------


def make_kernel(k):
    """2-D separable FIR kernel outer(k, k) normalised to sum 1."""
    k = torch.tensor(k, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """Zero-stuff by `up`, pad (p0 before, p1 after; negative crops), true-convolve, keep every
    `down`-th sample. The same (p0, p1) applies to both axes."""
    b, c, h, w = x.shape
    p0, p1 = pad
    if up > 1:
        # Zeros go *after* each sample (the last one included), so view as [.., H, 1, W, 1] and
        # pad the singleton axes with up-1 zeros.
        x = F.pad(x.reshape(b, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(b, c, h * up, w * up)
    # Constant-mode F.pad crops on negative amounts, as the official upfirdn2d's negative pad does.
    x = F.pad(x, (p0, p1, p0, p1))
    # True convolution = cross-correlation with the kernel flipped on both axes; depthwise.
    weight = torch.flip(kernel, (0, 1)).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    x = F.conv2d(x, weight, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


class Blur(nn.Module):
    """upfirdn2d blur; with `reflection_pad` the (p0, p1) padding is a reflection pad instead."""

    def __init__(self, kernel, pad, upsample_factor=1, reflection_pad=False):
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * upsample_factor**2
        # Not persistent: the official buffers are constants the Rust port recomputes.
        self.register_buffer("kernel", k, persistent=False)
        self.pad = tuple(pad)
        self.reflection_pad = reflection_pad

    def forward(self, x):
        if self.reflection_pad:
            p0, p1 = self.pad
            return upfirdn2d(F.pad(x, (p0, p1, p0, p1), mode="reflect"), self.kernel)
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """FIR upsampling (only `G.ToRGB.upsample` in SAE, never called; kept for the unit case)."""

    def __init__(self, kernel, factor=2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor**2, persistent=False)
        p = len(kernel) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


def bilinear_up2(x):
    """G skip-path upsampling (official generator.py::UpsamplingResnetBlock)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def resize_bilinear(x, size):
    """Resize of a spatially-varying (4-D) style to a layer's input size (official
    stylegan2_layers.py::ModulatedConv2d)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------
# Activations and normalisation (official stylegan2_op/fused_act.py, util/util.py::normalize)
# --------------------------------------------------------------------------------------------


def _channel_view(v, x):
    """[C] -> broadcastable against x of shape [B, C, ...]."""
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


def fused_leaky_relu(x, bias):
    return F.leaky_relu(x + _channel_view(bias, x), 0.2) * SQRT2


def scaled_leaky_relu(x):
    return F.leaky_relu(x, 0.2) * SQRT2


def normalize(v):
    """L2 over the channel dim (per pixel for 4-D), eps 1e-8 inside the rsqrt."""
    return v * torch.rsqrt(v.pow(2).sum(dim=1, keepdim=True) + 1e-8)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return fused_leaky_relu(x, self.bias)


class ScaledLeakyReLU(nn.Module):
    def forward(self, x):
        return scaled_leaky_relu(x)


# --------------------------------------------------------------------------------------------
# Equalized learning-rate layers (official models/networks/stylegan2_layers.py)
# --------------------------------------------------------------------------------------------


class EqualConv2d(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None
        # Runtime scale (not baked into the weight) so that gradients match training.
        self.scale = 1.0 / math.sqrt(in_channel * kernel_size**2)
        self.stride = stride
        self.padding = padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, self.stride, self.padding)


class EqualLinear(nn.Module):
    """y = x (W/sqrt(in))^T + b, optionally followed by sqrt2-lrelu with b as the act bias.
    A 4-D input [B, in, H, W] is treated per pixel (a 1x1 conv)."""

    def __init__(self, in_dim, out_dim, bias_init=0.0, activation=None):
        super().__init__()
        assert activation in (None, "fused_lrelu")
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = 1.0 / math.sqrt(in_dim)
        self.activation = activation

    def forward(self, x):
        w = self.weight * self.scale
        if x.dim() == 4:
            w = w[:, :, None, None]
            if self.activation:
                return fused_leaky_relu(F.conv2d(x, w), self.bias)
            return F.conv2d(x, w, self.bias)
        if self.activation:
            return fused_leaky_relu(F.linear(x, w), self.bias)
        return F.linear(x, w, self.bias)


# --------------------------------------------------------------------------------------------
# ConvLayer and ResBlock (official models/networks/stylegan2_layers.py)
# --------------------------------------------------------------------------------------------


class ConvLayer(nn.Module):
    """[Blur | RefPad] -> EqualConv2d -> [FusedLeakyReLU | ScaledLeakyReLU].

    Rust paths: `conv.weight`, `conv.bias` (bias and not activate), `act.bias` (activate and bias).
    """

    def __init__(self, in_channel, out_channel, kernel_size, downsample=False,
                 blur_kernel=(1, 3, 3, 1), bias=True, activate=True, pad=None,
                 reflection_pad=False):
        super().__init__()
        self.blur = None
        self.refpad = 0
        if downsample:
            p = pad if pad is not None else (len(blur_kernel) - 2) + (kernel_size - 1)
            self.blur = Blur(blur_kernel, ((p + 1) // 2, p // 2), reflection_pad=reflection_pad)
            stride, padding = 2, 0
        else:
            stride = 1
            padding = kernel_size // 2 if pad is None else pad
            if reflection_pad:
                self.refpad, padding = padding, 0
        self.conv = EqualConv2d(in_channel, out_channel, kernel_size, stride=stride,
                                padding=padding, bias=bias and not activate)
        if activate:
            self.act = FusedLeakyReLU(out_channel) if bias else ScaledLeakyReLU()
        else:
            self.act = None

    def forward(self, x):
        if self.blur is not None:
            x = self.blur(x)
        if self.refpad:
            x = F.pad(x, (self.refpad,) * 4, mode="reflect")
        x = self.conv(x)
        return self.act(x) if self.act is not None else x


class ResBlock(nn.Module):
    """(conv2(conv1(x)) + skip(x)) / sqrt2; conv1 keeps `in` channels, the skip is always a 1x1
    conv and never reflection-padded."""

    def __init__(self, in_channel, out_channel, blur_kernel=(1, 3, 3, 1), reflection_pad=False,
                 pad=None, downsample=True):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3, reflection_pad=reflection_pad, pad=pad)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=downsample,
                               blur_kernel=blur_kernel, reflection_pad=reflection_pad, pad=pad)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=downsample,
                              blur_kernel=blur_kernel, activate=False, bias=False)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2


# --------------------------------------------------------------------------------------------
# Modulated conv, noise, StyledConv, ToRGB (official models/networks/stylegan2_layers.py)
# --------------------------------------------------------------------------------------------


class ModulatedConv2d(nn.Module):
    """SAE's "new demodulation": the RMS-normalised style scales the *input*, and each filter is
    divided by its own norm independently of the style, so the result is a plain conv.

    `weight` is [out, in, k, k] (the official 5-D weight with its leading 1 squeezed).
    """

    def __init__(self, in_channel, out_channel, kernel_size, style_dim, demodulate=True,
                 upsample=False, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_channel * kernel_size**2)
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:
            p = (len(blur_kernel) - 2) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, ((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)

    def forward(self, x, style):
        if style.dim() == 4:
            # Spatial style: resized to this layer's input, modulation as a 1x1 conv. Plain
            # broadcasting makes it work for any batch (the official code needs B = 1).
            style = resize_bilinear(style, x.shape[2:])
            s = self.modulation(style)
        else:
            s = self.modulation(style)[:, :, None, None]
        if self.demodulate:
            s = s * torch.rsqrt(s.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        x = x * s

        w = self.weight * self.scale
        if self.demodulate:
            w = w * torch.rsqrt(w.pow(2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)

        if self.upsample:
            # conv_transpose2d takes [in, out, k, k]; no spatial flip of the kernel.
            x = F.conv_transpose2d(x, w.transpose(0, 1), stride=2, padding=0)
            return self.blur(x)
        return F.conv2d(x, w, padding=self.kernel_size // 2)


class NoiseInjection(nn.Module):
    """x + weight * n with n [B or 1, 1, h, w], broadcast over channels (and batch when 1).

    The noise comes from the `noise` argument, else from `fixed_noise` (the official
    test-time `fix_noise`), else is freshly sampled. A noise of another spatial size is
    nearest-resized (`F.interpolate` mode 'nearest': src = floor(dst * in / out)).
    """

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.fixed_noise = None

    def forward(self, x, noise=None):
        if noise is None:
            noise = self.fixed_noise
        if noise is None:
            b, _, h, w = x.shape
            noise = x.new_empty(b, 1, h, w).normal_()
        elif noise.shape[2:] != x.shape[2:]:
            noise = F.interpolate(noise, size=x.shape[2:], mode="nearest")
        return x + self.weight * noise


class StyledConv(nn.Module):
    """FusedLeakyReLU(noise(ModulatedConv2d(x, style))): noise before the bias and activation.
    `noise.weight` exists even with use_noise=False (then it is unused)."""

    def __init__(self, in_channel, out_channel, kernel_size, style_dim, upsample=False,
                 blur_kernel=(1, 3, 3, 1), demodulate=True, use_noise=True):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim,
                                    demodulate=demodulate, upsample=upsample,
                                    blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)
        self.use_noise = use_noise

    def forward(self, x, style, noise=None):
        x = self.conv(x, style)
        if self.use_noise:
            x = self.noise(x, noise)
        return self.activate(x)


class ToRGB(nn.Module):
    """1x1 modulated conv without demodulation, plus a [1, 3, 1, 1] bias. No tanh.
    The official `upsample` submodule is never called, so it is not built here."""

    def __init__(self, in_channel, style_dim):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, style):
        return self.conv(x, style) + self.bias


class GeneratorModulation(nn.Module):
    """x = s * scale(g) + bias(g), no "+1" on the scale; a 4-D g is resized to s first."""

    def __init__(self, style_dim, channel):
        super().__init__()
        self.scale = EqualLinear(style_dim, channel)
        self.bias = EqualLinear(style_dim, channel)

    def forward(self, s, g):
        if g.dim() == 4:
            g = resize_bilinear(g, s.shape[2:])
            return s * self.scale(g) + self.bias(g)
        return s * self.scale(g)[:, :, None, None] + self.bias(g)[:, :, None, None]


# --------------------------------------------------------------------------------------------
# Random crop sampler (official util/util.py::apply_random_crop)
# --------------------------------------------------------------------------------------------


def draw_crop_params(batch, num_crops, scale_range=(1 / 8, 1 / 4)):
    """The three random draws of apply_random_crop, in the official order."""
    n = batch * num_crops
    lo, hi = scale_range
    flip = torch.round(torch.rand(n, 1, 1, 1)) * 2 - 1
    scale = torch.rand(n, 1, 1, 2) * (hi - lo) + lo
    offset = (torch.rand(n, 1, 1, 2) * 2 - 1) * (1 - scale)
    return flip, scale, offset


def apply_random_crop(x, target_size, num_crops, flip, scale, offset):
    """[B, C, H, W] -> [B, num_crops, C, P, P]; crop j of image i uses draw row i*num_crops + j."""
    b, c = x.shape[:2]
    n = b * num_crops
    u = torch.linspace(-1, 1, target_size, dtype=x.dtype)
    # grid[n, r, c] = (u[c] * flip * sx + ox, u[r] * sy + oy); x varies along columns.
    gx = u[None, None, :] * flip.reshape(n, 1, 1) * scale[..., 0].reshape(n, 1, 1) \
        + offset[..., 0].reshape(n, 1, 1)
    gy = u[None, :, None] * scale[..., 1].reshape(n, 1, 1) + offset[..., 1].reshape(n, 1, 1)
    grid = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1)
    x_rep = x.repeat_interleave(num_crops, dim=0)
    crops = F.grid_sample(x_rep, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    return crops.reshape(b, num_crops, c, target_size, target_size)


# --------------------------------------------------------------------------------------------
# Encoder E (official models/networks/encoder.py::StyleGAN2ResnetEncoder)
# --------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    def __init__(self, global_code_ch=2048, spatial_code_ch=8, netE_scale_capacity=1.0,
                 netE_num_downsampling_sp=4, netE_num_downsampling_gl=2, netE_nc_steepness=2.0,
                 use_antialias=True, **_unused):
        super().__init__()
        sp, gl = netE_num_downsampling_sp, netE_num_downsampling_gl
        blur = [1, 2, 1] if use_antialias else [1]
        self.blur_kernel = blur

        def nc(i):
            # Python round() is round-half-to-even, as in the official code; capped (76879fd).
            return round(min(global_code_ch,
                             int(round(netE_nc_steepness ** (5 + i) * netE_scale_capacity))))

        self.FromRGB = ConvLayer(3, nc(0), 1)
        self.DownToSpatialCode = nn.Sequential(OrderedDict(
            (f"ResBlockDownBy{2 ** i}",
             ResBlock(nc(i), nc(i + 1), blur_kernel=blur, reflection_pad=True))
            for i in range(sp)))
        self.ToSpatialCode = nn.Sequential(
            ConvLayer(nc(sp), nc(sp), 1),
            ConvLayer(nc(sp), spatial_code_ch, 1, activate=False))
        # Global branch: valid 3x3 stride-2 convs, a 1x1 "blur" of value 1 and pad 0.
        self.DownToGlobalCode = nn.Sequential(OrderedDict(
            (f"ConvLayerDownBy{2 ** (sp + j)}",
             ConvLayer(nc(sp + j), nc(sp + j + 1), 3, downsample=True, blur_kernel=[1], pad=0))
            for j in range(gl)))
        self.ToGlobalCode = nn.Sequential(EqualLinear(nc(sp + gl), global_code_ch))

    def forward(self, x):
        midpoint = self.DownToSpatialCode(self.FromRGB(x))
        sp = normalize(self.ToSpatialCode(midpoint))
        g = self.DownToGlobalCode(midpoint).mean(dim=(2, 3))
        gl = normalize(self.ToGlobalCode(g))
        return sp, gl


# --------------------------------------------------------------------------------------------
# Generator G (official models/networks/generator.py::StyleGAN2ResnetGenerator)
# --------------------------------------------------------------------------------------------


class ResolutionPreservingResnetBlock(nn.Module):
    """G head block: always uses noise; skip is a bias-free 1x1 conv when in != out."""

    def __init__(self, in_channel, out_channel, style_dim):
        super().__init__()
        self.conv1 = StyledConv(in_channel, out_channel, 3, style_dim)
        self.conv2 = StyledConv(out_channel, out_channel, 3, style_dim)
        self.skip = (ConvLayer(in_channel, out_channel, 1, activate=False, bias=False)
                     if in_channel != out_channel else None)

    def forward(self, x, g):
        skip = self.skip(x) if self.skip is not None else x
        return (skip + self.conv2(self.conv1(x, g), g)) / SQRT2


class UpsamplingResnetBlock(nn.Module):
    """G upsampling block: skip is identity or a 1x1 ConvLayer with bias and sqrt2-lrelu, then
    bilinear x2."""

    def __init__(self, in_channel, out_channel, style_dim, blur_kernel, use_noise):
        super().__init__()
        self.conv1 = StyledConv(in_channel, out_channel, 3, style_dim, upsample=True,
                                blur_kernel=blur_kernel, use_noise=use_noise)
        self.conv2 = StyledConv(out_channel, out_channel, 3, style_dim, use_noise=use_noise)
        self.skip = ConvLayer(in_channel, out_channel, 1) if in_channel != out_channel else None

    def forward(self, x, g):
        skip = self.skip(x) if self.skip is not None else x
        return (bilinear_up2(skip) + self.conv2(self.conv1(x, g), g)) / SQRT2


class Generator(nn.Module):
    def __init__(self, global_code_ch=2048, spatial_code_ch=8, netE_num_downsampling_sp=4,
                 netG_scale_capacity=1.0, netG_num_base_resnet_layers=2, netG_use_noise=True,
                 use_antialias=True, num_classes=0, **_unused):
        super().__init__()
        sp, n = netE_num_downsampling_sp, netG_num_base_resnet_layers
        style_dim = global_code_ch + num_classes
        blur = [1, 3, 3, 1] if use_antialias else [1]
        self.blur_kernel = blur  # also the official (unused) `ToRGB.upsample.kernel` taps

        def nf(j):
            return int(min(512, 128 * 2 ** (sp - j)) * netG_scale_capacity)  # truncation

        self.SpatialCodeModulation = GeneratorModulation(style_dim, spatial_code_ch)
        self.head_names, self.up_names = [], []
        in_ch = spatial_code_ch
        for i in range(n):
            out_ch = max(spatial_code_ch, round((i + 1) / n * nf(0)))  # round-half-even
            name = f"HeadResnetBlock{i}"
            self.add_module(name, ResolutionPreservingResnetBlock(in_ch, out_ch, style_dim))
            self.head_names.append(name)
            in_ch = out_ch
        for j in range(sp):
            out_ch = nf(j + 1)
            name = f"UpsamplingResBlock{2 ** (4 + j)}"  # 16, 32, ... whatever the resolution
            self.add_module(name, UpsamplingResnetBlock(in_ch, out_ch, style_dim, blur,
                                                        netG_use_noise))
            self.up_names.append(name)
            in_ch = out_ch
        self.ToRGB = ToRGB(in_ch, style_dim)

    def set_fixed_noise(self, noises):
        """noises: {module path relative to G, e.g. 'HeadResnetBlock0.conv1.noise': tensor}.
        Every NoiseInjection must be covered; the tensors are reused on every call."""
        modules = {name: m for name, m in self.named_modules() if isinstance(m, NoiseInjection)}
        missing = sorted(set(modules) - set(noises))
        unknown = sorted(set(noises) - set(modules))
        if missing or unknown:
            raise KeyError(f"noise paths missing {missing}, unknown {unknown}")
        for name, m in modules.items():
            m.fixed_noise = noises[name]

    def forward(self, sp, gl):
        s, g = normalize(sp), normalize(gl)
        x = self.SpatialCodeModulation(s, g)
        for name in self.head_names + self.up_names:
            x = getattr(self, name)(x, g)
        return self.ToRGB(x, g)


# --------------------------------------------------------------------------------------------
# Discriminators D (official discriminator.py) and Dpatch (official patch_discriminator.py)
# --------------------------------------------------------------------------------------------


def _channel_table(explicit, top, default, what):
    """Channels per resolution {2^top: c, ..., 4: c}: from `explicit` (a list from the highest
    resolution 2^top down to 4, or a {resolution: channels} dict) or else from `default`."""
    resolutions = [2**i for i in range(top, 1, -1)]
    if explicit is None:
        return {r: default[r] for r in resolutions}
    if isinstance(explicit, dict):
        table = {int(r): int(c) for r, c in explicit.items()}
    else:
        explicit = list(explicit)
        if len(explicit) != len(resolutions):
            raise ValueError(f"{what}: {len(explicit)} channel counts given, but resolutions "
                             f"{resolutions} need {len(resolutions)}")
        table = dict(zip(resolutions, (int(c) for c in explicit)))
    missing = [r for r in resolutions if r not in table]
    if missing or any(table[r] < 1 for r in resolutions):
        raise ValueError(f"{what}: need a positive channel count for each of {resolutions}")
    return {r: table[r] for r in resolutions}


def d_default_channels(channel_multiplier=2.0):
    """The StyleGAN2 D channel table (official stylegan2_layers.py::Discriminator;
    `channel_multiplier = 2·netD_scale_capacity`)."""
    m = channel_multiplier
    return {4: 512, 8: 512, 16: min(512, int(512 * m)), 32: min(512, int(512 * m)),
            64: int(256 * m), 128: int(128 * m), 256: int(64 * m), 512: int(32 * m),
            1024: int(16 * m)}


def dpatch_default_channels(scale_capacity=4.0, max_nc=384):
    """The Dpatch channel table (official patch_discriminator.py)."""
    m = scale_capacity
    return {4: min(max_nc, int(256 * m)), 8: min(max_nc, int(128 * m)),
            16: min(max_nc, int(64 * m)), 32: int(32 * m), 64: int(16 * m), 128: int(8 * m),
            256: int(4 * m)}


class Discriminator(nn.Module):
    """StyleGAN2 D without the minibatch-stddev layer (official stylegan2_layers.py::Discriminator).
    Module paths are the official ones below `D.stylegan2_D.` with `Conv`/`Act` spelled
    `conv`/`act`.

    `netD_channels`: explicit channels, a list for resolutions size, size/2, ..., 4 (size =
    2^round(log2(crop_size))) or a {resolution: channels} dict; default: the official table with
    `channel_multiplier = 2·netD_scale_capacity`.
    """

    def __init__(self, crop_size=256, netD_scale_capacity=1.0, use_antialias=True,
                 netD_channels=None, **_unused):
        super().__init__()
        blur = [1, 3, 3, 1] if use_antialias else [1]
        size = 2 ** int(round(math.log2(crop_size)))  # a 768 crop runs the 1024 network
        log_size = int(math.log2(size))
        ch = _channel_table(netD_channels, log_size,
                            d_default_channels(2.0 * netD_scale_capacity), "netD_channels")
        self.channels = ch
        self.side = int(4 * crop_size / size)  # 4, or 3 for the 768 crop

        convs = [("0", ConvLayer(3, ch[size], 1))]
        in_ch = ch[size]
        for i in range(log_size, 2, -1):
            name = str(9 - i) if i <= 8 else f"{2 ** i}x{2 ** i}"
            convs.append((name, ResBlock(in_ch, ch[2 ** (i - 1)], blur_kernel=blur)))
            in_ch = ch[2 ** (i - 1)]
        self.convs = nn.Sequential(OrderedDict(convs))
        self.final_conv = ConvLayer(in_ch, ch[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(ch[4] * self.side**2, ch[4], activation="fused_lrelu"),
            EqualLinear(ch[4], 1))

    def forward(self, x):
        out = self.final_conv(self.convs(x))
        return self.final_linear(out.reshape(out.shape[0], -1))  # (C, H, W) flatten order


class PatchDiscriminator(nn.Module):
    """The patch co-occurrence discriminator (official
    patch_discriminator.py::StyleGAN2PatchDiscriminator). Module paths are the official ones below
    `Dpatch.` with `Conv`/`Act` spelled `conv`/`act`.

    `netPatchD_channels`: explicit channels, a list for resolutions 2^ceil(log2(patch_size)),
    ..., 4 or a {resolution: channels} dict; default: the official table.
    `netPatchD_pair_channels`: the three hidden widths of `pairlinear` (default 2048, 2048, 1024).
    As in the official code `convs.5` is ResBlock(ch[4] -> 2·max_nc, no downsampling),
    `convs.6` a valid 3x3 ConvLayer 2·max_nc -> max_nc and `pairlinear.0` reads ch[4]·2·2·2
    features, so the network only works when ch[4] == netPatchD_max_nc (true for every preset).
    """

    def __init__(self, patch_size=128, netPatchD_scale_capacity=4.0, netPatchD_max_nc=384,
                 use_antialias=True, netPatchD_channels=None,
                 netPatchD_pair_channels=(2048, 2048, 1024), **_unused):
        super().__init__()
        blur = [1, 3, 3, 1] if use_antialias else [1]
        log_size = int(math.ceil(math.log2(patch_size)))
        ch = _channel_table(netPatchD_channels, log_size,
                            dpatch_default_channels(netPatchD_scale_capacity, netPatchD_max_nc),
                            "netPatchD_channels")
        if ch[4] != netPatchD_max_nc:
            raise ValueError(f"Dpatch: ch[4] = {ch[4]} must equal netPatchD_max_nc = "
                             f"{netPatchD_max_nc} (pairlinear.0 reads ch[4]·8 features of "
                             f"the max_nc-channel convs.6 output)")
        self.channels = ch
        max_nc = netPatchD_max_nc

        convs = [("0", ConvLayer(3, ch[2 ** log_size], 3))]
        in_ch = ch[2 ** log_size]
        for i in range(log_size, 2, -1):
            name = str(7 - i) if i <= 6 else f"{2 ** i}x{2 ** i}"
            convs.append((name, ResBlock(in_ch, ch[2 ** (i - 1)], blur_kernel=blur)))
            in_ch = ch[2 ** (i - 1)]
        # Official: ResBlock(in, 2·max_nc, downsample=False) keeps the default blur argument,
        # which is unused without downsampling.
        convs.append(("5", ResBlock(in_ch, 2 * max_nc, downsample=False)))
        convs.append(("6", ConvLayer(2 * max_nc, max_nc, 3, pad=0)))
        self.convs = nn.Sequential(OrderedDict(convs))

        h1, h2, h3 = (int(c) for c in netPatchD_pair_channels)
        self.pairlinear = nn.Sequential(
            EqualLinear(ch[4] * 2 * 2 * 2, h1, activation="fused_lrelu"),
            EqualLinear(h1, h2, activation="fused_lrelu"),
            EqualLinear(h2, h3, activation="fused_lrelu"),
            EqualLinear(h3, 1))

    def extract_features(self, patches, aggregate=False):
        """[B, T, 3, P, P] -> [B·T, max_nc, 2, 2] (for P = 2^k); with `aggregate` every crop's
        feature is replaced by the mean over the T crops of its image."""
        if patches.dim() != 5:
            raise ValueError(
                f"extract_features expects [B, T, C, P, P], got {tuple(patches.shape)}")
        b, t = patches.shape[:2]
        f = self.convs(patches.flatten(0, 1))
        f = f.reshape(b, t, *f.shape[1:])
        if aggregate:
            f = f.mean(dim=1, keepdim=True).expand(-1, t, -1, -1, -1)
        return f.flatten(0, 1)

    def discriminate_features(self, feature1, feature2):
        """pairlinear(cat(flatten(f1), flatten(f2))) -> [N, 1]; f1 is the reference."""
        return self.pairlinear(torch.cat([feature1.flatten(1), feature2.flatten(1)], dim=1))


# --------------------------------------------------------------------------------------------
# Official checkpoint -> reference parameters (rules in docs/checkpoints.md)
# --------------------------------------------------------------------------------------------


def _expected_buffer(key):
    """Which constant an official E/G buffer must hold, or None if `key` is a parameter."""
    if key.endswith(".conv.blur.kernel") or key.endswith("ToRGB.upsample.kernel"):
        return "upsample"
    if key.endswith(".Blur.kernel"):
        return "blur"
    return None


def official_to_ref_state_dict(sd, prefix, blur_kernel):
    """Translate the `prefix` entries of an official state_dict into this module's names:
    `Conv`/`Act` -> `conv`/`act`, 5-D modulated weights squeezed, constant buffers checked
    against make_kernel and dropped; keys without the prefix are ignored. Prefixes: 'E.', 'G.',
    D_PREFIX ('D.stylegan2_D.') and DPATCH_PREFIX ('Dpatch.'). `blur_kernel` is the network's
    antialias kernel (the encoder global branch's 1x1 kernels are recognised by their shape).
    The inverse is `ref_to_official_state_dict`."""
    out = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        kind = _expected_buffer(key)
        if kind is not None:
            if kind == "upsample":
                expected = make_kernel(blur_kernel) * 4
            else:
                expected = make_kernel([1] if value.shape == (1, 1) else blur_kernel)
            if not torch.equal(value.float(), expected):
                raise ValueError(f"buffer {key} is not the expected make_kernel constant")
            continue
        name = ".".join({"Conv": "conv", "Act": "act"}.get(p, p)
                        for p in key[len(prefix):].split("."))
        if value.dim() == 5:
            value = value.squeeze(0)
        out[name] = value.float()
    return out


# --------------------------------------------------------------------------------------------
# Reference modules -> official state_dict (the inverse of official_to_ref_state_dict)
# --------------------------------------------------------------------------------------------

E_PREFIX, G_PREFIX, D_PREFIX, DPATCH_PREFIX = "E.", "G.", "D.stylegan2_D.", "Dpatch."


def official_entries(module, op, rp="", up_kernel=None):
    """Yield (official key, tensor, reference parameter path or None for a buffer) for
    `module`, in the order `torch.save(model.state_dict())` writes them: a module's own
    parameters, then its buffers, then its children in registration order.

    `op` is the official prefix (e.g. 'E.'), `rp` the reference path prefix. Where the
    reference differs from the official module tree it is handled explicitly:
    ConvLayer (`Blur`/`Conv`/`Act`, kernel buffer), ModulatedConv2d (5-D weight; `blur.kernel`
    after the weight and before `modulation`), ToRGB (the unused `upsample.kernel` buffer, taps
    given by `up_kernel`, which Generator supplies)."""
    m = module
    if isinstance(m, Generator):
        up_kernel = make_kernel(m.blur_kernel) * 4
    if isinstance(m, ConvLayer):
        if m.blur is not None:
            yield op + "Blur.kernel", m.blur.kernel, None
        yield op + "Conv.weight", m.conv.weight, rp + "conv.weight"
        if m.conv.bias is not None:
            yield op + "Conv.bias", m.conv.bias, rp + "conv.bias"
        if isinstance(m.act, FusedLeakyReLU):
            yield op + "Act.bias", m.act.bias, rp + "act.bias"
        return
    if isinstance(m, ModulatedConv2d):
        yield op + "weight", m.weight.unsqueeze(0), rp + "weight"
        if m.upsample:
            yield op + "blur.kernel", m.blur.kernel, None
        yield from official_entries(m.modulation, op + "modulation.", rp + "modulation.")
        return
    if isinstance(m, ToRGB):
        if up_kernel is None:
            raise ValueError("ToRGB.upsample.kernel: export the ToRGB through its Generator")
        yield op + "bias", m.bias, rp + "bias"
        yield op + "upsample.kernel", up_kernel, None
        yield from official_entries(m.conv, op + "conv.", rp + "conv.")
        return
    for name, p in m.named_parameters(recurse=False):
        yield op + name, p, rp + name
    for name, b in m.named_buffers(recurse=False):
        if name not in m._non_persistent_buffers_set:
            yield op + name, b, None
    for name, child in m.named_children():
        yield from official_entries(child, f"{op}{name}.", f"{rp}{name}.", up_kernel)


def official_parameter_keys(module, prefix):
    """{reference parameter path: official key} for one network, e.g.
    official_parameter_keys(D, D_PREFIX)['convs.0.conv.weight'] ==
    'D.stylegan2_D.convs.0.Conv.weight'."""
    return {ref: key for key, _, ref in official_entries(module, prefix) if ref is not None}


def ref_to_official_state_dict(E=None, G=None, D=None, Dpatch=None, num_discriminator_iters=0):
    """A complete official-format state_dict (as official models/base_model.py::save writes it) of
    the given networks: `num_discriminator_iters` (int64 [1]) first, then E, G, D, Dpatch
    (whichever are given) in module registration order, with the official key names, 5-D
    `[1, out, in, k, k]` modulated weights and every constant kernel buffer (`Blur.kernel`,
    `conv.blur.kernel`, `G.ToRGB.upsample.kernel`). Tensors are detached contiguous copies
    (float32)."""
    sd = OrderedDict()
    sd["num_discriminator_iters"] = torch.tensor([int(num_discriminator_iters)], dtype=torch.int64)
    for net, prefix in ((E, E_PREFIX), (G, G_PREFIX), (D, D_PREFIX), (Dpatch, DPATCH_PREFIX)):
        if net is None:
            continue
        for key, value, _ in official_entries(net, prefix):
            if key in sd:
                raise KeyError(f"duplicate official key {key}")
            sd[key] = value.detach().clone().contiguous()
    # Every parameter of every network must have been exported exactly once.
    for net, prefix in ((E, E_PREFIX), (G, G_PREFIX), (D, D_PREFIX), (Dpatch, DPATCH_PREFIX)):
        if net is not None:
            exported = set(official_parameter_keys(net, prefix))
            params = {n for n, _ in net.named_parameters()}
            if exported != params:
                raise AssertionError(f"{prefix}: exported {sorted(exported ^ params)} differ")
    return sd
