#!/usr/bin/env bash
# Builds both readers, regenerates the seeded corpus and reruns the comparison of our `.pth`
# reader (crates/sae-pth) with burn-store's (about 10 min on 2 cores). Results: summary.md.
set -euo pipefail
cd "$(dirname "$0")"
repo=../..
export CARGO_TARGET_DIR="$PWD/target"
(cd burnrd && cargo build --release -j 1)
(cd oursrd && cargo build --release -j 1)
mkdir -p corpus/valid corpus/hostile
cp $repo/crates/sae-pth/tests/fixtures/pth/small_{legacy,zip,zip_proto4}.pth corpus/valid/
cp $repo/crates/sae-model/tests/fixtures/tiny_full_official.pth corpus/valid/
cp $repo/crates/sae-model/tests/fixtures/tiny_full_official.safetensors \
   $repo/crates/sae-pth/tests/fixtures/pth/small_expected.json corpus/
cp $repo/crates/sae-pth/tests/fixtures/pth/forbidden_global.pth corpus/hostile/
if [ -f $repo/../shared/fixtures/official-tiny/tiny_eg_checkpoint.pth ]; then
  cp $repo/../shared/fixtures/official-tiny/tiny_eg_checkpoint.pth corpus/valid/
fi
python3 gen_corpus.py   # seeded
python3 run_all.py      # -> results.jsonl (ulimit -v 4000000, timeout 10, one process per file and reader)
python3 summarize.py    # -> summary.md
