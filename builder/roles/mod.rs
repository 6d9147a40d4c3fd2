//! Cluster roles baked into a node tree, offline: one module per role,
//! each reading the node's `NodePlan` and writing files through the
//! [`TreeWriter`] (new inodes only: the tree's `usr`, `bin`, `lib*`, `opt`
//! are hardlinked to the base store and to sibling nodes).
//!
//! What a role writes is a template under `overlays/roles/<role>/` (see
//! [`crate::overlay`]); the code here decides whether a role applies and
//! computes the values its templates read as `roles.<role>.*`. Edits of
//! the base's own files (`passwd`, `shadow`, `group`), copies (skeleton
//! files, keys, bundles) and links stay in code.
//!
//! Order: network, users, ssh, munge, slurm, docker, k3s, nfs, shell,
//! then the first-boot unit (which takes over whatever cannot be done
//! offline), then the overlays, so an admin's file always wins.
//!
//! Every package a role uses is already in the tree (the store's package
//! layer for the node's set, see [`crate::store::layer`]), so the roles
//! find their users, groups and units and enable them offline. On a tree
//! without them (a test's bare base) they leave that to the first boot.
//!
//! Units are enabled as `systemctl enable` would, by creating the
//! `<target>.wants/` symlinks in `etc/systemd/system`; nothing is run in the
//! tree.

pub mod accounts;
pub mod controller;
pub mod docker;
pub mod firstboot;
pub mod k3s;
pub mod munge;
pub mod network;
pub mod nfs;
pub mod shell;
pub mod slurm;
pub mod ssh;
pub mod usbhost;
pub mod users;

use crate::overlay::{self, write::TreeWriter, Overlays};
use crate::profile::plan::NodePlan;
use crate::profile::Profile;
use crate::secrets::Secrets;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Everything a role may read. `overlays` holds the role templates and the
/// built-in layers; `epoch` is the build's time (`SOURCE_DATE_EPOCH`, or
/// the base's when unset).
pub struct RoleCtx<'a> {
    pub profile: &'a Profile,
    pub plan: &'a NodePlan,
    pub secrets: &'a Secrets,
    pub overlays: &'a Overlays,
    pub epoch: i64,
}

/// The template variables of one node, growing as roles add their values,
/// and the overlays the role templates come from.
pub struct Templates<'a> {
    overlays: &'a Overlays,
    vars: serde_json::Value,
}

