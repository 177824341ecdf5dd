"""Write the seeded unit fixtures of the Rust `sae-nn` tests, one safetensors file per case.

Output: <repo>/crates/sae-nn/tests/fixtures/<case>.safetensors. Tensor names (the Rust tests
depend on them exactly):
  in.<name>          inputs
  param.<path>       parameters, <path> = the Rust parameter path
  out                forward output
  gout               fixed N(0,1) tensor shaped like `out`; the loss is sum(out * gout)
  grad.in.<name>     d loss / d input, for differentiable float inputs (not noise/crop draws)
  grad.param.<path>  d loss / d parameter, for every parameter (zeros if unused)
The safetensors `__metadata__` holds the case's constructor arguments as JSON under `config`.

Every case reseeds with a CRC of its own name, so adding or reordering cases never changes the
other files. Parameters are randomised so that every term matters (a zero bias or a unit
modulation bias would hide bugs): weights N(0,1), biases N(0,0.1^2), modulation.bias
1+N(0,0.1^2), noise.weight N(0,0.1^2).

`make_full_official` (also run by default) writes the complete tiny E+G+D+Dpatch model of the
`sae-model` tests in the official checkpoint format:
<repo>/crates/sae-model/tests/fixtures/tiny_full_official.{pth,safetensors} (see README.md).

Run: /work/venv-ref/bin/python tools/reference/make_fixtures.py [--only unit|full]
"""

import argparse
import inspect
import json
import sys
import zlib
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sae_ref as R  # noqa: E402

OUT_DIR = Path(__file__).resolve().parents[2] / "crates" / "sae-nn" / "tests" / "fixtures"
FULL_OUT_DIR = Path(__file__).resolve().parents[2] / "crates" / "sae-model" / "tests" / "fixtures"


def randomise_(module):
    """Overwrite the (zero/one) default init so that biases and noise weights are exercised."""
    with torch.no_grad():
        for mod_name, mod in module.named_modules():
            for name, p in mod.named_parameters(recurse=False):
                if isinstance(mod, R.NoiseInjection):
                    p.copy_(0.1 * torch.randn_like(p))
                elif name == "bias" and mod_name.split(".")[-1] == "modulation":
                    p.copy_(1 + 0.1 * torch.randn_like(p))
                elif name == "bias":
                    p.copy_(0.1 * torch.randn_like(p))
                else:
                    p.copy_(torch.randn_like(p))


# Each builder runs right after the case is seeded and returns
# (module or None, forward(**inputs) -> out, {input name: tensor}, non-differentiable names).


def upfirdn2d_case(kernel, scale=1, up=1, down=1, pad=(0, 0)):
    config = {"op": "upfirdn2d", "kernel": kernel, "kernel_scale": scale, "up": up,
              "down": down, "pad": list(pad)}

    def build():
        k = R.make_kernel(kernel) * scale
        x = torch.randn(2, 3, 9, 10)
        return None, lambda x: R.upfirdn2d(x, k, up, down, pad), {"x": x}, ()
    return config, build


def module_case(cls, args, inputs, nondiff=(), note=None):
    """Build `cls(**args)` and feed it N(0,1) inputs; `inputs` maps the forward's argument
    names to shapes. The stored config lists every constructor argument, defaults included."""
    bound = inspect.signature(cls).bind(**args)
    bound.apply_defaults()
    config = {"module": cls.__name__, **bound.arguments}
    if note:
        config["note"] = note

    def build():
        tensors = {k: torch.randn(*shape) for k, shape in inputs.items()}
        module = cls(**args)
        randomise_(module)
        return module, lambda **kw: module(**kw), tensors, nondiff
    return config, build


def function_case(config, fn, shape):
    return config, lambda: (None, lambda x: fn(x), {"x": torch.randn(*shape)}, ())


def conv_layer(name, x_shape=(2, 4, 8, 10), **kw):
    args = {"in_channel": 4, "out_channel": 6, **kw}
    return name, module_case(R.ConvLayer, args, {"x": x_shape})


