#!/usr/bin/env bash
# Package layers (issue 11): for a profile, with an empty store (or the one
# given), time `chbuild image all` (base ingest + every package layer +
# node trees), then a warm rebuild (layers stored, fresh output), and
# report each layer's build time, what it added on disk against the
# installed size dpkg gives for the packages it installed, and the store's
# disk use: base alone against base plus every layer (du counts a
# hardlinked file once).
#
# Target: a layer adds at most 1.2x the installed size of its packages.
#
# Usage: bench/layers.sh [PROFILE] [STORE]
#   PROFILE  default tests/profiles/fixture.toml (the minbase fixture);
#            profiles/clusterhat.toml measures the default profile (its
#            Debian base is built first when STORE does not hold it).
#   STORE    a store to reuse (its layers are removed first, its bases
#            kept); default: a new one.
# Run as root (owners), with binfmt_misc for arm64 and apt's mirror.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=$(realpath "${1:-tests/profiles/fixture.toml}")
cargo build --release --quiet
bin=$(realpath "${CARGO_TARGET_DIR:-target}/release/chbuild")
work=$(mktemp -d "${TMPDIR:-/var/tmp}/chbuild-bench-layers.XXXXXX")
trap 'rm -rf "$work"' EXIT
store=${2:-$work/store}
mkdir -p "$store"
rm -rf "$store/layers"
export SOURCE_DATE_EPOCH=1700000000
ch() { "$bin" --quiet --profile "$profile" --secrets "$work/secrets" --store "$store" "$@"; }
ch secrets init

secs() { /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null; cat "$work/time"; }
read -r cold cold_rss < <(secs "$bin" --quiet --profile "$profile" --secrets "$work/secrets" --store "$store" image all --format dir -o "$work/cold")
read -r warm warm_rss < <(secs "$bin" --quiet --profile "$profile" --secrets "$work/secrets" --store "$store" image all --format dir -o "$work/warm")

ch --json store list >"$work/list.json"
python3 - "$work/list.json" "$store" <<'EOF'
import json, os, subprocess, sys
entries = json.load(open(sys.argv[1]))
lst = {"bases": [e for e in entries if e["kind"] == "base"],
       "layers": [e for e in entries if e["kind"] == "layer"]}
store = sys.argv[2]

def installed_kib(tree, names):
    # Installed-Size (KiB) of the given packages, from the tree's dpkg status.
    sizes, cur = {}, {}
    for line in open(os.path.join(tree, "var/lib/dpkg/status"), errors="replace"):
        line = line.rstrip("\n")
        if not line:
            if "Package" in cur:
                sizes[cur["Package"]] = int(cur.get("Installed-Size", "0"))
            cur = {}
        elif ":" in line and not line.startswith(" "):
            k, v = line.split(":", 1)
            cur[k] = v.strip()
    if "Package" in cur:
        sizes[cur["Package"]] = int(cur.get("Installed-Size", "0"))
    return sum(sizes.get(n, 0) for n in names)

def du_kib(*paths):
    out = subprocess.run(["du", "-skc", *paths], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1].split()[0])

print(f"{'layer':14} {'parent':14} {'secs':>6} {'pkgs':>5} {'added KiB':>10} {'installed KiB':>14} {'ratio':>6}  packages")
for l in lst["layers"]:
    tree = os.path.join(store, "layers", l["key"], "tree")
    names = [p.split("=")[0] for p in l["installed"]]
    inst = installed_kib(tree, names)
    # What the layer added on disk: du of the layer after its parent (or
    # base), so files shared by hardlink are counted once, with the parent.
    parent = (os.path.join(store, "layers", l["parent"], "tree") if l["parent"]
              else os.path.join(store, l["base"], "tree"))
    added = du_kib(parent, tree) - du_kib(parent)
    ratio = added / inst if inst else 0
    print(f"{l['key'][:12]:14} {(l['parent'] or 'base')[:12]:14} {l['seconds']:6.0f} {len(names):5} {added:10} {inst:14} {ratio:6.2f}  {' '.join(l['packages'])}")
bases = [os.path.join(store, b["digest"], "tree") for b in lst["bases"]]
layers = [os.path.join(store, "layers", l["key"], "tree") for l in lst["layers"]]
b = du_kib(*bases)
a = du_kib(*bases, *layers)
print(f"store: base alone {b} KiB, base + {len(layers)} layers {a} KiB ({a / b:.2f}x)")
EOF
printf '%-48s %8ss  (peak RSS %s KiB)\n' "image all, cold layers (incl. base if new)" "$cold" "$cold_rss"
printf '%-48s %8ss  (peak RSS %s KiB)\n' "image all, warm (layers stored, new output)" "$warm" "$warm_rss"
