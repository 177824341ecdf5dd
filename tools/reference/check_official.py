"""Validate sae_ref.py against the official-tiny fixture (written by the official code on CPU).

Checks every `prim.*` case, the `crop.*` case and the full E/G pass of the tiny checkpoint
(with the stored fixed noises), printing the max abs error per tensor. Exits 1 if any error
exceeds the tolerance, 0 otherwise; exits 0 with a message when the shared fixture folder is
absent, so that it can run in checkouts without /work/shared.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sae_ref as R  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_SUBDIR = Path("fixtures/official-tiny")
TOLERANCE = 1e-5


def find_fixture_dir(explicit):
    if explicit:
        return Path(explicit)
    for shared in (Path("/work/shared"), REPO_ROOT.parent / "shared"):
        if (shared / FIXTURE_SUBDIR).is_dir():
            return shared / FIXTURE_SUBDIR
    return None


def prim_cases(io):
    x = io["prim.input"]
    k121, k1331 = R.make_kernel([1, 2, 1]), R.make_kernel([1, 3, 3, 1])
    return {
        "prim.bilinear_x2": R.bilinear_up2(x),
        "prim.blur121_reflect_2_1": R.Blur([1, 2, 1], (2, 1), reflection_pad=True)(x),
        "prim.blur121_zero_1_0": R.upfirdn2d(x, k121, pad=(1, 0)),
        "prim.blur1331_zero_1_1": R.upfirdn2d(x, k1331, pad=(1, 1)),
        "prim.blur1331_zero_2_2": R.upfirdn2d(x, k1331, pad=(2, 2)),
        "prim.down2_blur1331_pad_1_1": R.upfirdn2d(x, k1331, down=2, pad=(1, 1)),
        "prim.normalize": R.normalize(x),
        "prim.up2_blur1331x4_pad_2_1": R.upfirdn2d(x, k1331 * 4, up=2, pad=(2, 1)),
    }


def crop_cases(io):
    out = R.apply_random_crop(io["crop.input"], 16, 3, io["crop.flip"], io["crop.scale"],
                              io["crop.offset"])
    return {"crop.output": out}


def record_outputs(model, names, prefix, store):
    """Forward hooks that store each named submodule's output as `<prefix><name>`."""
    modules = dict(model.named_modules())
    hooks = []
    for name in names:
        def hook(_module, _inputs, output, key=prefix + name):
            store[key] = output
        hooks.append(modules[name].register_forward_hook(hook))
    return hooks


def eg_cases(io, fixture_dir):
    config = json.loads((fixture_dir / "tiny_eg_config.json").read_text())
    sd = torch.load(fixture_dir / "tiny_eg_checkpoint.pth", map_location="cpu",
                    weights_only=True)
    E, G = R.Encoder(**config), R.Generator(**config)
    e_blur = [1, 2, 1] if config["use_antialias"] else [1]
    g_blur = [1, 3, 3, 1] if config["use_antialias"] else [1]
    # strict=True: every parameter must come from the checkpoint and nothing may be left over.
    E.load_state_dict(R.official_to_ref_state_dict(sd, "E.", e_blur), strict=True)
    G.load_state_dict(R.official_to_ref_state_dict(sd, "G.", g_blur), strict=True)
    G.set_fixed_noise({k[len("noise.G."):]: v for k, v in io.items()
                       if k.startswith("noise.G.")})

    got = {}
    e_names = [k[len("act.E."):] for k in io if k.startswith("act.E.")]
    hooks = record_outputs(E, e_names, "act.E.", got)
    got["sp_structure"], got["gl_structure"] = E(io["x_structure"])
    for h in hooks:
        h.remove()
    got["gl_texture"] = E(io["x_texture"])[1]

    # G is fed the stored codes so that a G mismatch is not masked by an E mismatch.
    sp, gl_s, gl_t = io["sp_structure"], io["gl_structure"], io["gl_texture"]
    g_names = [k[len("act.G."):] for k in io if k.startswith("act.G.")]
    hooks = record_outputs(G, g_names, "act.G.", got)
    got["out_rec"] = G(sp, gl_s)
    for h in hooks:
        h.remove()
    got["out_swap"] = G(sp, gl_t)
    got["out_lerp_0.5"] = G(sp, 0.5 * gl_s + 0.5 * gl_t)  # un-normalised lerp: G normalises
    got["out_spatial_style"] = G(sp, io["spatial_global_code"])
    return got


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fixture-dir", help="official-tiny folder (default: found in shared/)")
    args = parser.parse_args()

    fixture_dir = find_fixture_dir(args.fixture_dir)
    if fixture_dir is None:
        print("SKIP: no shared/fixtures/official-tiny found (looked in /work/shared and "
              f"{REPO_ROOT.parent / 'shared'})")
        return 0

    torch.set_num_threads(2)
    torch.set_default_dtype(torch.float32)
    io = load_file(str(fixture_dir / "tiny_eg_io.safetensors"))

    with torch.no_grad():
        got = {**prim_cases(io), **crop_cases(io), **eg_cases(io, fixture_dir)}

    failures = 0
    width = max(map(len, got))
    for key in sorted(got):
        if key not in io:
            print(f"{key:<{width}}  MISSING from fixture")
            failures += 1
            continue
        ref, out = io[key], got[key]
        if ref.shape != out.shape:
            print(f"{key:<{width}}  SHAPE {tuple(out.shape)} != {tuple(ref.shape)}")
            failures += 1
            continue
        err = (out - ref).abs().max().item()
        bad = err > TOLERANCE
        failures += bad
        print(f"{key:<{width}}  max abs err {err:.3e}{'  FAIL' if bad else ''}")

    unchecked = sorted(k for k in io if k not in got and not k.startswith("noise.G.")
                       and k not in ("x_structure", "x_texture", "spatial_global_code",
                                     "prim.input", "crop.input", "crop.flip", "crop.scale",
                                     "crop.offset"))
    if unchecked:
        print(f"unchecked fixture tensors: {unchecked}")
        failures += len(unchecked)
    print(f"{len(got)} tensors compared, tolerance {TOLERANCE:g}: "
          f"{'OK' if not failures else f'{failures} FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
