"""Time the official training steps in PyTorch (CPU, 2 threads) on the same configurations as
`cargo run --release --example train_speed -- PRESET BATCH`: a D step, a D step followed by
the R1 step (create_graph double backward), a G step, each with its Adam update, on random
images, fresh crops and fresh noise. Prints medians and the images/s of the official schedule
(R1 after every 16th D step).

Run: /work/venv-ref/bin/python tools/reference/bench_train_torch.py [PRESET [BATCH [REPEATS]]]
(PRESET: tiny or church256; defaults tiny 4 8).
"""

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sae_ref as R  # noqa: E402
import sae_train_ref as T  # noqa: E402

# The Rust `tiny` preset (crates/sae-train/src/options.rs::tiny_model).
TINY = {"global_code_ch": 128, "netE_num_downsampling_sp": 3, "netE_scale_capacity": 0.125,
        "netG_scale_capacity": 0.0625, "crop_size": 64, "patch_size": 32,
        "netD_channels": [16, 32, 32, 32, 32], "netPatchD_channels": [16, 32, 32, 32],
        "netPatchD_max_nc": 32, "netPatchD_pair_channels": [128, 128, 64]}
CHURCH = {"crop_size": 256, "patch_size": 128}
LOSS = {"num_chunks": 1, "patch_num_crops": 8, "patch_min_scale": 1 / 8,
        "patch_max_scale": 1 / 4, "lambda_L1": 1.0, "lambda_GAN": 1.0,
        "lambda_PatchGAN": 1.0, "lambda_R1": 10.0, "lambda_patch_R1": 1.0, "R1_once_every": 16,
        "lr": 0.002, "beta1": 0.0, "beta2": 0.99}


def main():
    preset = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = {**({"tiny": TINY, "church256": CHURCH}[preset]), **LOSS, "batch_size": batch,
           "patch_use_aggregation": preset != "church256"}
    E, G, D, P = R.Encoder(**cfg), R.Generator(**cfg), R.Discriminator(**cfg), \
        R.PatchDiscriminator(**cfg)
    opt_g, opt_d = T.optimizers(E, G, D, P, cfg)
    s = cfg["crop_size"]

    def crops(k):
        return [R.draw_crop_params(batch, cfg["patch_num_crops"],
                                   (cfg["patch_min_scale"], cfg["patch_max_scale"]))
                for _ in range(k)]

    def d_step(r1):
        for p in list(D.parameters()) + list(P.parameters()):
            p.requires_grad_(True)
        real = torch.rand(batch, 3, s, s) * 2 - 1
        opt_d.zero_grad(set_to_none=False)
        sum(T.d_step_losses(E, G, D, P, real, cfg, crops(3)).values()).backward()
        opt_d.step()
        if r1:
            opt_d.zero_grad(set_to_none=False)
            sum(T.r1_losses(D, P, real, cfg, crops(2)).values()).backward()
            opt_d.step()

    def g_step():
        for p in list(D.parameters()) + list(P.parameters()):
            p.requires_grad_(False)
        real = torch.rand(batch, 3, s, s) * 2 - 1
        opt_g.zero_grad(set_to_none=False)
        sum(T.g_step_losses(E, G, D, P, real, cfg, crops(2)).values()).backward()
        opt_g.step()

    def timed(fn, *a):
        fn(*a)
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(*a)
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    d, d_r1, g = timed(d_step, False), timed(d_step, True), timed(g_step)
    r1 = d_r1 - d
    pair = d + g + r1 / 16
    print(f"preset {preset}, batch {batch}, {s} px, torch {torch.__version__}, 2 threads")
    print(f"D step      {d:8.3f} s")
    print(f"D step + R1 {d_r1:8.3f} s  (R1 alone {r1:.3f} s = {r1 / d:.2f}x a D step)")
    print(f"G step      {g:8.3f} s")
    print(f"schedule    {2 * batch / pair:8.2f} images/s ({2 / pair:.2f} optimizer calls/s)")


if __name__ == "__main__":
    main()
