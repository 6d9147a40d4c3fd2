#!/usr/bin/env bash
# Benchmark `chbuild image z1..z4` against the reference Ansible flow
# (`tar -axf` of the same archive into four directories), in one run:
#   - cold: empty store, so the base is ingested first;
#   - warm: base already stored, fresh output directory;
#   - disk used by the four node trees (du counts a hardlink once) against
#     one extracted tree.
# Targets (issue 4): cold <= one tar -axf; warm < 1/4 of it; disk < 1.3x.
# Usage: bench/image.sh [ARCHIVE]   (run as root for owners and devices)
set -euo pipefail
cd "$(dirname "$0")/.."
archive=$(realpath "${1:-../shared/fixtures/debian-bookworm-arm64-minbase.tar.xz}")
cargo build --release --quiet
bin=$(realpath "${CARGO_TARGET_DIR:-target}/release/chbuild")
work=$(mktemp -d "${TMPDIR:-/var/tmp}/chbuild-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

sed "s|^path = .*|path = \"$archive\"|" tests/profiles/fixture.toml > "$work/profile.toml"
export SOURCE_DATE_EPOCH=1700000000
ch() { "$bin" --quiet --profile "$work/profile.toml" --secrets "$work/secrets" --store "$work/store" "$@"; }
ch secrets init

secs() { /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null 2>&1; cat "$work/time"; }
sync

read -r one _ < <(secs tar -axf "$archive" -C "$(mkdir -p "$work/one" && echo "$work/one")")
ref4() { for n in 1 2 3 4; do mkdir -p "$work/ref/p$n"; tar -axf "$archive" -C "$work/ref/p$n"; done; }
start=$(date +%s.%N); ref4; four=$(echo "$(date +%s.%N) - $start" | bc)
read -r cold cold_rss < <(secs "$bin" --quiet --profile "$work/profile.toml" --secrets "$work/secrets" --store "$work/store" image z1..z4 --format dir -o "$work/cold")
read -r warm warm_rss < <(secs "$bin" --quiet --profile "$work/profile.toml" --secrets "$work/secrets" --store "$work/store" image z1..z4 --format dir -o "$work/warm")
read -r warm_tar _ < <(secs "$bin" --quiet --profile "$work/profile.toml" --secrets "$work/secrets" --store "$work/store" image z1..z4 -o "$work/warmtar")

du_one=$(du -sk "$work/one" | cut -f1)
du_four=$(du -skc "$work/warm"/z1 "$work/warm"/z2 "$work/warm"/z3 "$work/warm"/z4 | tail -n1 | cut -f1)
du_ref=$(du -skc "$work/ref"/p* | tail -n1 | cut -f1)

printf '%-44s %10s\n' "archive" "$(basename "$archive")"
printf '%-44s %9ss\n' "baseline: one tar -axf" "$one"
printf '%-44s %9ss\n' "reference flow: tar -axf into 4 directories" "$four"
printf '%-44s %9ss  (peak RSS %s KiB)\n' "chbuild image z1..z4, cold (ingest + 4 trees)" "$cold" "$cold_rss"
printf '%-44s %9ss  (peak RSS %s KiB)\n' "chbuild image z1..z4, warm store" "$warm" "$warm_rss"
printf '%-44s %9ss\n' "chbuild image z1..z4, warm, + tar.zst each" "$warm_tar"
printf '%-44s %9s\n' "cold / one tar -axf (target <= 1)" "$(echo "scale=2; $cold / $one" | bc)"
printf '%-44s %9s\n' "warm / one tar -axf (target < 0.25)" "$(echo "scale=2; $warm / $one" | bc)"
printf '%-44s %8s KiB\n' "disk: one extracted tree" "$du_one"
printf '%-44s %8s KiB\n' "disk: reference flow, 4 trees" "$du_ref"
printf '%-44s %8s KiB (%sx one tree, target < 1.3)\n' "disk: chbuild, 4 node trees" "$du_four" "$(echo "scale=2; $du_four / $du_one" | bc)"