def resblock(name, **kw):
    args = {"in_channel": 4, "out_channel": 6, **kw}
    return name, module_case(R.ResBlock, args, {"x": (2, 4, 8, 10)})


def modconv(name, x_shape=(2, 4, 6, 7), style_shape=(2, 5), **kw):
    args = {"in_channel": 4, "out_channel": 6, "kernel_size": 3, "style_dim": 5, **kw}
    return name, module_case(R.ModulatedConv2d, args, {"x": x_shape, "style": style_shape})


def styled_conv(name, noise_shape=None, **kw):
    args = {"in_channel": 4, "out_channel": 6, "kernel_size": 3, "style_dim": 5, **kw}
    inputs = {"x": (2, 4, 6, 7), "style": (2, 5)}
    if noise_shape:
        inputs["noise"] = noise_shape
    return name, module_case(R.StyledConv, args, inputs, nondiff=("noise",))


def crop_sampler_case():
    batch, num_crops, size, scale_range = 2, 3, 8, (0.25, 0.5)
    config = {"op": "apply_random_crop", "num_crops": num_crops, "target_size": size,
              "scale_range": list(scale_range),
              "note": "draws in SAE-SPEC 9 order; crop j of image i uses draw row i*num_crops+j"}

    def build():
        x = torch.rand(batch, 3, 20, 24) * 2 - 1
        flip, scale, offset = R.draw_crop_params(batch, num_crops, scale_range)
        inputs = {"x": x, "flip": flip, "scale": scale, "offset": offset}

        def forward(**kw):
            return R.apply_random_crop(target_size=size, num_crops=num_crops, **kw)
        return None, forward, inputs, ("flip", "scale", "offset")
    return config, build


