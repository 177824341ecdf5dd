"""Write the one-step training fixture of the Rust `sae-train` tests.

Output: <repo>/crates/sae-train/tests/fixtures/train_step.safetensors (see below), made with the
tiny E+G+D+Dpatch of `make_fixtures.TINY_FULL_CONFIG` (32-px crops, 16-px patches), batch 4
split into 2 "GPU" chunks (so the chunked `swap` and first-half reconstruction matter), 4 crops
per image and patch aggregation on.

The sequence is the official one (`SwappingAutoencoderOptimizer.train_one_step`) on fixed
randomness:
  1. D step on `d.real`  -> D Adam step
  2. R1 step on `d.real` (the D step's batch) -> second D Adam step
  3. G step on `g.real`  -> G Adam step
Optimizers follow the official ones and the PyTorch 1.x `zero_grad()` the official code ran on
(gradients are zeroed, not set to None, so every parameter of an optimizer takes every step; in
the R1 step the biases step with a zero gradient).

Tensor names:
  sd.<official key>            initial state_dict (official format, kernel buffers included)
  {d,r1,g}.real                the step's batch ([4, 3, 32, 32]; r1.real = d.real)
  {d,r1,g}.crops.<k>.{flip,scale,offset}   crop draws, in call order (d: ref, tgt, mix;
                               r1: ref, tgt; g: ref, mix), rows = image*crops + crop
  {d,g}.noise.<k>.<G path>     fixed noise per G call (k = 0: rec [2, 1, h, w], 1: mix [4, ...])
  {d,r1,g}.loss.<term>         every loss term (already weighted; the total is their sum)
  {d,r1,g}.grad.<official key> gradient of the step's total loss w.r.t. every trained parameter
  {d,r1,g}.after.<official key> the parameter after the step's Adam update

Run: /work/venv-ref/bin/python tools/reference/make_train_fixtures.py
"""

import json
import sys
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as MF  # noqa: E402
import sae_ref as R  # noqa: E402
import sae_train_ref as T  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "crates" / "sae-train" / "tests" / "fixtures" / \
    "train_step.safetensors"
NAME = "train_step"

TRAIN_CONFIG = {
    "netE_num_downsampling_sp": 2,  # 32-px crops: a 8x8 structure code, texture branch 8 -> 3 -> 1
    "batch_size": 4, "num_chunks": 2, "patch_size": 16, "patch_num_crops": 4,
    "patch_min_scale": 1 / 8, "patch_max_scale": 1 / 4, "patch_use_aggregation": True,
    "lambda_L1": 1.0, "lambda_GAN": 1.0, "lambda_PatchGAN": 1.0, "lambda_R1": 10.0,
    "lambda_patch_R1": 1.0, "R1_once_every": 16, "lr": 0.002, "beta1": 0.0, "beta2": 0.99,
}


def noise_shapes(G, sp, gl):
    """{NoiseInjection path: [1, 1, h, w]} for a G pass on codes of this size."""
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: shapes.__setitem__(
        n, (1, 1, *inp[0].shape[2:])))
        for n, m in G.named_modules() if isinstance(m, R.NoiseInjection)]
    G.set_fixed_noise({n: torch.zeros(1, 1, 1, 1) for n in
                       [n for n, m in G.named_modules() if isinstance(m, R.NoiseInjection)]})
    with torch.no_grad():
        G(sp, gl)
    for h in hooks:
        h.remove()
    return shapes


def draws(cfg, prefix, count, out):
    result = []
    for k in range(count):
        d = R.draw_crop_params(cfg["batch_size"], cfg["patch_num_crops"],
                               (cfg["patch_min_scale"], cfg["patch_max_scale"]))
        for name, t in zip(("flip", "scale", "offset"), d):
            out[f"{prefix}.crops.{k}.{name}"] = t
        result.append(d)
    return result


