//! Shell aliases `ll`, `la`, `lt` for login shells
//! (`overlays/roles/shell/`). The choice between eza, exa and ls is made
//! when the shell starts, not at build time, so a package installed at
//! first boot (or later) is picked up.

use super::Templates;
use crate::overlay::write::TreeWriter;
use anyhow::Result;
use serde_json::json;

pub fn apply(t: &mut Templates, w: &mut TreeWriter) -> Result<()> {
    t.apply(w, "shell", json!({}))
}
