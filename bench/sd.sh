#!/usr/bin/env bash
# Benchmark `chbuild sd`'s image build for p5 against its floor, `mke2fs -d`
# of the same tree alone, in the same run; then (as root) write the image
# to a loop device and compare the bytes written with the image size.
# Target: build within 1.5x of mke2fs -d.
#
# usage: bench/sd.sh [TREE]   (default: the minbase fixture, unpacked here)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/wt-store/target}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

work=$(mktemp -d "${TMPDIR:-/tmp}/chbuild-sd-bench.XXXXXX")
loopdev=""
cleanup() {
  [ -n "$loopdev" ] && losetup -d "$loopdev" || true
  rm -rf "$work"
}
trap cleanup EXIT

tree=${1:-}
if [ -z "$tree" ]; then
  tree=$work/tree
  mkdir -p "$tree"
  tar -xpJf ../shared/fixtures/debian-bookworm-arm64-minbase.tar.xz -C "$tree"
  mkdir -p "$tree/boot/firmware"
  printf 'arm_64bit=1\n' > "$tree/boot/firmware/config.txt"
  printf 'console=serial0,115200 root=/dev/mmcblk0p2 rootwait\n' > "$tree/boot/firmware/cmdline.txt"
  head -c 24M /dev/urandom > "$tree/boot/firmware/kernel8.img"
fi

cargo build -q --example sd_bench
bench=$CARGO_TARGET_DIR/debug/examples/sd_bench

now() { date +%s.%N; }
# Warm the page cache so neither run pays for the first read of the tree.
tar -cf - -C "$tree" . > /dev/null

# The image build.
t0=$(now)
"$bench" "$tree" "$work/p5.img" > "$work/build.out"
t1=$(now)
cat "$work/build.out"
img_size=$(sed -n 's/^image_size=//p' "$work/build.out")

# The floor: mke2fs -d of the same tree into a file of the root partition's size.
root_sectors=$(sfdisk --json "$work/p5.img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["partitions"][1]["size"])')
truncate -s $((root_sectors * 512)) "$work/floor.ext4"
t2=$(now)
mke2fs -q -F -t ext4 -E nodiscard -d "$tree" "$work/floor.ext4"
t3=$(now)

calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }
build=$(calc "$t1 - $t0")
floor=$(calc "$t3 - $t2")
ratio=$(calc "$build / $floor")
echo "image build:        ${build}s"
echo "mke2fs -d (floor):  ${floor}s"
echo "ratio:              ${ratio}x (target <= 1.5x)"

if [ "$(id -u)" = 0 ]; then
  truncate -s $((img_size + (64 << 20))) "$work/card"
  loopdev=$(losetup -f --show "$work/card")
  "$bench" "$tree" "$work/p5.img" --dev "$loopdev" > "$work/write.out"
  written=$(sed -n 's/^bytes_written=//p' "$work/write.out")
  echo "loop-device write:  $written bytes written of $img_size ($(calc "100 * $written / $img_size")%) in $(sed -n 's/^write_seconds=//p' "$work/write.out")s"
else
  echo "SKIP loop-device write: needs root"
fi
