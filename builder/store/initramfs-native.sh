# Run `chroot "$root" @COMMAND@` (mkinitramfs or update-initramfs in a
# tree of a foreign architecture) with the build machine's own copying
# tools where that gives the same result, else all under emulation.
# Included (this header paragraph dropped, @COMMAND@ and @PKGS@ replaced)
# by debian.rs's BUILD_INITRAMFS hook and by the Zero boot layer (see
# zero_boot.rs); the caller sets `root` and `set -e`. Why and how: see
# BUILD_INITRAMFS_PRELUDE in debian.rs.

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: >"$work/tools"; : >"$work/mounts"; : >"$work/made"; : >"$work/times"
pkgs="coreutils findutils zstd@PKGS@"
dpkg-query -W -f '${Package} ${Version}
' $pkgs 2>/dev/null | sort >"$work/host" || true
chroot "$root" dpkg-query -W -f '${Package} ${Version}
' $pkgs 2>/dev/null | sort >"$work/base" || true
for pkg in $(comm -12 "$work/host" "$work/base" | cut -d' ' -f1); do
  case $pkg in
    coreutils) tools="realpath readlink mkdir cp ln dirname basename cat rm mv chmod touch sort" ;;
    findutils) tools="find xargs" ;;
    *) tools=$pkg ;;
  esac
  for t in $tools; do
    if [ -f "/usr/bin/$t" ] && [ -f "$root/usr/bin/$t" ] && [ ! -L "$root/usr/bin/$t" ]; then
      echo "$t" >>"$work/tools"
    fi
  done
done
native=no
interp=$(ldd /usr/bin/cp 2>/dev/null | awk '$1 ~ /^\// { print $1 }')
if [ -s "$work/tools" ] && [ -n "$interp" ] && [ ${#interp} -ge 18 ] && command -v perl >/dev/null; then
  native=yes
  mkdir "$work/bin"
  for t in $(cat "$work/tools"); do
    INTERP=$interp perl -0777 -pe 'BEGIN { binmode STDIN; binmode STDOUT; $o = "$ENV{INTERP}\0"; $n = "/run/chbuild-ld.so\0" . ("\0" x (length($o) - 19)) } s/\Q$o\E/$n/ or die' "/usr/bin/$t" >"$work/bin/$t" || { native=no; break; }
    chmod 0755 "$work/bin/$t"
    echo "$work/bin/$t /usr/bin/$t" >>"$work/mounts"
  done
  for d in $(cd /usr/bin && ldd $(cat "$work/tools") 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | xargs -r -n1 dirname | sort -u); do
    inside=$(chroot "$root" realpath -m "$d")
    if [ -e "$root$inside" ] || [ ! -d "$(realpath "$d")" ]; then native=no; break; fi
    echo "$(realpath "$d") $inside" >>"$work/mounts"
    echo "$inside" >>"$work/made"
  done
  if [ -e "$root/run/chbuild-ld.so" ] || [ ! -d "$root/run" ]; then native=no; fi
  echo "$(realpath "$interp") /run/chbuild-ld.so" >>"$work/mounts"
fi
if [ "$native" = yes ]; then
  n=0
  for inside in $(cat "$work/made") /run/chbuild-ld.so; do
    parent=$(dirname "$inside")
    while [ ! -e "$root$parent" ]; do parent=$(dirname "$parent"); done
    n=$((n + 1))
    : >"$work/time$n"
    touch -h -r "$root$parent" "$work/time$n"
    echo "$parent $work/time$n" >>"$work/times"
    echo "$inside $parent" >>"$work/undo"
    if [ "$inside" = /run/chbuild-ld.so ]; then : >"$root$inside"; else mkdir -p "$root$inside"; fi
  done
  status=0
  unshare --mount --propagation private sh -e -c '
    root=$1
    while read -r from to; do mount --bind "$from" "$root$to" || exit 99; done <"$2"
    chroot "$root" /usr/bin/realpath -ms / >/dev/null || exit 99
    chroot "$root" @COMMAND@
  ' sh "$root" "$work/mounts" || status=$?
  while read -r d parent; do
    while [ "$d" != "$parent" ]; do rm -d "$root$d"; d=$(dirname "$d"); done
  done <"$work/undo"
  while read -r parent ref; do touch -h -r "$ref" "$root$parent"; done <"$work/times"
  [ "$status" = 99 ] && native=no || [ "$status" = 0 ] || exit "$status"
fi
if [ "$native" = no ]; then
  chroot "$root" @COMMAND@
fi
