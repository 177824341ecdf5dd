#!/usr/bin/env bash
# Time per editor update: starts `sae serve` on a checkpoint, uploads the two demo scenes, and
# prints the median of the server's own render time (the `x-render-ms` header: the generator
# and the PNG encoding, not the network) for a swap, a swap inside a region, and the encoding
# of one upload (what a new image costs once).
#
#   tools/editor-timing.sh CHECKPOINT [LOAD_SIZE] [REPEATS]
# (needs `cargo build --release -p sae-cli`; python3 for the JSON and the median)
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=${1:?usage: tools/editor-timing.sh CHECKPOINT [LOAD_SIZE] [REPEATS]}
size=${2:-256}
reps=${3:-7}
out=$(mktemp)
target/release/sae serve --checkpoint "$ckpt" --load-size "$size" --port 0 >"$out" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q serving "$out" && break; sleep 0.2; done
url=$(sed -n 's/^serving on //p' "$out")
upload() {
  local t0 t1 id
  t0=$(date +%s%N)
  id=$(curl -s --data-binary @"$1" "${url}api/image" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  t1=$(date +%s%N)
  echo "$id $(( (t1 - t0) / 1000000 ))"
}
read -r a upload_ms < <(upload assets/images/scene_a.png)
read -r b _ < <(upload assets/images/scene_b.png)
mask=$(python3 -c "import base64; n=$size; print(base64.b64encode(bytes(255 if x < n//2 else 0 for y in range(n) for x in range(n))).decode())")
render() {
  curl -s -o /dev/null -D - -H 'content-type: application/json' --data "$1" "${url}api/render" |
    tr -d '\r' | sed -n 's/^x-render-ms: //p'
}
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.1f}')" "$@"; }
swap=(); region=()
for i in $(seq "$reps"); do
  swap+=("$(render "{\"structure\":$a,\"texture\":$b,\"alpha\":0.$i}")")
  region+=("$(render "{\"structure\":$a,\"texture\":$b,\"alpha\":0.$i,\"mask\":\"$mask\"}")")
done
echo "checkpoint $ckpt, ${size} px, $reps renders each"
echo "update, texture mix (ms, median):         $(median "${swap[@]}")"
echo "update, mix inside a region (ms, median): $(median "${region[@]}")"
echo "upload + encode of one image (ms, once, with HTTP): $upload_ms"
