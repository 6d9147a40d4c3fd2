# ll, la, lt: eza (or exa) when installed, ls otherwise. Written by chbuild.
if command -v eza >/dev/null 2>&1; then
    alias ll='eza -l' la='eza -la' lt='eza -l --sort=modified'
elif command -v exa >/dev/null 2>&1; then
    alias ll='exa -l' la='exa -la' lt='exa -l --sort=modified'
else
    alias ll='ls -l' la='ls -la' lt='ls -ltr'
fi
