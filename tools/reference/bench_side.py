"""The side-by-side benchmark: our Burn build (`examples/bench_side.rs`) against this PyTorch
reference (which matches the official numerics, see check_official.py) on the same
configurations, 2 threads each, in one run, printed as one table.

For every case each side runs in its own process (so that the peak RSS is that case's), times
medians after warm-up, and the PyTorch side counts the case's floating-point operations with
`torch.utils.flop_counter` (convolutions and matrix products, forward and backward), which gives
both sides' achieved GFLOP/s. The machine's f32 peak is measured as the faster of a 2048³ matrix
product in PyTorch and in Burn.

    cargo build --release -p swapping-autoencoder -p sae-cli --examples --bins
    .venv/bin/python tools/reference/bench_side.py [--quick] [--only NAME,...] [--rounds N]
        [--json out.json]

This machine's neighbours move a single run's ratio by ±0.05 and more: `--rounds 3` runs each case
three times, the side that goes first alternating, and reports the median ratio with its range.
`--json` writes, per case, each side's results of every round (`ours`, `torch`: lists) and peak
RSS (`rss_ours`, `rss_torch`), and the matmul rates.

Cases (NAME): swap1, swap8 (church-256 swap, 256 px, batch 1 / 8: encode both images, decode
with fixed noise; here the official way, the whole encoder on each image, and on our side the
library's `Decoder::swap`, which runs the encoder's trunk once over both images and then only the
branch each one's code needs), cfg128 (the 128-px configuration, batch 4), church256 (batch 2), tiny
(batch 4), quickstart (batch 8): a D step, a D step followed by the lazy R1 step, a G step, each
with its Adam update, and the official schedule (D + G + R1/16 per pair of calls).

`--worker ...` is the PyTorch half of one case (called by the driver).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sae_ref as R  # noqa: E402
import sae_train_ref as T  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
THREADS = 2

# The Rust presets (crates/sae-train/src/options.rs::small_model, presets.rs).
SMALL_PATCH_D = {"netPatchD_max_nc": 32, "netPatchD_pair_channels": [128, 128, 64]}
CONFIGS = {
    "tiny": {"global_code_ch": 128, "spatial_code_ch": 8, "netE_num_downsampling_sp": 3,
             "netE_scale_capacity": 0.125, "netG_scale_capacity": 0.0625, "crop_size": 64,
             "patch_size": 32, "netD_channels": [16, 32, 32, 32, 32],
             "netPatchD_channels": [16, 32, 32, 32], **SMALL_PATCH_D},
    "quickstart": {"global_code_ch": 128, "spatial_code_ch": 2, "netE_num_downsampling_sp": 2,
                   "netE_scale_capacity": 0.125, "netG_scale_capacity": 0.0625,
                   "crop_size": 32, "patch_size": 16, "netD_channels": [16, 32, 32, 32],
                   "netPatchD_channels": [16, 32, 32], **SMALL_PATCH_D,
                   "lambda_L1": 10.0, "lambda_PatchGAN": 5.0, "lr": 0.01},
    "cfg128": {"global_code_ch": 128, "crop_size": 128, "patch_size": 32,
               "netE_scale_capacity": 0.25, "netG_scale_capacity": 0.25,
               "netD_scale_capacity": 0.125, "netPatchD_scale_capacity": 0.5,
               "netPatchD_max_nc": 64},
    "church256": {"crop_size": 256, "patch_size": 128, "patch_use_aggregation": False},
}
LOSS = {"num_chunks": 1, "patch_num_crops": 8, "patch_min_scale": 1 / 8,
        "patch_max_scale": 1 / 4, "lambda_L1": 1.0, "lambda_GAN": 1.0,
        "lambda_PatchGAN": 1.0, "lambda_R1": 10.0, "lambda_patch_R1": 1.0, "R1_once_every": 16,
        "lr": 0.002, "beta1": 0.0, "beta2": 0.99, "patch_use_aggregation": True}

# name -> (kind, config or None, batch, repeats, quick repeats)
CASES = {
    "swap1": ("swap", None, 1, 5, 2),
    "swap8": ("swap", None, 8, 3, 1),
    "cfg128": ("train", "cfg128", 4, 3, 1),
    "church256": ("train", "church256", 2, 1, 1),
    "tiny": ("train", "tiny", 4, 8, 3),
    "quickstart": ("train", "quickstart", 8, 8, 3),
}


def count_flops(fn):
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def timed(fn, repeats, flops=True):
    """(median seconds of `repeats` calls after one warm-up call, flops of one call or None)."""
    # The counted call doubles as the warm-up. The flop counter cannot run R1's
    # `autograd.grad(create_graph=True)`, hence `flops=False` there.
    flops = count_flops(fn) if flops else fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out), flops


def torch_swap(batch, repeats):
    cfg = CONFIGS["church256"]
    E, G = R.Encoder(**cfg).eval(), R.Generator(**cfg).eval()
    structure = torch.rand(batch, 3, 256, 256) * 2 - 1
    texture = torch.rand(batch, 3, 256, 256) * 2 - 1
    fixed = {}

    def swap():
        with torch.no_grad():
            sp, _ = E(structure)
            _, gl = E(texture)
            if not fixed:
                # Fixed noise (as `NoiseMode::Fixed` on our side): drawn once, reused.
                shapes = {}
                hooks = [m.register_forward_pre_hook(
                    lambda mod, inp, name=name: shapes.__setitem__(name, inp[0].shape))
                    for name, m in G.named_modules() if isinstance(m, R.NoiseInjection)]
                G(sp, gl)
                for h in hooks:
                    h.remove()
                fixed.update({k: torch.randn(s[0], 1, s[2], s[3]) for k, s in shapes.items()})
                G.set_fixed_noise(fixed)
            return G(sp, gl)

    swap()
    t, flops = timed(swap, repeats)
    return {"swap": t, "flops": {"swap": flops}}


def torch_train(config, batch, repeats):
    torch.manual_seed(0)
    cfg = {**LOSS, **CONFIGS[config], "batch_size": batch}
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

    d_step(False)  # an extra warm-up, as the Rust side makes two
    g_step()
    d, fd = timed(lambda: d_step(False), repeats)
    d_r1, _ = timed(lambda: d_step(True), repeats, flops=False)
    g, fg = timed(g_step, repeats)
    r1 = max(d_r1 - d, 0.0)
    schedule = d + g + r1 / 16
    return {"d": d, "d_r1": d_r1, "r1": r1, "g": g, "schedule": schedule,
            "images_per_s": 2 * batch / schedule,
            "flops": {"d": fd, "g": fg}}


def torch_matmul(n, repeats):
    a, b = torch.randn(n, n), torch.randn(n, n)
    t, _ = timed(lambda: a @ b, repeats)
    return {"matmul": t}


def worker(args):
    torch.set_num_threads(THREADS)
    kind = args[0]
    if kind == "swap":
        out = torch_swap(int(args[1]), int(args[2]))
    elif kind == "train":
        out = torch_train(args[1], int(args[2]), int(args[3]))
    else:
        out = torch_matmul(int(args[1]), int(args[2]))
    peak = peak_rss()
    if peak is not None:
        out["peak_rss_bytes"] = peak
    print(json.dumps(out))


def peak_rss():
    """This process's peak resident memory in bytes (`VmHWM`, Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run(cmd):
    """(parsed JSON of the last stdout line, peak RSS in bytes) of one process.

    The peak is the one the process reports (`peak_rss_bytes`, its own `VmHWM`). `wait4`'s
    `ru_maxrss` is only the fallback: Linux carries a process's peak across `exec`, so a child of
    this driver starts from the driver's own resident size (about 0.5 GB with torch loaded).
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS),
           "RAYON_NUM_THREADS": str(THREADS)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed with status {status}")
    result = json.loads(out.strip().splitlines()[-1])
    return result, result.get("peak_rss_bytes") or usage.ru_maxrss * 1024


def fmt_s(s):
    return f"{s:.3f} s" if s < 10 else f"{s:.1f} s"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    ap.add_argument("--only", help="comma-separated case names: " + ", ".join(CASES))
    ap.add_argument("--bin", default=str(ROOT / "target/release/examples/bench_side"),
                    help="our benchmark binary (cargo build --release -p swapping-autoencoder "
                         "-p sae-cli --examples --bins)")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run each case this many times, the two sides alternating; the table "
                         "gives medians over the rounds and each ratio's median and range over "
                         "them (default 1)")
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker)
    names = a.only.split(",") if a.only else list(CASES)
    for n in names:
        if n not in CASES:
            raise SystemExit(f"--only: unknown case {n!r}; cases: {', '.join(CASES)}")
    if a.rounds < 1:
        raise SystemExit(f"--rounds: must be at least 1, got {a.rounds}")
    if not Path(a.bin).is_file():
        raise SystemExit(f"--bin: {a.bin} does not exist; run "
                         "`cargo build --release -p swapping-autoencoder -p sae-cli --examples "
                         "--bins` first")
    me = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    results = {}
    mm = {}
    for side, cmd in (("ours", [a.bin]), ("torch", me)):
        r, _ = run(cmd + ["matmul", "2048", "3" if a.quick else "7"])
        mm[side] = 2 * 2048 ** 3 / r["matmul"]
    peak = max(mm.values())
    for n in names:
        kind, config, batch, repeats, quick = CASES[n]
        reps = str(quick if a.quick else repeats)
        args = ["swap", str(batch), reps] if kind == "swap" else \
            ["train", config, str(batch), reps]
        rounds = {"ours": [], "torch": [], "rss_ours": [], "rss_torch": []}
        for i in range(a.rounds):
            print(f"running {n} ({i + 1}/{a.rounds}) ...", file=sys.stderr, flush=True)
            # Which side goes first alternates, so that a drift of the machine's load within a
            # case does not always favour the same side.
            if i % 2 == 0:
                ours, ours_rss = run([a.bin] + args)
                theirs, torch_rss = run(me + args)
            else:
                theirs, torch_rss = run(me + args)
                ours, ours_rss = run([a.bin] + args)
            for key, v in (("ours", ours), ("torch", theirs), ("rss_ours", ours_rss),
                           ("rss_torch", torch_rss)):
                rounds[key].append(v)
        results[n] = rounds

    print(f"\nBurn flex against PyTorch {torch.__version__} (CPU), {THREADS} threads each, "
          f"{os.cpu_count()} cores; medians; {'quick run, ' if a.quick else ''}"
          f"f32 matmul peak {peak / 1e9:.0f} GFLOP/s "
          f"(Burn {mm['ours'] / 1e9:.0f}, PyTorch {mm['torch'] / 1e9:.0f})"
          + (f"; {a.rounds} rounds, the sides alternating: times are medians over the rounds, "
             "a ratio is the median of the rounds' ratios (their range beside it)"
             if a.rounds > 1 else "") + "\n")
    many = a.rounds > 1
    print("| work | ours | PyTorch | ratio |" + (" ratio range |" if many else "")
          + " ours GFLOP/s (% peak) | PyTorch GFLOP/s |")
    print("|---|---:|---:|---:|" + ("---:|" if many else "") + "---:|---:|")

    def row(label, r, key, flops=None):
        t_ours = statistics.median(o[key] for o in r["ours"])
        t_torch = statistics.median(t[key] for t in r["torch"])
        ratios = [o[key] / t[key] for o, t in zip(r["ours"], r["torch"])]
        spread = f" {min(ratios):.2f}–{max(ratios):.2f} |" if many else ""
        gf = ""
        tf = ""
        if flops:
            gf = f"{flops / t_ours / 1e9:.0f} ({100 * flops / t_ours / peak:.0f} %)"
            tf = f"{flops / t_torch / 1e9:.0f}"
        print(f"| {label} | {fmt_s(t_ours)} | {fmt_s(t_torch)} | "
              f"**{statistics.median(ratios):.2f}** |{spread} {gf} | {tf} |")

    for n in names:
        r = results[n]
        kind, config, batch, _, _ = CASES[n]
        f = r["torch"][0]["flops"]
        if kind == "swap":
            row(f"church-256 swap, 256 px, batch {batch}", r, "swap", f["swap"])
            continue
        label = f"{config}, batch {batch}"
        row(f"{label}: D step", r, "d", f["d"])
        row(f"{label}: R1 step", r, "r1")
        row(f"{label}: G step", r, "g", f["g"])
        row(f"{label}: official schedule (D + G + R1/16)", r, "schedule", f["d"] + f["g"])
    print("\n| case | ours peak RSS | PyTorch peak RSS | ratio |")
    print("|---|---:|---:|---:|")
    for n in names:
        # The highest peak over the rounds, each side: the memory a user must have.
        o, t = max(results[n]["rss_ours"]), max(results[n]["rss_torch"])
        print(f"| {n} | {o / 2**30:.2f} GB | {t / 2**30:.2f} GB | **{o / t:.2f}** |")
    print("\nThe R1 rows have no GFLOP/s: PyTorch's double backward and our input-VJPs do "
          "different work. GFLOP/s of the schedule row counts D + G only.")
    if a.json:
        Path(a.json).write_text(json.dumps({"matmul_flops_per_s": mm, "results": results},
                                           indent=1))


if __name__ == "__main__":
    main()