CASES = dict([
    ("upfirdn2d_k121_pad1_0", upfirdn2d_case([1, 2, 1], pad=(1, 0))),
    ("upfirdn2d_k1331_pad2_2", upfirdn2d_case([1, 3, 3, 1], pad=(2, 2))),
    ("upfirdn2d_k1331_down2_pad1_1", upfirdn2d_case([1, 3, 3, 1], down=2, pad=(1, 1))),
    ("upfirdn2d_k1331x4_up2_pad2_1", upfirdn2d_case([1, 3, 3, 1], scale=4, up=2, pad=(2, 1))),
    ("upfirdn2d_k1_up2_pad0_m1", upfirdn2d_case([1], up=2, pad=(0, -1))),
    ("upfirdn2d_k1331_padm1_2", upfirdn2d_case([1, 3, 3, 1], pad=(-1, 2))),
    ("blur_k121_reflect_2_1", module_case(
        R.Blur, {"kernel": [1, 2, 1], "pad": [2, 1], "reflection_pad": True},
        {"x": (2, 3, 9, 10)})),
    ("upsample_k1331", module_case(R.Upsample, {"kernel": [1, 3, 3, 1], "factor": 2},
                                   {"x": (2, 3, 5, 6)})),
    ("equal_conv2d_k3_pad1_bias", module_case(
        R.EqualConv2d, {"in_channel": 5, "out_channel": 6, "kernel_size": 3, "stride": 1,
                        "padding": 1, "bias": True}, {"x": (2, 5, 7, 9)})),
    ("equal_conv2d_k3_s2_nobias", module_case(
        R.EqualConv2d, {"in_channel": 5, "out_channel": 6, "kernel_size": 3, "stride": 2,
                        "padding": 0, "bias": False}, {"x": (2, 5, 9, 8)})),
    *[(f"equal_linear_{dims}{'_lrelu' if act else ''}", module_case(
        R.EqualLinear, {"in_dim": 7, "out_dim": 5, "activation": act}, {"x": shape}))
      for dims, shape in (("2d", (3, 7)), ("4d", (2, 7, 3, 4)))
      for act in (None, "fused_lrelu")],
    ("fused_lrelu_4d", module_case(R.FusedLeakyReLU, {"channels": 4}, {"x": (2, 4, 5, 6)})),
    ("fused_lrelu_2d", module_case(R.FusedLeakyReLU, {"channels": 4}, {"x": (3, 4)})),
    ("scaled_lrelu", function_case({"op": "scaled_leaky_relu"}, R.scaled_leaky_relu,
                                   (2, 4, 5, 6))),
    ("normalize_4d", function_case({"op": "normalize", "eps": 1e-8}, R.normalize, (2, 5, 4, 3))),
    ("normalize_2d", function_case({"op": "normalize", "eps": 1e-8}, R.normalize, (3, 9))),
    ("bilinear_up2", function_case(
        {"op": "interpolate", "scale_factor": 2, "mode": "bilinear", "align_corners": False},
        R.bilinear_up2, (2, 3, 5, 7))),
    conv_layer("conv_layer_k1_act", kernel_size=1),
    conv_layer("conv_layer_k3_act", kernel_size=3),
    conv_layer("conv_layer_k3_reflect", kernel_size=3, reflection_pad=True),
    conv_layer("conv_layer_k3_pad0", kernel_size=3, pad=0),
    conv_layer("conv_layer_k1_bias_noact", kernel_size=1, activate=False, bias=True),
    conv_layer("conv_layer_k3_noact_nobias", kernel_size=3, activate=False, bias=False),
    conv_layer("conv_layer_k3_act_nobias", kernel_size=3, activate=True, bias=False),
    conv_layer("conv_layer_down_k3_enc", kernel_size=3, downsample=True, blur_kernel=[1, 2, 1],
               reflection_pad=True),
    conv_layer("conv_layer_down_k1_enc_skip", kernel_size=1, downsample=True,
               blur_kernel=[1, 2, 1], activate=False, bias=False),
    conv_layer("conv_layer_down_k3_d", kernel_size=3, downsample=True, blur_kernel=[1, 3, 3, 1]),
    conv_layer("conv_layer_down_k1_d_skip", kernel_size=1, downsample=True,
               blur_kernel=[1, 3, 3, 1], activate=False, bias=False),
    conv_layer("conv_layer_down_k3_blur1_pad0", x_shape=(2, 4, 9, 11), kernel_size=3,
               downsample=True, blur_kernel=[1], pad=0),
    resblock("resblock_enc", blur_kernel=[1, 2, 1], reflection_pad=True, downsample=True),
    resblock("resblock_d", blur_kernel=[1, 3, 3, 1], downsample=True),
    resblock("resblock_nodown", blur_kernel=[1, 3, 3, 1], downsample=False),
    modconv("modconv_k3_demod"),
    modconv("modconv_k3_nodemod", demodulate=False),
    modconv("modconv_k3_up_demod", upsample=True, blur_kernel=[1, 3, 3, 1]),
    modconv("modconv_k3_up_blur1", upsample=True, blur_kernel=[1]),
    modconv("modconv_k1_nodemod", kernel_size=1, demodulate=False),
    modconv("modconv_k3_spatial_b1", x_shape=(1, 4, 6, 7), style_shape=(1, 5, 3, 3)),
    modconv("modconv_k3_spatial_b2", style_shape=(2, 5, 3, 3)),
    modconv("modconv_k3_up_spatial_b2", style_shape=(2, 5, 2, 3), upsample=True,
            blur_kernel=[1, 3, 3, 1]),
    ("noise_same", module_case(R.NoiseInjection, {}, {"x": (2, 3, 5, 6), "noise": (2, 1, 5, 6)},
                               nondiff=("noise",))),
    ("noise_nearest", module_case(
        R.NoiseInjection, {}, {"x": (2, 3, 8, 10), "noise": (1, 1, 3, 4)}, nondiff=("noise",),
        note="noise nearest-resized (F.interpolate mode='nearest', src = floor(dst*in/out)) "
             "and broadcast over the batch")),
    styled_conv("styled_conv_noise", noise_shape=(2, 1, 6, 7)),
    styled_conv("styled_conv_up_noise", noise_shape=(2, 1, 12, 14), upsample=True,
                blur_kernel=[1, 3, 3, 1]),
    styled_conv("styled_conv_nonoise", use_noise=False),
    *[(name, module_case(R.ToRGB, {"in_channel": 4, "style_dim": 5},
                         {"x": (2, 4, 6, 7), "style": style}))
      for name, style in (("to_rgb", (2, 5)), ("to_rgb_spatial", (2, 5, 3, 3)))],
    *[(name, module_case(R.GeneratorModulation, {"style_dim": 5, "channel": 4},
                         {"s": (2, 4, 6, 7), "g": g}))
      for name, g in (("gen_mod", (2, 5)), ("gen_mod_spatial", (2, 5, 3, 3)))],
    ("crop_sampler", crop_sampler_case()),
])


