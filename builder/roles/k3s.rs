//! k3s: the server on the profile's `k3s_server`, agents on the
//! `containers` group, all with the token from the secrets directory. With
//! `k3s_airgap_dir` the binary and the images tarball are baked in with
//! chbuild's own unit; otherwise the first-boot unit runs the install
//! script, which reads the same config.yaml. The files are
//! `overlays/roles/{k3s,k3s_airgap}/`.

use super::{enable_unit, Pending, RoleCtx, Templates};
use crate::overlay::write::{Owner, TreeWriter};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

pub const CONFIG: &str = "etc/rancher/k3s/config.yaml";

/// One file of an air-gap bundle and where it goes in a tree.
pub struct AirgapFile {
    pub path: String,
    pub source: PathBuf,
    pub mode: u32,
}

/// The files of the air-gap bundle in `dir`: the `k3s` binary and every
/// `k3s-airgap-images-<arch>.tar[.zst]`, in a stable order (nodes and the
/// controller bake the same set).
pub fn airgap_files(dir: &Path) -> Result<Vec<AirgapFile>> {
    let bin = dir.join("k3s");
    if !bin.is_file() {
        bail!(
            "the k3s air-gap bundle {} has no `k3s` binary",
            dir.display()
        );
    }
    let mut images: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("k3s-airgap-images-"))
        .collect();
    images.sort();
    if images.is_empty() {
        bail!(
            "the k3s air-gap bundle {} has no k3s-airgap-images-<arch>.tar[.zst]",
            dir.display()
        );
    }
    let mut out = vec![AirgapFile {
        path: "usr/local/bin/k3s".into(),
        source: bin,
        mode: 0o755,
    }];
    out.extend(images.into_iter().map(|n| AirgapFile {
        path: format!("var/lib/rancher/k3s/agent/images/{n}"),
        source: dir.join(&n),
        mode: 0o644,
    }));
    Ok(out)
}

/// What the k3s unit templates read as `roles.k3s`.
pub fn values(role: &str) -> serde_json::Value {
    json!({
        "role": role,
        "unit": unit_name(role),
        // What the install script's unit uses: the server tells systemd
        // when it is ready, an agent does not.
        "service_type": if role == "server" { "notify" } else { "exec" },
    })
}

pub fn unit_name(role: &str) -> &'static str {
    if role == "server" {
        "k3s.service"
    } else {
        "k3s-agent.service"
    }
}

pub fn apply(
    ctx: &RoleCtx,
    t: &mut Templates,
    w: &mut TreeWriter,
    pending: &mut Pending,
) -> Result<()> {
    let Some(role) = ctx.plan.k3s_role.as_deref() else {
        return Ok(());
    };
    let name = unit_name(role);
    t.apply(w, "k3s", values(role))?;
    match ctx.profile.features.k3s_airgap_dir.as_deref() {
        Some(dir) => {
            for f in airgap_files(dir)? {
                w.copy_from(&f.path, &f.source, f.mode, Owner::ROOT)?;
            }
            // The unit k3s's install script would write.
            t.apply(w, "k3s_airgap", json!({}))?;
            enable_unit(w, name, "multi-user.target")?;
        }
        None => {
            pending.k3s_install = Some(role.to_string());
            pending.k3s_version = ctx.profile.features.k3s_version.clone();
        }
    }
    Ok(())
}
