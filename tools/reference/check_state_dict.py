"""Check `sae_ref.ref_to_official_state_dict` against the official key lists.

1. For every configuration in `shared/spec/state-dict-shapes.json` (12 presets plus the bare
   defaults): build E, G, D and Dpatch from the entry's options (on the meta device, so no
   memory is used), export the official state_dict and compare the complete ordered list of
   (key, shape, dtype) triples and the per-network parameter counts with the file.
2. Round trip through the official-tiny checkpoint (a file written by the official code itself):
   official -> `official_to_ref_state_dict` -> reference E/G -> `ref_to_official_state_dict`
   must give back the same keys in the same order with identical dtypes and values.
3. Round trip of a small randomised D and Dpatch: reference -> official -> reference.

Prints one line per check; exits 1 on the first mismatch. Prints SKIP for parts whose shared
input file is absent.

Run: /work/venv-ref/bin/python tools/reference/check_state_dict.py
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sae_ref as R  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]


def find_shared(rel):
    for shared in (Path("/work/shared"), REPO_ROOT.parent / "shared"):
        if (shared / rel).exists():
            return shared / rel
    return None


def build(options, device="meta"):
    with torch.device(device):
        return (R.Encoder(**options), R.Generator(**options), R.Discriminator(**options),
                R.PatchDiscriminator(**options))


def dtype_name(t):
    return str(t.dtype).replace("torch.", "")


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def check_shapes_json(path):
    entries = json.loads(path.read_text())
    for name, entry in entries.items():
        E, G, D, P = build(entry["options"])
        sd = R.ref_to_official_state_dict(E, G, D, P)
        got = [[k, list(v.shape), dtype_name(v)] for k, v in sd.items()]
        want = entry["state_dict"]
        if got != want:
            for i, (g, w) in enumerate(zip(got, want)):
                if g != w:
                    fail(f"{name}: entry {i}: got {g}, want {w}")
            fail(f"{name}: {len(got)} entries, want {len(want)}")
        # The file's `param_counts` are the element counts of each network's state_dict
        # entries, i.e. learnable parameters *plus* the constant kernel buffers (although
        # the notes on the file's format say "buffers excluded"); check both numbers.
        nets = (("E", E, R.E_PREFIX), ("G", G, R.G_PREFIX), ("D", D, R.D_PREFIX),
                ("Dpatch", P, R.DPATCH_PREFIX))
        learnable = {n: sum(p.numel() for p in m.parameters()) for n, m, _ in nets}
        with_buffers = {n: sum(v.numel() for k, v in sd.items() if k.startswith(prefix))
                        for n, _, prefix in nets}
        if with_buffers != entry["param_counts"]:
            fail(f"{name}: state_dict element counts {with_buffers}, "
                 f"want {entry['param_counts']}")
        nd = sum(k.startswith(R.D_PREFIX) for k in sd)
        npd = sum(k.startswith(R.DPATCH_PREFIX) for k in sd)
        print(f"ok  {name}: {len(sd)} keys in order (D {nd}, Dpatch {npd}), shapes, dtypes; "
              f"element counts {with_buffers} match (learnable only: {learnable})")
        if name == "default":
            for prefix in (R.D_PREFIX, R.DPATCH_PREFIX):
                sub_got = [e for e in got if e[0].startswith(prefix)]
                sub_want = [e for e in want if e[0].startswith(prefix)]
                assert sub_got == sub_want
                print(f"ok  default: {prefix}* {len(sub_got)} keys identical "
                      f"(first {sub_got[0][0]}, last {sub_got[-1][0]})")


def check_official_tiny(fixture_dir):
    config = json.loads((fixture_dir / "tiny_eg_config.json").read_text())
    sd = torch.load(fixture_dir / "tiny_eg_checkpoint.pth", map_location="cpu",
                    weights_only=True)
    E, G = R.Encoder(**config), R.Generator(**config)
    E.load_state_dict(R.official_to_ref_state_dict(sd, "E.", E.blur_kernel), strict=True)
    G.load_state_dict(R.official_to_ref_state_dict(sd, "G.", G.blur_kernel), strict=True)
    back = R.ref_to_official_state_dict(
        E, G, num_discriminator_iters=int(sd["num_discriminator_iters"]))
    if list(back) != list(sd):
        fail(f"official-tiny: key order differs: {list(back)[:5]} vs {list(sd)[:5]}")
    for k, v in sd.items():
        b = back[k]
        if b.dtype != v.dtype or b.shape != v.shape or not torch.equal(b, v):
            fail(f"official-tiny: {k}: {b.dtype} {tuple(b.shape)} vs {v.dtype} {tuple(v.shape)}")
    print(f"ok  official-tiny round trip: {len(sd)} keys, same order, dtypes and values")


def check_d_round_trip():
    torch.manual_seed(0)
    opts = {"crop_size": 32, "netD_channels": [8, 16, 16, 16], "patch_size": 16,
            "netPatchD_channels": [8, 16, 16], "netPatchD_max_nc": 16,
            "netPatchD_pair_channels": [32, 32, 16], "use_antialias": True}
    D, P = R.Discriminator(**opts), R.PatchDiscriminator(**opts)
    for m in (D, P):
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn_like(p))
    sd = R.ref_to_official_state_dict(D=D, Dpatch=P)
    for net, prefix in ((D, R.D_PREFIX), (P, R.DPATCH_PREFIX)):
        fresh = type(net)(**opts)
        fresh.load_state_dict(R.official_to_ref_state_dict(sd, prefix, [1, 3, 3, 1]), strict=True)
        for (n, a), (_, b) in zip(net.named_parameters(), fresh.named_parameters()):
            if not torch.equal(a, b):
                fail(f"{prefix}{n} did not round-trip")
    print(f"ok  D/Dpatch round trip reference -> official -> reference ({len(sd) - 1} keys)")


def main():
    torch.set_num_threads(2)
    shapes = find_shared(Path("spec/state-dict-shapes.json"))
    if shapes is None:
        print("SKIP: spec/state-dict-shapes.json not found")
    else:
        check_shapes_json(shapes)
    tiny = find_shared(Path("fixtures/official-tiny"))
    if tiny is None:
        print("SKIP: fixtures/official-tiny not found")
    else:
        check_official_tiny(tiny)
    check_d_round_trip()


if __name__ == "__main__":
    main()
