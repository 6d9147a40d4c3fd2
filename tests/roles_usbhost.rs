//! The controller's card on a base without ClusterCTRL (the Pi fixture, a
//! plain Debian system) gets what ClusterCTRL would do for its Zeros: the
//! LAN interface, each Zero's USB link named `ethupiN`, the two bridges
//! with the controller's addresses, forwarding, and the Zeros' exports. On
//! a base with ClusterCTRL none of it is written. (The QEMU cluster test,
//! tests/cluster_qemu.rs, boots such a card with a Zero on it.)

mod common;

use common::{build, extracted, PI_FIXTURE};
use std::path::Path;

fn read(tree: &Path, rel: &str) -> String {
    std::fs::read_to_string(tree.join(rel))
        .unwrap_or_else(|e| panic!("{}: {e}", tree.join(rel).display()))
}

/// The files of the Zeros' side, relative to the tree.
const USBHOST_FILES: [&str; 9] = [
    "etc/udev/rules.d/70-chbuild-usbhost.rules",
    "etc/systemd/network/10-chbuild-br0.netdev",
    "etc/systemd/network/10-chbuild-br0.network",
    "etc/systemd/network/10-chbuild-brint.netdev",
    "etc/systemd/network/10-chbuild-brint.network",
    "etc/systemd/network/10-chbuild-ethupi1.network",
    "etc/systemd/network/10-chbuild-ethupi1.10.netdev",
    "etc/sysctl.d/60-chbuild-usbhost.conf",
    "etc/exports.d/chbuild-zeros.exports",
];

#[test]
fn a_debian_controller_serves_the_zeros_as_clusterctrl_does() {
    let Some(base) = extracted(PI_FIXTURE, "pi") else {
        return;
    };
    let built = build(&base, "usbhost-debian", &["clusterhat"], |p, _| {
        p.controller.base = Some(p.base.clone());
    });
    let t = &built.trees["clusterhat"];
    for f in USBHOST_FILES {
        assert!(t.join(f).is_file(), "{f} is missing");
    }

    // Each Zero's link by the address its gadget gives this side; the
    // VLAN (same address) and the bridges keep their names.
    let rules = read(t, "etc/udev/rules.d/70-chbuild-usbhost.rules");
    for n in 1..=4 {
        let rule = format!(
            "SUBSYSTEM==\"net\", ACTION==\"add\", ENV{{DEVTYPE}}==\"\", \
             ATTR{{address}}==\"00:22:82:ff:fe:{n:02x}\", NAME=\"ethupi{n}\""
        );
        assert!(rules.lines().any(|l| l == rule), "no {rule} in\n{rules}");
    }
    let br0 = read(t, "etc/systemd/network/10-chbuild-br0.network");
    assert!(br0.contains("Address=172.19.181.254/24"), "{br0}");
    assert!(br0.contains("RequiredForOnline=no"), "{br0}");
    let brint = read(t, "etc/systemd/network/10-chbuild-brint.network");
    assert!(brint.contains("Address=172.19.180.254/24"), "{brint}");
    let link = read(t, "etc/systemd/network/10-chbuild-ethupi3.network");
    assert!(
        link.contains("Name=ethupi3\n")
            && link.contains("Bridge=br0")
            && link.contains("VLAN=ethupi3.10"),
        "{link}"
    );
    let vlan = read(t, "etc/systemd/network/10-chbuild-ethupi3.10.netdev");
    assert!(
        vlan.contains("Name=ethupi3.10") && vlan.contains("Kind=vlan") && vlan.contains("Id=10"),
        "{vlan}"
    );
    let vlans = read(t, "etc/systemd/network/10-chbuild-ethupi-vlan.network");
    assert!(vlans.contains("Name=ethupi*.10") && vlans.contains("Bridge=brint"));

    // Each Zero's root to its own VLAN address, as ClusterCTRL exports it.
    let exports = read(t, "etc/exports.d/chbuild-zeros.exports");
    let lines: Vec<&str> = exports.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        (1..=4)
            .map(|n| format!(
                "/var/lib/clusterctrl/nfs/p{n} 172.19.180.{n}(rw,sync,no_subtree_check,no_root_squash)"
            ))
            .collect::<Vec<_>>()
    );
    assert!(t.join("var/lib/clusterctrl/nfs").is_dir());
    assert!(read(t, "etc/sysctl.d/60-chbuild-usbhost.conf").contains("net.ipv4.ip_forward = 1"));
    let wants = t.join("etc/systemd/system/multi-user.target.wants/systemd-networkd.service");
    assert!(
        wants.symlink_metadata().is_ok(),
        "systemd-networkd is not enabled"
    );

    // The LAN interface, with the stack the base has (ifupdown here).
    let lan = read(t, "etc/network/interfaces.d/eth0");
    assert!(lan.contains("address 172.16.2.200/24"), "{lan}");
    // It is on the Zeros' networks itself: no route through itself.
    assert!(!t
        .join("etc/systemd/system/chbuild-zero-route.service")
        .exists());
}

#[test]
fn a_clusterctrl_controller_keeps_its_own_network() {
    let Some(base) = extracted(PI_FIXTURE, "pi") else {
        return;
    };
    // The fixture with ClusterCTRL's program: a stand-in for the CNAT image.
    let cnat = base.with_file_name("roles-pi-clusterctrl");
    if !cnat.join(".complete-clusterctrl").exists() {
        let _ = std::fs::remove_dir_all(&cnat);
        chbuild::tools::run(
            std::process::Command::new("cp")
                .arg("-al")
                .arg(&base)
                .arg(&cnat),
        )
        .unwrap();
        std::fs::write(cnat.join("usr/sbin/clusterctrl"), "#!/bin/sh\n").unwrap();
        std::fs::write(cnat.join(".complete-clusterctrl"), "").unwrap();
    }
    let built = build(&cnat, "usbhost-cnat", &["clusterhat"], |p, _| {
        p.controller.base = Some(p.base.clone());
    });
    let t = &built.trees["clusterhat"];
    for f in USBHOST_FILES {
        assert!(!t.join(f).exists(), "{f} written on a ClusterCTRL base");
    }
    assert!(!t.join("etc/network/interfaces.d/eth0").exists());
    assert!(!t
        .join("etc/systemd/system/multi-user.target.wants/systemd-networkd.service")
        .exists());
}
