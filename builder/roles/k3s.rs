//! k3s: the server on the profile's `k3s_server`, agents on the
//! `containers` group, all with the token from the secrets directory. The
//! config and chbuild's own unit (enabled, conditioned on the binary) are
//! always baked. With an air-gap bundle (`k3s_binary` + `k3s_images`,
//! ingested into the store, or `k3s_airgap_dir`) the binary and the images
//! are baked too; without one, the first-boot unit downloads exactly the
//! pinned release binary, checks its sha256, installs it and starts the
//! unit. The files are `overlays/roles/{k3s,k3s_unit}/`.

use super::{enable_unit, Pending, RoleCtx, Templates};
use crate::overlay::write::{Owner, TreeWriter};
use crate::profile::Features;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

pub const CONFIG: &str = "etc/rancher/k3s/config.yaml";
/// Where the binary goes, from a bundle or from first boot.
pub const BINARY: &str = "usr/local/bin/k3s";
const IMAGES_DIR: &str = "var/lib/rancher/k3s/agent/images";

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
        path: BINARY.into(),
        source: bin,
        mode: 0o755,
    }];
    out.extend(images.into_iter().map(|n| AirgapFile {
        path: format!("{IMAGES_DIR}/{n}"),
        source: dir.join(&n),
        mode: 0o644,
    }));
    Ok(out)
}

/// The bundle's files, from `k3s_airgap_dir` or from the store's copies
/// of `k3s_binary` and `k3s_images`; `None` without a bundle.
pub fn bundle_files(f: &Features) -> Result<Option<Vec<AirgapFile>>> {
    if let Some(dir) = &f.k3s_airgap_dir {
        return airgap_files(dir).map(Some);
    }
    let Some(b) = &f.k3s_bundle else {
        return Ok(None);
    };
    let stored = |blob: &crate::profile::Blob| {
        blob.stored.clone().with_context(|| {
            format!(
                "{} ({}) was not ingested into the store before the build",
                blob.key, blob.source
            )
        })
    };
    Ok(Some(vec![
        AirgapFile {
            path: BINARY.into(),
            source: stored(&b.binary)?,
            mode: 0o755,
        },
        AirgapFile {
            path: format!("{IMAGES_DIR}/{}", b.images.name),
            source: stored(&b.images)?,
            mode: 0o644,
        },
    ]))
}

/// What the k3s unit templates read as `roles.k3s`.
pub fn values(role: &str) -> serde_json::Value {
    json!({
        "role": role,
        "unit": unit_name(role),
        "binary": format!("/{BINARY}"),
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
    match bundle_files(&ctx.profile.features)? {
        Some(files) => {
            for f in files {
                w.copy_from(&f.path, &f.source, f.mode, Owner::ROOT)?;
            }
        }
        None => {
            let Some(d) = ctx.plan.k3s_download.clone() else {
                bail!("k3s has neither an air-gap bundle nor a pinned release to download");
            };
            // curl and ca-certificates are in the plan (NodePlan::new).
            pending.k3s = Some(PendingK3s {
                download: d,
                unit: name.to_string(),
            });
        }
    }
    // The unit k3s's install script would write, baked and enabled either
    // way: it waits for its binary (ConditionPathExists).
    t.apply(w, "k3s_unit", json!({}))?;
    enable_unit(w, name, "multi-user.target")?;
    Ok(())
}

/// k3s left to first boot: the pinned binary to fetch, the unit to start.
#[derive(Debug, Clone)]
pub struct PendingK3s {
    pub download: crate::profile::plan::K3sDownload,
    pub unit: String,
}
