#!/usr/bin/env bash
# GPU check: whole-model parity against the PyTorch reference's fixture, then the inference and
# training benchmark, on a GPU backend, printed as one table with the device's name.
#
#   tools/gpu-check.sh build [--features F] [--profile P]   build the bundle in target/gpu-check
#   tools/gpu-check.sh run [--tiny] [--device NAME]         run the bundle (from the repo root)
#   tools/gpu-check.sh all [build and run options]          both, on this machine
#
# `build` runs here (a CPU machine is enough: nothing touches a GPU while compiling). It needs
# the Vulkan loader (`apt-get install libvulkan1`) only to copy it into the bundle, so that a
# bare GPU machine with an NVIDIA driver (which ships the Vulkan ICD but not always the loader)
# can run it. The bundle is two stripped binaries (the parity test and `examples/bench_side`) and
# the loader, a few tens of MB; the parity fixture is read from the repository copy the command
# runs in (crates/sae-model/tests/fixtures).
#
# `run` checks parity on the device (flex is checked beside it), then times, at church-256 size,
# a 256-px swap at batch 8 and 16 and the training steps at batch 8 and 16. `--tiny` instead runs
# a `tiny` swap and `quickstart` training steps at batch 2: what CI runs on Mesa's lavapipe (a CPU Vulkan driver) so that
# this script keeps working between GPU sessions.
#
# Defaults: --features vulkan, --profile release, --device vulkan. On a GPU, run it a second time
# with --features vulkan,fusion,autotune (Burn's operation fusion and kernel autotuning, opt-in
# in our crates) and compare the two tables (docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."

BUNDLE=target/gpu-check
mode=${1:-all}
[ $# -gt 0 ] && shift
features=vulkan
profile=release
device=vulkan
tiny=0
while [ $# -gt 0 ]; do
  case "$1" in
    --features) features=${2:?--features needs a value}; shift 2 ;;
    --profile) profile=${2:?--profile needs a value}; shift 2 ;;
    --device) device=${2:?--device needs a value}; shift 2 ;;
    --tiny) tiny=1; shift ;;
    *) echo "gpu-check: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
case "$mode" in build|run|all) ;; *) echo "gpu-check: unknown mode $mode (build, run or all)" >&2; exit 2 ;; esac

build() {
  echo "== build: --features $features --profile $profile"
  mkdir -p "$BUNDLE/lib"
  local json
  json=$(mktemp)
  # `--workspace`, as the README's test command: the same feature unification, so that a build
  # with the test command's features reuses its artifacts instead of rebuilding Burn.
  cargo build --workspace --profile "$profile" --features "$features" --example bench_side --message-format=json >"$json"
  cargo test --workspace --profile "$profile" --features "$features" --test backend_parity --no-run --message-format=json >>"$json"
  python3 - "$json" "$BUNDLE" <<'EOF'
import json, shutil, sys
out = {}
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable") if m.get("reason") == "compiler-artifact" else None
    name = (m.get("target") or {}).get("name")
    if exe and name in ("bench_side", "backend_parity"):
        out[name] = exe
for name in ("bench_side", "backend_parity"):
    if name not in out:
        sys.exit(f"gpu-check: cargo built no {name} executable")
    shutil.copy(out[name], f"{sys.argv[2]}/{name}")
EOF
  rm -f "$json"
  strip "$BUNDLE/bench_side" "$BUNDLE/backend_parity" 2>/dev/null || true
  local loader
  # (awk reads all of ldconfig's output: an early exit would fail the pipeline under pipefail.)
  loader=$(ldconfig -p | awk '/libvulkan\.so\.1 .*x86-64/ && !found {print $NF; found = 1}')
  if [ -n "$loader" ]; then
    cp -L "$loader" "$BUNDLE/lib/libvulkan.so.1"
  else
    echo "gpu-check: no Vulkan loader here to bundle (apt-get install libvulkan1)" >&2
  fi
  echo "$features" >"$BUNDLE/features"
  du -sh "$BUNDLE"
}

gpu_name() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1
  elif [ -n "${VK_ICD_FILENAMES:-}" ]; then
    echo "Vulkan ICD $(basename "$VK_ICD_FILENAMES")"
  else
    echo "unknown (no nvidia-smi, no VK_ICD_FILENAMES)"
  fi
}

run() {
  [ -x "$BUNDLE/bench_side" ] || { echo "gpu-check: no bundle in $BUNDLE; run \`$0 build\` first" >&2; exit 1; }
  # The system's loader first; the bundled one where the machine has none.
  if ! ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1' >/dev/null; then
    export LD_LIBRARY_PATH="$PWD/$BUNDLE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  local name
  name=$(gpu_name)
  echo "== device: $device on $name (bundle built with --features $(cat "$BUNDLE/features" 2>/dev/null || echo '?'))"

  echo "== parity: the tiny official-format model against the PyTorch reference's outputs"
  SAE_PARITY_DEVICE="$device" "$BUNDLE/backend_parity" --nocapture --test-threads 1

  local cases
  if [ "$tiny" = 1 ]; then
    # The `tiny` swap and the `quickstart` training step (32 px): lavapipe runs GPU kernels on
    # the CPU, and a `tiny` training run there takes over 6 minutes.
    cases=("swap 2 2 tiny" "train quickstart 2 1")
  else
    cases=("swap 8 3" "swap 16 3" "train church256 8 2" "train church256 16 2")
  fi
  local rows=()
  for c in "${cases[@]}"; do
    echo "== bench: $c"
    # shellcheck disable=SC2086
    line=$("$BUNDLE/bench_side" --device "$device" $c | tail -n 1)
    echo "$line"
    rows+=("$c|$line")
  done
  echo
  echo "GPU check on $name, device $device, $(date -u +%Y-%m-%d)"
  echo
  echo "| work | median | images/s |"
  echo "|---|---:|---:|"
  for r in "${rows[@]}"; do
    python3 - "$r" <<'EOF'
import json, sys
case, line = sys.argv[1].split("|", 1)
v = json.loads(line)
parts = case.split()
if parts[0] == "swap":
    batch = int(parts[1])
    net = parts[3] if len(parts) > 3 else "church256"
    print(f"| {net} swap, batch {batch} | {v['swap']:.3f} s | {batch / v['swap']:.1f} |")
else:
    net, batch = parts[1], int(parts[2])
    for k, label in (("d", "D step"), ("r1", "R1 step"), ("g", "G step")):
        print(f"| {net} batch {batch}: {label} | {v[k]:.3f} s | |")
    print(f"| {net} batch {batch}: official schedule (D + G + R1/16) | {v['schedule']:.3f} s "
          f"| {v['images_per_s']:.1f} |")
EOF
  done
}

case "$mode" in
  build) build ;;
  run) run ;;
  all) build; run ;;
esac
