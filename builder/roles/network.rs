//! Host identity and network: hostname, `/etc/hosts` (every node, the
//! controller with its aliases), time zone, an empty machine-id, the
//! Zero's USB/NFS boot files when the base cannot make them itself, and
//! the LAN nodes' route to the Zero network through the controller. The
//! files are `overlays/roles/{network,usbboot,zero-route}/`.

use super::{enable_unit, RoleCtx, Templates};
use crate::overlay::write::TreeWriter;
use crate::profile::plan::NodePlan;
use anyhow::Result;
use serde_json::json;

/// ClusterCTRL's own script: a base carrying it gets its NFS-boot files
/// from `usbboot-init` on the controller, not from chbuild.
pub const RECONFIG_USBBOOT: &str = "usr/share/clusterctrl/reconfig-usbboot";

pub const ZERO_ROUTE_UNIT: &str = "chbuild-zero-route.service";

/// The base's kernel command line without what decides the root: the
/// console and other settings stay, the template adds ClusterCTRL's NFS
/// root and the exact `ip=...:pN:usb0.10:static` form its initramfs parses.
pub fn kept_cmdline(base: &str) -> Vec<String> {
    let drop = [
        "root=",
        "rootfstype=",
        "nfsroot=",
        "ip=",
        "boot=",
        "fsck.repair=",
        "fsck.mode=",
        "init=",
    ];
    base.split_whitespace()
        .filter(|t| !drop.iter().any(|d| t.starts_with(d)))
        .filter(|t| !["rw", "ro", "rootwait"].contains(t))
        .map(str::to_string)
        .collect()
}

/// The base's fstab lines a Zero keeps: all but any root or boot mount
/// (the template adds the boot directory from the controller's export).
pub fn kept_fstab(base: &str, plan: &NodePlan) -> Vec<String> {
    let boot = format!("/{}", plan.boot_dir);
    base.lines()
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let mounts_root_or_boot = !line.trim_start().starts_with('#')
                && f.len() >= 2
                && (f[1] == "/" || f[1] == boot);
            !mounts_root_or_boot && !line.contains("UNCONFIGURED FSTAB")
        })
        .map(str::to_string)
        .collect()
}

pub fn apply(ctx: &RoleCtx, t: &mut Templates, w: &mut TreeWriter) -> Result<()> {
    let plan = ctx.plan;
    t.apply(w, "network", json!({}))?;
    w.symlink(
        "etc/localtime",
        format!("/usr/share/zoneinfo/{}", plan.timezone),
    )?;

    if plan.usbboot.is_some() && !w.exists(RECONFIG_USBBOOT) {
        let cmdline = w
            .read_string(format!("{}/cmdline.txt", plan.boot_dir))?
            .unwrap_or_default();
        let fstab = w.read_string("etc/fstab")?.unwrap_or_default();
        t.apply(
            w,
            "usbboot",
            json!({
                "base_cmdline": kept_cmdline(&cmdline),
                "base_fstab": kept_fstab(&fstab, plan),
            }),
        )?;
    }

    if plan.usbboot.is_some() {
        // deploy shares identical boot files between the Zeros' trees;
        // these hooks break the sharing before raspi-firmware writes them
        // in place on the Zero (see overlays/roles/boot_unshare/).
        t.apply(w, "boot_unshare", json!({}))?;
    }

    if plan.zero_route.is_some() {
        // A unit rather than ifupdown or NetworkManager configuration, so
        // the route works whichever network stack the base uses.
        t.apply(w, "zero_route", json!({}))?;
        enable_unit(w, ZERO_ROUTE_UNIT, "multi-user.target")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_keeps_console_and_drops_the_root() {
        let c = kept_cmdline(
            "console=tty0 root=/dev/mmcblk0p2 rw fsck.repair=yes net.ifnames=0 rootwait\n",
        );
        assert_eq!(c, ["console=tty0", "net.ifnames=0"]);
    }
}