def make_case(name, config, build):
    seed = zlib.crc32(name.encode())
    torch.manual_seed(seed)
    module, forward, inputs, nondiff = build()
    diff = {k: v.requires_grad_() for k, v in inputs.items() if k not in nondiff}
    params = dict(module.named_parameters()) if module is not None else {}

    out = forward(**inputs)
    gout = torch.randn_like(out)
    loss = (out * gout).sum()
    wrt = list(diff.values()) + list(params.values())
    # allow_unused: StyledConv(use_noise=False) keeps a noise.weight that gets no gradient.
    grads = torch.autograd.grad(loss, wrt, allow_unused=True) if wrt else []
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads)]

    tensors = {f"in.{k}": v for k, v in inputs.items()}
    tensors.update({f"param.{k}": v for k, v in params.items()})
    tensors.update({"out": out, "gout": gout})
    tensors.update({f"grad.in.{k}": g for k, g in zip(diff, grads)})
    tensors.update({f"grad.param.{k}": g for k, g in zip(params, grads[len(diff):])})
    tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}

    path = OUT_DIR / f"{name}.safetensors"
    save_file(tensors, str(path), metadata={"config": json.dumps({**config, "seed": seed})})
    return path


# --------------------------------------------------------------------------------------------
# tiny_full_official: a complete E+G+D+Dpatch checkpoint in the official format
# --------------------------------------------------------------------------------------------

FULL_NAME = "tiny_full_official"
# All constructor options of the four networks (sae_ref.Encoder/Generator/Discriminator/
# PatchDiscriminator take them by these names). D and Dpatch get explicit channel lists, so
# netD_scale_capacity and netPatchD_scale_capacity are not used.
TINY_FULL_CONFIG = {
    "global_code_ch": 16,
    "spatial_code_ch": 4,
    "netE_scale_capacity": 0.125,
    "netE_num_downsampling_sp": 4,
    "netE_num_downsampling_gl": 2,
    "netE_nc_steepness": 2.0,
    "netG_scale_capacity": 0.03125,
    "netG_num_base_resnet_layers": 2,
    "netG_use_noise": True,
    "use_antialias": True,
    "num_classes": 0,
    "crop_size": 32,
    "netD_channels": [8, 16, 16, 16],           # resolutions 32, 16, 8, 4
    "patch_size": 16,
    "netPatchD_channels": [8, 16, 16],          # resolutions 16, 8, 4
    "netPatchD_max_nc": 16,                     # = ch[4]: convs.5 16 -> 32, convs.6 32 -> 16
    "netPatchD_pair_channels": [32, 32, 16],    # pairlinear 128 -> 32 -> 32 -> 16 -> 1
}
FULL_NUM_D_ITERS = 3


