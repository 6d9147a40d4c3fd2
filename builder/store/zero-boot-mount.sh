# Run the Zero boot layer's initramfs build with the layer mounted. This
# runs inside the private mount namespace `unshare` made for it, so every
# mount below goes away with the process, however it ends, and nothing
# outside ever sees /proc, /dev or /sys under a store directory.
#
# Arguments: LOWER UPPER WORK MERGED -- COMMAND...
set -eu
lower=$1 upper=$2 work=$3 merged=$4
shift 4
[ "$1" = -- ] && shift

# The lower tree is the store's and stays untouched: every change lands
# in UPPER, which must read as a plain tree of whole files, whiteouts and
# opaque directories (see layer-mount.sh).
mount -t overlay chbuild-zero-boot \
  -o "lowerdir=$lower,upperdir=$upper,workdir=$work,index=off,redirect_dir=off,metacopy=off,xino=off" \
  "$merged"
mount -t proc proc "$merged/proc"
mount --rbind /dev "$merged/dev"
mount --rbind /sys "$merged/sys"
exec "$@"
