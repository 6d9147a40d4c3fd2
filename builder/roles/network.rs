//! Host identity and network: hostname, `/etc/hosts` (every node, the
//! controller with its aliases), time zone, an empty machine-id, the
//! Zero's USB/NFS boot files when the base cannot make them itself, the
//! SD nodes' LAN interface (static or DHCP, for the network stack the
//! base uses) and their route to the Zero network through the controller.
//! The files are `overlays/roles/{network,usbboot,usbboot_firmware,lan_*,zero_route}/`.

use super::{enable_unit, RoleCtx, Templates};
use crate::overlay::write::TreeWriter;
use crate::profile::plan::{LanPlan, NodePlan};
use anyhow::Result;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

/// ClusterCTRL's own script: a base carrying it gets its NFS-boot files
/// from `usbboot-init` on the controller, not from chbuild.
pub const RECONFIG_USBBOOT: &str = "usr/share/clusterctrl/reconfig-usbboot";

/// raspi-firmware's settings, read by its kernel and initramfs hooks.
pub const RASPI_FIRMWARE_DEFAULT: &str = "etc/default/raspi-firmware";

/// The base's raspi-firmware defaults without any ROOTPART setting (the
/// template sets the Zero's own).
pub fn kept_firmware_default(base: &str) -> Vec<String> {
    base.lines()
        .filter(|l| !l.trim_start().starts_with("ROOTPART="))
        .map(str::to_string)
        .collect()
}

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

/// The network stack that configures a tree's interfaces, detected from
/// the programs the base has installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stack {
    /// Keyfiles in `etc/NetworkManager/system-connections` (Raspberry Pi
    /// OS Bookworm).
    NetworkManager,
    /// `etc/network/interfaces.d/<interface>` (Debian minbase).
    Ifupdown,
    /// `etc/systemd/network/*.network`, with systemd-networkd enabled.
    Networkd,
}

/// NetworkManager when installed (it would take over an interface that
/// ifupdown does not own), else ifupdown, else systemd-networkd, which
/// every systemd base carries.
pub fn detect_stack(w: &TreeWriter) -> Stack {
    if w.exists("usr/sbin/NetworkManager") {
        Stack::NetworkManager
    } else if w.exists("usr/sbin/ifup") || w.exists("sbin/ifup") {
        Stack::Ifupdown
    } else {
        Stack::Networkd
    }
}

const NETWORKD_UNIT: &str = "systemd-networkd.service";
/// What makes `network-online.target` wait for networkd's interfaces (the
/// route to the Zeros is added once it is reached).
const NETWORKD_WAIT_UNIT: &str = "systemd-networkd-wait-online.service";

/// What the `lan_*` templates read as `roles.<layer>`.
fn lan_values(plan: &NodePlan, lan: &LanPlan) -> serde_json::Value {
    // NetworkManager wants a UUID per connection; one derived from the
    // cluster, host and interface keeps rebuilds identical.
    let h = Sha256::digest(format!(
        "{}/{}/{}",
        plan.cluster, plan.hostname, lan.interface
    ));
    let mut b: [u8; 16] = h[..16].try_into().expect("a sha256 has 16 bytes");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    );
    json!({
        "interface": lan.interface,
        "dhcp": lan.dhcp,
        "address": lan.address,
        "prefix": lan.prefix,
        "netmask": lan.netmask,
        "gateway": lan.gateway,
        "dns": lan.dns,
        "uuid": uuid,
    })
}

/// Write the LAN interface's configuration for the tree's stack. Returns
/// the stack used.
pub fn apply_lan(
    plan: &NodePlan,
    lan: &LanPlan,
    t: &mut Templates,
    w: &mut TreeWriter,
) -> Result<Stack> {
    let stack = detect_stack(w);
    tracing::debug!(
        "{}: LAN interface {} ({}) for {stack:?}",
        plan.name,
        lan.interface,
        if lan.dhcp { "dhcp" } else { "static" }
    );
    let values = lan_values(plan, lan);
    match stack {
        Stack::NetworkManager => t.apply(w, "lan_nm", values)?,
        Stack::Ifupdown => t.apply(w, "lan_ifupdown", values)?,
        Stack::Networkd => {
            t.apply(w, "lan_networkd", values)?;
            if !enable_unit(w, NETWORKD_UNIT, "multi-user.target")? {
                tracing::warn!(
                    "{}: the base has neither NetworkManager, ifupdown nor {NETWORKD_UNIT}: \
                     the LAN configuration for systemd-networkd is written, but nothing \
                     will apply it",
                    plan.name
                );
            }
            enable_unit(w, NETWORKD_WAIT_UNIT, "network-online.target")?;
        }
    }
    // NetworkManager writes resolv.conf itself, and a symlink means a
    // resolver daemon (resolvconf, systemd-resolved) owns it; otherwise
    // ifupdown's `dns-nameservers` and networkd's `DNS=` reach no one,
    // so a static node gets its DNS servers in the file. A DHCP client
    // writes the file itself.
    let resolv_owned = w
        .host_path("etc/resolv.conf")
        .ok()
        .and_then(|p| std::fs::symlink_metadata(p).ok())
        .is_some_and(|m| m.file_type().is_symlink());
    if !lan.dhcp && stack != Stack::NetworkManager && !resolv_owned {
        t.apply(w, "lan_resolv", json!({ "dns": lan.dns }))?;
    }
    Ok(stack)
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
        // Debian's raspi-firmware rewrites cmdline.txt on every kernel or
        // firmware install, from its defaults: they must name the NFS
        // root, or the first upgrade leaves a Zero that cannot boot.
        if let Some(default) = w.read_string(RASPI_FIRMWARE_DEFAULT)? {
            t.apply(
                w,
                "usbboot_firmware",
                json!({ "base_default": kept_firmware_default(&default) }),
            )?;
        }
    }

    // The controller's card: ClusterCTRL, when its base has it, runs the
    // LAN and the Zeros' side itself.
    let clusterctrl = plan.usbhost.is_some() && super::usbhost::clusterctrl_owns_network(w);
    if let Some(lan) = plan.lan.as_ref().filter(|_| !clusterctrl) {
        apply_lan(plan, lan, t, w)?;
    }
    if let Some(u) = plan.usbhost.as_ref().filter(|_| !clusterctrl) {
        super::usbhost::apply(u, t, w)?;
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
