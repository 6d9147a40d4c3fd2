//! NFS: the server exports `nfs_export_path` to the cluster's networks
//! only, with `root_squash`, and carries the `usbboot/` subdirectory the
//! reference flow expects; clients mount it with a systemd automount
//! (`nofail`: a missing server never blocks a boot). The files are
//! `overlays/roles/{nfs_server,nfs_client}/`.

use super::{enable_or_defer, enable_unit, escape_path, user_owner, Pending, RoleCtx, Templates};
use crate::overlay::write::{Owner, TreeWriter};
use anyhow::{Context, Result};
use serde_json::json;

pub fn apply(
    ctx: &RoleCtx,
    t: &mut Templates,
    w: &mut TreeWriter,
    pending: &mut Pending,
) -> Result<()> {
    let plan = ctx.plan;
    match plan.nfs_role.as_deref() {
        Some("server") => {
            t.apply(w, "nfs_server", json!({}))?;
            // Owned by the user: with root_squash, root on a client cannot
            // write there.
            let owner = user_owner(w, plan)?;
            let export = plan.nfs_export_path.trim_start_matches('/');
            w.mkdir(export, 0o755, owner)?;
            w.mkdir(format!("{export}/usbboot"), 0o755, owner)?;
            enable_or_defer(w, pending, "nfs-server.service", "multi-user.target")?;
        }
        Some("client") => {
            plan.nfs_server_address
                .context("an NFS client needs the server's address")?;
            // systemd finds a mount unit by the escaped mount point.
            let name = escape_path(&plan.nfs_mount_point);
            t.apply(w, "nfs_client", json!({ "unit": name }))?;
            let mnt = plan.nfs_mount_point.trim_start_matches('/');
            if !w.exists(mnt) {
                w.mkdir(mnt, 0o755, Owner::ROOT)?;
            }
            enable_unit(w, &format!("{name}.automount"), "remote-fs.target")?;
        }
        _ => {}
    }
    Ok(())
}
