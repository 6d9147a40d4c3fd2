#!/usr/bin/env bash
# Prepare a Debian 12 (bookworm) or newer machine, as root, to run chbuild:
# install only the tools chbuild drives. It starts no service and installs
# no daemon; the one other change it makes is an apt source for
# bookworm-backports (for e2fsprogs >= 1.47.1), only where the installed
# e2fsprogs is older, from the Debian URI the machine already uses.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

. .ci/backports.sh

apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  ca-certificates xz-utils zstd \
  mmdebstrap qemu-user-static binfmt-support arch-test \
  dosfstools mtools fdisk mount e2fsprogs >/dev/null

# Reproducible ext4 images need e2fsprogs >= 1.47.1 (bookworm has 1.47.0).
if ! dpkg --compare-versions "$(dpkg-query -W -f='${Version}' e2fsprogs)" ge 1.47.1; then
  enable_backports
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends -t bookworm-backports e2fsprogs >/dev/null
fi
mke2fs -V 2>&1 | sed -n 1p

# Foreign-architecture (arm64) bases run their maintainer scripts through
# qemu-user-static, which needs binfmt_misc mounted and the handlers on.
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
fi
update-binfmts --enable || true
