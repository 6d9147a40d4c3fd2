#!/usr/bin/env bash
# Ingest the minbase fixture with a release build of chbuild and compare its
# wall time and peak memory with `tar -xJf` of the same file, in the same run
# and on the same filesystem. Usage: bench/ingest.sh [ARCHIVE] [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."

archive=$(realpath "${1:-../shared/fixtures/debian-bookworm-arm64-minbase.tar.xz}")
work=${2:-$(mktemp -d "${TMPDIR:-/var/tmp}/chbuild-bench.XXXXXX")}
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install time" >&2; exit 1; }
cargo build --release --locked --quiet
bin=${CARGO_TARGET_DIR:-target}/release/chbuild

# A profile whose base is the archive (the default one with [base] swapped).
awk -v path="$archive" '
  /^\[base\]/ { print "[base]\nsource = \"archive\"\npath = \"" path "\"\narchitecture = \"arm64\"\n"; skip = 1; next }
  /^\[/ { skip = 0 }
  !skip' profiles/clusterhat.toml > "$work/profile.toml"

measure() { # label, command...
  local label=$1; shift
  sync
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null
  read -r secs kb < "$work/time"
  printf '%-34s %7.2f s  %7d MiB peak RSS\n' "$label" "$secs" $((kb / 1024))
  echo "$label $secs" >> "$work/all"
}

# The machine may be shared: alternate the two for a few rounds and compare
# medians.
rounds=${ROUNDS:-3}
echo "archive: $archive ($(du -h "$archive" | cut -f1)), $(nproc) CPUs, $rounds rounds, load $(cut -d' ' -f1-3 /proc/loadavg)"
# Both read the archive from the page cache.
cat "$archive" > /dev/null
for _ in $(seq "$rounds"); do
  rm -rf "$work/tar" "$work/store"
  mkdir "$work/tar"
  measure "tar -xJf" tar -xJf "$archive" -C "$work/tar"
  measure "chbuild store ingest" "$bin" -q --profile "$work/profile.toml" --store "$work/store" store ingest
done
measure "chbuild store ingest (stored)" "$bin" -q --profile "$work/profile.toml" --store "$work/store" store ingest
median() { grep "^$1 [0-9]" "$work/all" | awk '{print $NF}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median: tar -xJf $(median 'tar -xJf') s, chbuild $(median 'chbuild store ingest') s"