def noises(shapes, batch, prefix, out):
    result = []
    for k, rows in enumerate((batch // 2, batch)):
        n = {p: torch.randn(rows, *s[1:]) for p, s in shapes.items()}
        for p, t in n.items():
            out[f"{prefix}.noise.{k}.{p}"] = t
        result.append(n)
    return result


def main():
    torch.set_num_threads(2)
    torch.manual_seed(zlib.crc32(NAME.encode()))
    cfg = {**MF.TINY_FULL_CONFIG, **TRAIN_CONFIG}
    E, G = R.Encoder(**cfg), R.Generator(**cfg)
    D, P = R.Discriminator(**cfg), R.PatchDiscriminator(**cfg)
    for net in (E, G, D, P):
        MF.randomise_(net)
    out = {}
    sd = R.ref_to_official_state_dict(E, G, D, P)
    for k, v in sd.items():
        out[f"sd.{k}"] = v
    shapes = {k: v.shape for k, v in sd.items()}
    keys = {}
    for net, prefix, tag in ((E, R.E_PREFIX, "E"), (G, R.G_PREFIX, "G"), (D, R.D_PREFIX, "D"),
                             (P, R.DPATCH_PREFIX, "P")):
        keys[tag] = R.official_parameter_keys(net, prefix)
    opt_g, opt_d = T.optimizers(E, G, D, P, cfg)
    b, size = cfg["batch_size"], cfg["crop_size"]

    with torch.no_grad():
        sp, gl = E(torch.zeros(1, 3, size, size))
    nshapes = noise_shapes(G, sp, gl)

    # 1. D step.
    d_real = torch.rand(b, 3, size, size) * 2 - 1
    out["d.real"] = d_real
    d_crops = draws(cfg, "d", 3, out)
    d_noise = noises(nshapes, b, "d", out)
    opt_d.zero_grad(set_to_none=False)
    losses = T.d_step_losses(E, G, D, P, d_real, cfg, d_crops, d_noise)
    sum(losses.values()).backward()
    record_named(out, "d", losses, D, P, keys, shapes)
    opt_d.step()
    after_named(out, "d", D, P, keys, shapes)

    # 2. R1 step on the same batch.
    out["r1.real"] = d_real.clone()
    r1_crops = draws(cfg, "r1", 2, out)
    opt_d.zero_grad(set_to_none=False)
    losses = T.r1_losses(D, P, d_real, cfg, r1_crops)
    sum(losses.values()).backward()
    record_named(out, "r1", losses, D, P, keys, shapes)
    opt_d.step()
    after_named(out, "r1", D, P, keys, shapes)

    # 3. G step on a fresh batch, D and Dpatch frozen.
    g_real = torch.rand(b, 3, size, size) * 2 - 1
    out["g.real"] = g_real
    g_crops = draws(cfg, "g", 2, out)
    g_noise = noises(nshapes, b, "g", out)
    for p in list(D.parameters()) + list(P.parameters()):
        p.requires_grad_(False)
    opt_g.zero_grad(set_to_none=False)
    losses = T.g_step_losses(E, G, D, P, g_real, cfg, g_crops, g_noise)
    sum(losses.values()).backward()
    record_named(out, "g", losses, E, G, keys, shapes, tags=("E", "G"))
    opt_g.step()
    after_named(out, "g", E, G, keys, shapes, tags=("E", "G"))

    out = {k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous()
           for k, v in out.items()}
    meta = {"config": json.dumps(cfg), "order": json.dumps(list(sd.keys()))}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(OUT), metadata=meta)
    summary = {k: round(float(v), 6) for k, v in out.items() if ".loss." in k}
    print(f"{OUT.stat().st_size} bytes, {len(out)} tensors -> {OUT}")
    print(json.dumps(summary, indent=1))


def record_named(out, prefix, losses, A, B, keys, shapes, tags=("D", "P")):
    for k, v in losses.items():
        out[f"{prefix}.loss.{k}"] = v.detach().reshape(1)
    for net, tag in ((A, tags[0]), (B, tags[1])):
        for n, p in net.named_parameters():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            key = keys[tag][n]
            out[f"{prefix}.grad.{key}"] = g.detach().clone().reshape(shapes[key])


def after_named(out, prefix, A, B, keys, shapes, tags=("D", "P")):
    for net, tag in ((A, tags[0]), (B, tags[1])):
        for n, p in net.named_parameters():
            key = keys[tag][n]
            out[f"{prefix}.after.{key}"] = p.detach().clone().reshape(shapes[key])


if __name__ == "__main__":
    main()