def derived_channels(E, G, D, P):
    """The widths that the constructors derived, for the config metadata and the report."""
    e_levels = [E.FromRGB.conv.weight.shape[0]] + [
        b.conv2.conv.weight.shape[0] for b in E.DownToSpatialCode]
    e_global = [c.conv.weight.shape[0] for c in E.DownToGlobalCode]
    return {
        "E_nc_levels": e_levels,                 # nc(0..sp)
        "E_nc_global": e_global,                 # nc(sp+1..sp+gl)
        "G_heads": [getattr(G, n).conv1.activate.bias.shape[0] for n in G.head_names],
        "G_ups": [getattr(G, n).conv1.activate.bias.shape[0] for n in G.up_names],
        "G_up_names": list(G.up_names),
        "D_block_names": [n for n in D.convs._modules if n != "0"],
        "D_side": D.side,
        "Dpatch_block_names": [n for n in P.convs._modules if n not in ("0", "5", "6")],
    }


def make_full_official():
    """Write tiny_full_official.pth (torch.save of the OrderedDict, official key order) and
    tiny_full_official.safetensors (the same tensors as `sd.<official key>`, plus `io.*`)."""
    cfg = TINY_FULL_CONFIG
    seed = zlib.crc32(FULL_NAME.encode())
    torch.manual_seed(seed)
    E, G = R.Encoder(**cfg), R.Generator(**cfg)
    D, P = R.Discriminator(**cfg), R.PatchDiscriminator(**cfg)
    for net in (E, G, D, P):
        randomise_(net)
    sd = R.ref_to_official_state_dict(E, G, D, P, num_discriminator_iters=FULL_NUM_D_ITERS)
    d_keys = R.official_parameter_keys(D, R.D_PREFIX)
    p_keys = R.official_parameter_keys(P, R.DPATCH_PREFIX)
    io = {}

    # D: logits and the gradients of sum(d_out * d_gout).
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
    d_out = D(x)
    d_gout = torch.randn_like(d_out)
    d_params = list(D.named_parameters())
    grads = torch.autograd.grad((d_out * d_gout).sum(), [x] + [p for _, p in d_params])
    io.update({"x": x, "d_out": d_out, "d_gout": d_gout, "d_grad_x": grads[0]})
    for (name, _), g in zip(d_params, grads[1:]):
        key = d_keys[name]
        io[f"d_grad.{key}"] = g.reshape(sd[key].shape)

    # Dpatch: aggregated reference features of `patches` against per-crop target features.
    patches = torch.randn(2, 3, 3, 16, 16).requires_grad_()
    target = torch.randn(2, 3, 3, 16, 16).requires_grad_()
    feat_agg = P.extract_features(patches, aggregate=True)
    with torch.no_grad():
        feat = P.extract_features(patches, aggregate=False)
    p_out = P.discriminate_features(feat_agg, P.extract_features(target, aggregate=False))
    p_gout = torch.randn_like(p_out)
    p_params = list(P.named_parameters())
    grads = torch.autograd.grad((p_out * p_gout).sum(),
                                [patches, target] + [p for _, p in p_params])
    io.update({"patches": patches, "feat_agg": feat_agg, "feat": feat, "target": target,
               "p_out": p_out, "p_gout": p_gout, "p_grad_patches": grads[0],
               "p_grad_target": grads[1]})
    for (name, _), g in zip(p_params, grads[2:]):
        key = p_keys[name]
        io[f"p_grad.{key}"] = g.reshape(sd[key].shape)

    # E and G, no noise anywhere (zero fixed noise, nearest-resized to every layer).
    e_x = torch.rand(1, 3, 128, 128) * 2 - 1
    G.set_fixed_noise({n: torch.zeros(1, 1, 1, 1) for n, m in G.named_modules()
                       if isinstance(m, R.NoiseInjection)})
    with torch.no_grad():
        e_sp, e_gl = E(e_x)
        g_rec = G(e_sp, e_gl)
    io.update({"e_x": e_x, "e_sp": e_sp, "e_gl": e_gl, "g_rec": g_rec})
    io = {k: v.detach().float().contiguous() for k, v in io.items()}

    derived = derived_channels(E, G, D, P)
    meta = {**cfg, "seed": seed, "num_discriminator_iters": FULL_NUM_D_ITERS,
            "derived": derived,
            "draws": "after seeding and randomising E, G, D, Dpatch (in that order): x, d_gout, "
                     "patches, target, p_gout, e_x",
            "noise": "none: g_rec uses zero noise in every NoiseInjection",
            # safetensors does not keep an order; this is the .pth (official) key order.
            "sd_order": list(sd)}

    FULL_OUT_DIR.mkdir(parents=True, exist_ok=True)
    pth = FULL_OUT_DIR / f"{FULL_NAME}.pth"
    st = FULL_OUT_DIR / f"{FULL_NAME}.safetensors"
    torch.save(sd, pth)
    tensors = {f"sd.{k}": v for k, v in sd.items()}
    tensors.update({f"io.{k}": v for k, v in io.items()})
    # A single metadata key: the header's metadata map is written in hash order, so two keys
    # would make the file differ from run to run.
    save_file(tensors, str(st), metadata={"config": json.dumps(meta)})

    # Self-checks: both files hold the same state_dict, in official order in the .pth, and the
    # state_dict loads back into fresh networks that reproduce the stored outputs exactly.
    back = torch.load(pth, map_location="cpu", weights_only=True)
    assert isinstance(back, OrderedDict) and list(back) == list(sd)
    st_back = load_file(str(st))
    for k, v in sd.items():
        for other in (back[k], st_back[f"sd.{k}"]):
            assert other.dtype == v.dtype and torch.equal(other, v), k
    nets = {"E": (R.Encoder, R.E_PREFIX, E.blur_kernel),
            "G": (R.Generator, R.G_PREFIX, G.blur_kernel),
            "D": (R.Discriminator, R.D_PREFIX, [1, 3, 3, 1]),
            "Dpatch": (R.PatchDiscriminator, R.DPATCH_PREFIX, [1, 3, 3, 1])}
    fresh = {}
    for name, (cls, prefix, blur) in nets.items():
        fresh[name] = cls(**cfg)
        fresh[name].load_state_dict(R.official_to_ref_state_dict(back, prefix, blur), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh["D"](io["x"]), io["d_out"])
        f2 = fresh["Dpatch"].extract_features(io["target"], False)
        assert torch.equal(fresh["Dpatch"].discriminate_features(io["feat_agg"], f2), io["p_out"])
        sp2, gl2 = fresh["E"](io["e_x"])
        assert torch.equal(sp2, io["e_sp"]) and torch.equal(gl2, io["e_gl"])
        fresh["G"].set_fixed_noise({n: torch.zeros(1, 1, 1, 1)
                                    for n, m in fresh["G"].named_modules()
                                    if isinstance(m, R.NoiseInjection)})
        assert torch.equal(fresh["G"](sp2, gl2), io["g_rec"])
    return [pth, st], derived, sd, io


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("unit", "full"),
                        help="write only the sae-nn unit cases or only tiny_full_official")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    torch.set_default_dtype(torch.float32)
    if args.only != "full":
        main_unit()
    if args.only != "unit":
        paths, derived, sd, io = make_full_official()
        total = 0
        for path in paths:
            total += path.stat().st_size
            print(f"{path.stat().st_size:8d}  {path.relative_to(FULL_OUT_DIR.parents[3])}")
        print(f"{FULL_NAME}: {len(sd)} state_dict entries, {len(io)} io tensors, {total} bytes; "
              f"derived {json.dumps(derived)}")


def main_unit():
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, (config, build) in CASES.items():
        path = make_case(name, config, build)
        total += path.stat().st_size
        print(f"{path.stat().st_size:8d}  {path.relative_to(OUT_DIR.parents[3])}")
    stale = sorted(p.name for p in OUT_DIR.glob("*.safetensors") if p.stem not in CASES)
    if stale:
        print(f"warning: files not produced by this script: {stale}")
    print(f"{len(CASES)} cases, {total} bytes in {OUT_DIR}")


if __name__ == "__main__":
    main()
