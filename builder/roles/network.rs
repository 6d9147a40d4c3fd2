//! Host identity and network: hostname, `/etc/hosts` (every node, the
//! controller with its aliases), time zone, an empty machine-id, the
//! Zero's USB/NFS boot files when the base cannot make them itself, and
//! the LAN nodes' route to the Zero network through the controller.

use super::{enable_unit, RoleCtx};
use crate::overlay::write::{Owner, TreeWriter};
use crate::profile::plan::NodePlan;
use anyhow::Result;

/// ClusterCTRL's own script: a base carrying it gets its NFS-boot files
/// from `usbboot-init` on the controller, not from chbuild.
pub const RECONFIG_USBBOOT: &str = "usr/share/clusterctrl/reconfig-usbboot";

pub const ZERO_ROUTE_UNIT: &str = "chbuild-zero-route.service";

pub fn hosts_file(plan: &NodePlan) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n\n",
    );
    s.push_str(&format!("127.0.1.1\t{}\n\n", plan.hostname));
    s.push_str("# The cluster, written by chbuild from the profile.\n");
    for h in &plan.hosts {
        s.push_str(&format!("{}\t{}\n", h.address, h.names.join(" ")));
    }
    s
}

/// The Zero's kernel command line: the base's console and other settings,
/// with the root switched to ClusterCTRL's NFS export and the exact
/// `ip=...:pN:usb0.10:static` form its initramfs parses.
pub fn usbboot_cmdline(base: &str, nfsroot: &str) -> String {
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
    let mut out: Vec<&str> = base
        .split_whitespace()
        .filter(|t| !drop.iter().any(|d| t.starts_with(d)))
        .filter(|t| !["rw", "ro", "rootwait"].contains(t))
        .collect();
    out.extend([
        "root=/dev/nfs",
        "boot=nfs",
        nfsroot,
        "rootwait",
        "fsck.mode=skip",
    ]);
    out.join(" ") + "\n"
}

/// fstab of a Zero: the base's lines minus any root or boot mount, plus
/// the boot directory from the controller's NFS export.
pub fn usbboot_fstab(base: &str, plan: &NodePlan, nfs_dir: &str) -> String {
    let boot = format!("/{}", plan.boot_dir);
    let mut s = String::new();
    for line in base.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let mounts_root_or_boot =
            !line.trim_start().starts_with('#') && f.len() >= 2 && (f[1] == "/" || f[1] == boot);
        if !mounts_root_or_boot && !line.contains("UNCONFIGURED FSTAB") {
            s.push_str(line);
            s.push('\n');
        }
    }
    s.push_str(&format!(
        "{}:{nfs_dir}/{} {boot} nfs defaults 0 2\n",
        plan.controller.nfs_address, plan.boot_dir
    ));
    s
}

pub fn apply(ctx: &RoleCtx, w: &mut TreeWriter) -> Result<()> {
    let plan = ctx.plan;
    w.write(
        "etc/hostname",
        format!("{}\n", plan.hostname).as_bytes(),
        0o644,
        Owner::ROOT,
    )?;
    w.write("etc/hosts", hosts_file(plan).as_bytes(), 0o644, Owner::ROOT)?;
    w.write(
        "etc/timezone",
        format!("{}\n", plan.timezone).as_bytes(),
        0o644,
        Owner::ROOT,
    )?;
    w.symlink(
        "etc/localtime",
        format!("/usr/share/zoneinfo/{}", plan.timezone),
    )?;
    // Every node of one base would share the base's machine-id (and so its
    // DHCP client id and journal id): leave it empty so systemd makes a
    // fresh one at first boot.
    w.write("etc/machine-id", b"", 0o444, Owner::ROOT)?;

    if let Some(u) = &plan.usbboot {
        if !w.exists(RECONFIG_USBBOOT) {
            let cmdline_path = format!("{}/cmdline.txt", plan.boot_dir);
            let base = w.read_string(&cmdline_path)?.unwrap_or_default();
            w.write(
                &cmdline_path,
                usbboot_cmdline(&base, &u.cmdline_nfsroot).as_bytes(),
                0o644,
                Owner::ROOT,
            )?;
            let fstab = w.read_string("etc/fstab")?.unwrap_or_default();
            w.write(
                "etc/fstab",
                usbboot_fstab(&fstab, plan, &u.nfs_dir).as_bytes(),
                0o644,
                Owner::ROOT,
            )?;
            let iface = format!(
                "# The Zero's untagged ClusterCTRL network, written by chbuild. The NFS\n\
                 # VLAN usb0.10 is brought up by the kernel from cmdline.txt `ip=`.\n\
                 auto usb0\n\
                 iface usb0 inet static\n\
                 \taddress {}/{}\n\
                 \tgateway {}\n",
                plan.address, plan.netmask_bits, plan.controller.zero_address
            );
            w.write(
                "etc/network/interfaces.d/usb0",
                iface.as_bytes(),
                0o644,
                Owner::ROOT,
            )?;
        }
    }

    if let Some(r) = &plan.zero_route {
        // A unit rather than ifupdown or NetworkManager configuration, so
        // the route works whichever network stack the base uses.
        let unit = format!(
            "[Unit]\n\
             Description=Route to the ClusterHAT Zero network {net} via the controller\n\
             Wants=network-online.target\n\
             After=network-online.target\n\
             \n\
             [Service]\n\
             Type=oneshot\n\
             RemainAfterExit=yes\n\
             ExecStart=/usr/sbin/ip route replace {net} via {via}\n\
             ExecStop=-/usr/sbin/ip route del {net} via {via}\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n",
            net = r.network,
            via = r.via
        );
        w.write(
            format!("etc/systemd/system/{ZERO_ROUTE_UNIT}"),
            unit.as_bytes(),
            0o644,
            Owner::ROOT,
        )?;
        enable_unit(w, ZERO_ROUTE_UNIT, "multi-user.target")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_keeps_console_and_swaps_the_root() {
        let c = usbboot_cmdline(
            "console=tty0 root=/dev/mmcblk0p2 rw fsck.repair=yes net.ifnames=0 rootwait\n",
            "nfsroot=172.19.180.254:/var/lib/clusterctrl/nfs/p1 rw ip=172.19.180.1:172.19.180.254::255.255.255.0:p1:usb0.10:static",
        );
        assert_eq!(
            c,
            "console=tty0 net.ifnames=0 root=/dev/nfs boot=nfs nfsroot=172.19.180.254:/var/lib/clusterctrl/nfs/p1 rw ip=172.19.180.1:172.19.180.254::255.255.255.0:p1:usb0.10:static rootwait fsck.mode=skip\n"
        );
    }
}
