"""PyTorch CPU baseline timings for the heavy church-256 layers, to compare with the Burn port.

Each case is timed as the median of N runs after warm-up, for the forward pass (under
no_grad, as at inference) and for forward + backward of sum(out * gout) w.r.t. the input and
all parameters. float32, CPU, 2 threads (the Burn benchmarks run on 2 cores too).

    python bench_torch.py [--quick] [--json out.json]
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sae_ref as R  # noqa: E402

STYLE_DIM = 2048  # church-256 global_code_ch


def modconv(cin, cout, size, batch=4):
    m = R.ModulatedConv2d(cin, cout, 3, STYLE_DIM)
    return m, {"x": torch.randn(batch, cin, size, size), "style": torch.randn(batch, STYLE_DIM)}


def styled_conv_up(cin, cout, size, batch=4):
    m = R.StyledConv(cin, cout, 3, STYLE_DIM, upsample=True)
    return m, {"x": torch.randn(batch, cin, size, size), "style": torch.randn(batch, STYLE_DIM),
               "noise": torch.randn(batch, 1, 2 * size, 2 * size)}


def resblock_d(cin, cout, size, batch=4):
    m = R.ResBlock(cin, cout, blur_kernel=[1, 3, 3, 1], downsample=True)
    return m, {"x": torch.randn(batch, cin, size, size)}


def crop_sampler(batch=4, size=256, num_crops=8, patch=128):
    flip, scale, offset = R.draw_crop_params(batch, num_crops)

    def forward(x):
        return R.apply_random_crop(x, patch, num_crops, flip, scale, offset)
    return forward, {"x": torch.rand(batch, 3, size, size) * 2 - 1}


# name -> (builder, description). Builders return (module or function, inputs).
CASES = {
    "modconv_512_16": (lambda: modconv(512, 512, 16),
                       "ModulatedConv2d 3x3 demod 512->512, 16x16, B4"),
    "modconv_512_32": (lambda: modconv(512, 512, 32),
                       "ModulatedConv2d 3x3 demod 512->512, 32x32, B4"),
    "modconv_128_256": (lambda: modconv(128, 128, 256),
                        "ModulatedConv2d 3x3 demod 128->128, 256x256, B4"),
    "styled_conv_up_512_16": (lambda: styled_conv_up(512, 512, 16),
                              "StyledConv up [1,3,3,1] 512->512, 16->32, noise, B4"),
    "resblock_d_128": (lambda: resblock_d(128, 256, 128),
                       "D ResBlock [1,3,3,1] down 128->256, 128x128, B4"),
    "crop_sampler": (crop_sampler,
                     "apply_random_crop B4 3x256x256, 8 crops, P128 (grad w.r.t. image)"),
}
NON_DIFF = {"noise"}


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def median_ms(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench(name, warmup, runs):
    torch.manual_seed(0)
    model, inputs = CASES[name][0]()
    params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
    diff = [v.requires_grad_() for k, v in inputs.items() if k not in NON_DIFF]
    with torch.no_grad():
        gout = torch.randn_like(model(**inputs))

    def fwd():
        with torch.no_grad():
            model(**inputs)

    def fwd_bwd():
        # autograd.grad rather than .backward(): no .grad accumulation between runs.
        torch.autograd.grad((model(**inputs) * gout).sum(), diff + params)

    return {"name": name, "description": CASES[name][1],
            "fwd_ms": median_ms(fwd, warmup, runs), "fwd_bwd_ms": median_ms(fwd_bwd, warmup, runs)}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 2 timed runs")
    parser.add_argument("--json", help="write the results as JSON to this path")
    parser.add_argument("--only", nargs="*", choices=list(CASES), help="subset of cases")
    args = parser.parse_args()

    torch.set_num_threads(2)
    torch.set_default_dtype(torch.float32)
    warmup, runs = (1, 2) if args.quick else (2, 7)

    results = []
    print("| name | fwd ms | fwd+bwd ms |\n|---|---:|---:|")
    for name in args.only or CASES:
        r = bench(name, warmup, runs)
        results.append(r)
        print(f"| {name} | {r['fwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} |", flush=True)

    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "device": "cpu", "dtype": "float32", "cpu": cpu_name(), "warmup": warmup,
                "runs": runs, "statistic": "median"}
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
