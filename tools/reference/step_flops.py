"""FLOPs of one training step per image, counted by `torch.utils.flop_counter` on PyTorch's
`meta` device (shapes only, nothing is computed, so a 768-px FFHQ step counts in seconds on a
laptop): the D step and the G step, forward and backward, of our PyTorch reference (which matches
the official numerics). The lazy R1 step is not counted (the counter cannot follow
`autograd.grad(create_graph=True)`); it runs once every 16 D steps. Used by docs/distributed.md.

    .venv/bin/python tools/reference/step_flops.py [--batch 4]
"""

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sae_ref as R  # noqa: E402
import sae_train_ref as T  # noqa: E402
from bench_side import LOSS  # noqa: E402

# The official presets' network options (crates/sae-model/src/config.rs::Preset::config).
PRESETS = {
    "church256": {"crop_size": 256, "patch_size": 128, "patch_use_aggregation": False},
    "ffhq1024": {"crop_size": 768, "netG_scale_capacity": 0.8, "netE_num_downsampling_sp": 5,
                 "netE_scale_capacity": 0.4, "global_code_ch": 1536, "patch_size": 256},
}


def count(fn):
    with FlopCounterMode(display=False) as c:
        fn()
    return c.get_total_flops()


def step_flops(name, batch):
    cfg = {**LOSS, **PRESETS[name], "batch_size": batch}
    with torch.device("meta"):
        E, G, D, P = R.Encoder(**cfg), R.Generator(**cfg), R.Discriminator(**cfg), \
            R.PatchDiscriminator(**cfg)
        s = cfg["crop_size"]
        real = torch.empty(batch, 3, s, s)

        def crops(k):
            return [R.draw_crop_params(batch, cfg["patch_num_crops"],
                                       (cfg["patch_min_scale"], cfg["patch_max_scale"]))
                    for _ in range(k)]

        def d_step():
            sum(T.d_step_losses(E, G, D, P, real, cfg, crops(3)).values()).backward()

        def g_step():
            for p in list(D.parameters()) + list(P.parameters()):
                p.requires_grad_(False)
            sum(T.g_step_losses(E, G, D, P, real, cfg, crops(2)).values()).backward()

        return count(d_step) / batch, count(g_step) / batch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    a = ap.parse_args()
    for name in PRESETS:
        d, g = step_flops(name, a.batch)
        print(f"{name}: D step {d / 1e9:.1f} GFLOP/image, G step {g / 1e9:.1f} GFLOP/image "
              f"(batch {a.batch})")


if __name__ == "__main__":
    main()
