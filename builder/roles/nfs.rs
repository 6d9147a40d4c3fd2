//! NFS: the server exports `nfs_export_path` to the cluster's networks
//! only, with `root_squash`, and carries the `usbboot/` subdirectory the
//! reference flow expects; clients mount it with a systemd automount
//! (`nofail`: a missing server never blocks a boot).

use super::{enable_or_defer, enable_unit, escape_path, user_owner, Pending, RoleCtx};
use crate::overlay::write::{Owner, TreeWriter};
use crate::profile::plan::NodePlan;
use anyhow::{Context, Result};

pub fn exports(plan: &NodePlan) -> String {
    let mut s = format!(
        "# Written by chbuild: {} to the cluster's networks only.\n{}",
        plan.nfs_export_path, plan.nfs_export_path
    );
    for net in &plan.nfs_export_networks {
        s.push_str(&format!(" {net}(rw,sync,no_subtree_check,root_squash)"));
    }
    s.push('\n');
    s
}

pub fn mount_unit(plan: &NodePlan, server: &str) -> String {
    format!(
        "[Unit]\n\
         Description=Cluster share {server}:{export}\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Mount]\n\
         What={server}:{export}\n\
         Where={mnt}\n\
         Type=nfs\n\
         Options=rw,nofail,_netdev\n\
         TimeoutSec=30\n",
        export = plan.nfs_export_path,
        mnt = plan.nfs_mount_point,
    )
}

pub fn automount_unit(plan: &NodePlan) -> String {
    format!(
        "[Unit]\n\
         Description=Automount of the cluster share on {mnt}\n\
         \n\
         [Automount]\n\
         Where={mnt}\n\
         TimeoutIdleSec=600\n\
         \n\
         [Install]\n\
         WantedBy=remote-fs.target\n",
        mnt = plan.nfs_mount_point,
    )
}

pub fn apply(ctx: &RoleCtx, w: &mut TreeWriter, pending: &mut Pending) -> Result<()> {
    let plan = ctx.plan;
    match plan.nfs_role.as_deref() {
        Some("server") => {
            w.write("etc/exports", exports(plan).as_bytes(), 0o644, Owner::ROOT)?;
            // Owned by the user: with root_squash, root on a client cannot
            // write there.
            let owner = user_owner(w, plan)?;
            let export = plan.nfs_export_path.trim_start_matches('/');
            w.mkdir(export, 0o755, owner)?;
            w.mkdir(format!("{export}/usbboot"), 0o755, owner)?;
            pending.packages.push("nfs-kernel-server".into());
            enable_or_defer(w, pending, "nfs-server.service", "multi-user.target")?;
        }
        Some("client") => {
            let server = plan
                .nfs_server_address
                .context("an NFS client needs the server's address")?
                .to_string();
            let name = escape_path(&plan.nfs_mount_point);
            w.write(
                format!("etc/systemd/system/{name}.mount"),
                mount_unit(plan, &server).as_bytes(),
                0o644,
                Owner::ROOT,
            )?;
            w.write(
                format!("etc/systemd/system/{name}.automount"),
                automount_unit(plan).as_bytes(),
                0o644,
                Owner::ROOT,
            )?;
            let mnt = plan.nfs_mount_point.trim_start_matches('/');
            if !w.exists(mnt) {
                w.mkdir(mnt, 0o755, Owner::ROOT)?;
            }
            enable_unit(w, &format!("{name}.automount"), "remote-fs.target")?;
            pending.packages.push("nfs-common".into());
        }
        _ => {}
    }
    Ok(())
}
