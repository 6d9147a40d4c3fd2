# Run one command of a package layer build with the layer mounted. This
# runs inside the private mount namespace `unshare` made for it, so every
# mount below goes away with the process, however it ends, and nothing
# outside ever sees /proc, /dev or /sys under a store directory.
#
# Arguments: LOWER UPPER WORK MERGED ARCHIVES LISTS -- COMMAND...
set -eu
lower=$1 upper=$2 work=$3 merged=$4 archives=$5 lists=$6
shift 6
[ "$1" = -- ] && shift

# The lower tree is the store's and stays untouched: every change lands
# in UPPER. No index, redirects or metacopy: UPPER must read as a plain
# tree of whole files, whiteouts and opaque directories.
mount -t overlay chbuild-layer \
  -o "lowerdir=$lower,upperdir=$upper,workdir=$work,index=off,redirect_dir=off,metacopy=off,xino=off" \
  "$merged"
mount -t proc proc "$merged/proc"
mount --rbind /dev "$merged/dev"
mount --rbind /sys "$merged/sys"
# apt's downloads and indexes are a cache shared by every layer of the
# store, never part of a layer.
mount --bind "$archives" "$merged/var/cache/apt/archives"
mount --bind "$lists" "$merged/var/lib/apt/lists"

# No daemon starts while packages are installed (invoke-rc.d asks this).
policy=$merged/usr/sbin/policy-rc.d
made=
if [ ! -e "$policy" ] && [ ! -L "$policy" ]; then
  printf '#!/bin/sh\n# chbuild: nothing starts while a layer is built\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  made=1
fi
rc=0
"$@" || rc=$?
[ -z "$made" ] || rm -f "$policy"
exit "$rc"