impl<'a> Templates<'a> {
    pub fn new(ctx: &RoleCtx<'a>) -> Result<Templates<'a>> {
        // The secrets templates may read, each a string; a template reading
        // one must be declared unreadable to group and others.
        let secrets = serde_json::json!({
            "k3s_token": ctx.secrets.k3s_token,
            "password_hash": ctx.secrets.password_hash,
        });
        Ok(Templates {
            overlays: ctx.overlays,
            vars: overlay::template_context(ctx.plan, Some(ctx.epoch), secrets)?,
        })
    }

    /// Render the role layer `roles/<role>` into the tree now, its
    /// templates reading `values` as `roles.<role>`. Later layers (an
    /// admin's) replace any of its files by path.
    pub fn apply(
        &mut self,
        w: &mut TreeWriter,
        role: &str,
        values: serde_json::Value,
    ) -> Result<()> {
        self.vars["roles"][role] = values;
        let name = format!("roles/{role}");
        let layer = self
            .overlays
            .layer(&name)?
            .with_context(|| format!("the overlays have no layer {name}"))?;
        overlay::apply_layers(w, &self.vars, &[layer])
    }
}

/// What the roles leave to the first-boot unit.
#[derive(Debug, Default)]
pub struct Pending {
    /// Units to enable (and start) once their package is installed.
    pub enable: Vec<String>,
    /// Create the munge user and give it the key.
    pub munge_owner: bool,
    /// Add the user to the `docker` group once Docker is installed.
    pub docker_group: Option<String>,
    /// Download the pinned k3s binary, check it, start its unit.
    pub k3s: Option<k3s::PendingK3s>,
}

/// Apply every role, then the overlays, to the node tree at `tree`.
/// Returns the tree-relative paths written (sorted, each once).
pub fn apply_roles(ctx: &RoleCtx, tree: &Path) -> Result<Vec<PathBuf>> {
    let mut w = TreeWriter::new(tree)?;
    let mut t = Templates::new(ctx)?;
    let mut pending = Pending::default();
    let node = &ctx.plan.name;
    let step = |name: &str| format!("role {name} on node {node}");
    network::apply(ctx, &mut t, &mut w).with_context(|| step("network"))?;
    users::apply(ctx, &mut t, &mut w).with_context(|| step("users"))?;
    ssh::apply(ctx, &mut t, &mut w).with_context(|| step("ssh"))?;
    munge::apply(ctx, &mut w, &mut pending).with_context(|| step("munge"))?;
    slurm::apply(ctx, &mut t, &mut w, &mut pending).with_context(|| step("slurm"))?;
    docker::apply(ctx, &mut t, &mut w, &mut pending).with_context(|| step("docker"))?;
    k3s::apply(ctx, &mut t, &mut w, &mut pending).with_context(|| step("k3s"))?;
    nfs::apply(ctx, &mut t, &mut w, &mut pending).with_context(|| step("nfs"))?;
    shell::apply(&mut t, &mut w).with_context(|| step("shell"))?;
    firstboot::apply(&mut t, &mut w, &ctx.plan.firstboot_packages, &pending)
        .with_context(|| step("firstboot"))?;
    let layers = overlay::layers(ctx.plan, ctx.overlays, ctx.profile.overlay_dir.as_deref())
        .with_context(|| step("overlays"))?;
    overlay::apply_layers(&mut w, &t.vars, &layers).with_context(|| step("overlays"))?;
    Ok(w.written())
}

/// `known_hosts` for the whole cluster: each node's host key under its
/// host name, inventory name, FQDN (with a domain) and address, so the
/// controller trusts every node from the first connection.
pub fn known_hosts(profile: &Profile, secrets: &Secrets) -> Result<String> {
    let mut out = String::new();
    for n in &profile.nodes {
        let key = secrets.host_key(&n.name)?;
        let mut names = vec![n.hostname.clone()];
        if n.name != n.hostname {
            names.push(n.name.clone());
        }
        if let Some(d) = &profile.domain {
            names.push(format!("{}.{d}", n.hostname));
        }
        // A DHCP node is known by its names only.
        if let Some(a) = n.address {
            names.push(a.to_string());
        }
        // Drop the key's comment: known_hosts lines are `names type key`.
        let mut parts = key.public.split_whitespace();
        let (kind, blob) = (parts.next(), parts.next());
        let (Some(kind), Some(blob)) = (kind, blob) else {
            anyhow::bail!("host key of {} has no public part", n.name);
        };
        out.push_str(&format!("{} {kind} {blob}\n", names.join(",")));
    }
    Ok(out)
}

/// Where a unit file lives in the tree, as the absolute path a
/// `systemctl enable` link points to.
pub fn find_unit(w: &TreeWriter, unit: &str) -> Option<String> {
    [
        "etc/systemd/system",
        "lib/systemd/system",
        "usr/lib/systemd/system",
    ]
    .iter()
    .map(|d| format!("{d}/{unit}"))
    .find(|p| w.exists(p))
    .map(|p| format!("/{p}"))
}

/// Enable a unit offline: the `<target>.wants/<unit>` symlink. Returns
/// false when the unit is not in the tree yet (its package comes at first
/// boot), so the caller hands it to the first-boot unit.
pub fn enable_unit(w: &mut TreeWriter, unit: &str, target: &str) -> Result<bool> {
    let Some(path) = find_unit(w, unit) else {
        return Ok(false);
    };
    w.symlink(format!("etc/systemd/system/{target}.wants/{unit}"), path)?;
    Ok(true)
}

/// Enable a unit now, or at first boot once its package is installed.
pub fn enable_or_defer(
    w: &mut TreeWriter,
    pending: &mut Pending,
    unit: &str,
    target: &str,
) -> Result<()> {
    if !enable_unit(w, unit, target)? {
        pending.enable.push(unit.to_string());
    }
    Ok(())
}

/// systemd's unit name for a path (`systemd-escape --path`).
pub fn escape_path(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, b) in trimmed.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b':' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The tree's user owner (after the users role ran).
pub fn user_owner(w: &TreeWriter, plan: &NodePlan) -> Result<overlay::write::Owner> {
    let acc = accounts::Accounts::load(w)?;
    acc.owner(&plan.user.name, &plan.user.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_systemd() {
        assert_eq!(escape_path("/opt/data"), "opt-data");
        assert_eq!(escape_path("/srv/my-data/"), "srv-my\\x2ddata");
        assert_eq!(escape_path("/"), "-");
    }
}
