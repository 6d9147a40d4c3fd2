# Enable bookworm-backports from the Debian URI already configured on this
# machine (deb822 or one-line sources), so no registry host is named here.
enable_backports() {
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '/^deb / && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /:\/\//) {print $i; exit}}' /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || { echo "no Debian URI found in apt sources" >&2; return 1; }
  echo "deb $uri bookworm-backports main" > /etc/apt/sources.list.d/chbuild-backports.list
}
