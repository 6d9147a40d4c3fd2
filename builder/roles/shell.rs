//! Shell aliases `ll`, `la`, `lt` for login shells. The choice between
//! eza, exa and ls is made when the shell starts, not at build time, so a
//! package installed at first boot (or later) is picked up.

use crate::overlay::write::{Owner, TreeWriter};
use anyhow::Result;

pub const ALIASES: &str = "etc/profile.d/chbuild-aliases.sh";

pub const ALIASES_SH: &str = "\
# ll, la, lt: eza (or exa) when installed, ls otherwise. Written by chbuild.
if command -v eza >/dev/null 2>&1; then
    alias ll='eza -l' la='eza -la' lt='eza -l --sort=modified'
elif command -v exa >/dev/null 2>&1; then
    alias ll='exa -l' la='exa -la' lt='exa -l --sort=modified'
else
    alias ll='ls -l' la='ls -la' lt='ls -ltr'
fi
";

pub fn apply(w: &mut TreeWriter) -> Result<()> {
    w.write(ALIASES, ALIASES_SH.as_bytes(), 0o644, Owner::ROOT)
}
