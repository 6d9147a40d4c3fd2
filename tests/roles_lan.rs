//! The SD nodes' LAN interface, written for the network stack each base
//! uses: ifupdown on the Pi fixture as it is, NetworkManager and
//! systemd-networkd on copies made to look like such a base (the detected
//! program added, ifupdown's removed). p5 is static, p4 uses DHCP, z1 (a
//! Zero) gets no LAN configuration.

mod common;

use common::{build, extracted, Built, PI_FIXTURE};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const NODES: [&str; 3] = ["p5", "p4", "z1"];

/// A hardlinked copy of `base` (unlinking a name in it never touches the
/// base) with `add` created as an empty executable and `remove` unlinked.
fn variant(base: &Path, name: &str, add: &[&str], remove: &[&str]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("roles-lan-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    chbuild::tools::run(Command::new("cp").arg("-al").arg(base).arg(&dir)).unwrap();
    for a in add {
        let p = dir.join(a);
        std::fs::write(&p, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    for r in remove {
        std::fs::remove_file(dir.join(r)).unwrap();
    }
    dir
}

/// p4 takes its address by DHCP.
fn build_lan(base: &Path, label: &str) -> Built {
    build(base, label, &NODES, |p, _| {
        let p4 = p.nodes.iter_mut().find(|n| n.name == "p4").unwrap();
        p4.address = None;
    })
}

fn written(b: &Built, node: &str, rel: &str) -> bool {
    b.written[node].iter().any(|p| p == Path::new(rel))
}

const IFACE_FILE: &str = "etc/network/interfaces.d/eth0";
const NM_FILE: &str = "etc/NetworkManager/system-connections/chbuild-lan.nmconnection";
const NETWORKD_FILE: &str = "etc/systemd/network/10-chbuild-lan.network";

/// What every stack shares: no LAN files on the Zero, the route to the
/// Zeros enabled on both LAN nodes, the DHCP node out of /etc/hosts and
/// known by name only.
fn common_checks(b: &Built) {
    for f in [IFACE_FILE, NM_FILE, NETWORKD_FILE, "etc/resolv.conf"] {
        assert!(!written(b, "z1", f), "z1 got {f}");
    }
    for node in ["p5", "p4"] {
        assert!(
            b.tree(node)
                .join("etc/systemd/system/multi-user.target.wants/chbuild-zero-route.service")
                .symlink_metadata()
                .is_ok(),
            "{node} lost its route to the Zeros"
        );
    }
    let hosts = b.read("p5", "etc/hosts");
    assert!(hosts.contains("172.16.2.205\tp5\n"), "{hosts}");
    assert!(
        !hosts.contains("p4"),
        "a DHCP node has no address to list:\n{hosts}"
    );
    assert!(
        b.known_hosts
            .lines()
            .any(|l| l.starts_with("p4 ssh-ed25519 ")),
        "{}",
        b.known_hosts
    );
    // k3s on the DHCP agent: no node-ip, the server's URL.
    let k3s = b.read("p4", "etc/rancher/k3s/config.yaml");
    assert!(!k3s.contains("node-ip"), "{k3s}");
    assert!(
        k3s.contains("server: \"https://172.16.2.205:6443\""),
        "{k3s}"
    );
}

#[test]
fn ifupdown_on_a_debian_base() {
    let Some(base) = extracted(PI_FIXTURE, "pi") else {
        return;
    };
    let b = build_lan(&base, "lan-ifupdown");
    common_checks(&b);
    assert_eq!(
        b.read("p5", IFACE_FILE),
        "# The LAN interface of p5, written by chbuild from the profile.\n\
         auto eth0\n\
         iface eth0 inet static\n\
         \taddress 172.16.2.205/24\n\
         \tgateway 172.16.2.1\n\
         \tdns-nameservers 172.16.2.1\n"
    );
    assert_eq!(
        b.read("p4", IFACE_FILE),
        "# The LAN interface of p4, written by chbuild from the profile.\n\
         auto eth0\n\
         iface eth0 inet dhcp\n"
    );
    // ifupdown reads the directory, and without resolvconf the static
    // node's DNS servers are in resolv.conf itself.
    let interfaces = b.read("p5", "etc/network/interfaces");
    assert!(
        interfaces.contains("source /etc/network/interfaces.d/*")
            || interfaces.contains("source-directory /etc/network/interfaces.d"),
        "{interfaces}"
    );
    assert!(b
        .read("p5", "etc/resolv.conf")
        .ends_with("nameserver 172.16.2.1\n"));
    assert!(!written(&b, "p4", "etc/resolv.conf"));
    for f in [NM_FILE, NETWORKD_FILE] {
        assert!(!written(&b, "p5", f), "{f}");
    }
    // ifupdown itself parses the files, when the host has it.
    if Path::new("/usr/sbin/ifup").exists() || Path::new("/sbin/ifup").exists() {
        for node in ["p5", "p4"] {
            let f = b.tree(node).join(IFACE_FILE);
            let o = Command::new("ifup")
                .args(["--no-act", "--force", "-i"])
                .arg(&f)
                .arg("eth0")
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "ifup --no-act on {node}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    } else {
        common::skip("ifupdown is not installed: the files are checked by content only");
    }
}

#[test]
fn networkmanager_keyfiles_when_networkmanager_is_installed() {
    let Some(base) = extracted(PI_FIXTURE, "pi") else {
        return;
    };
    let nm = variant(&base, "nm", &["usr/sbin/NetworkManager"], &[]);
    let b = build_lan(&nm, "lan-nm");
    common_checks(&b);
    let m = b.meta("p5", NM_FILE);
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o600, 0, 0));
    let p5 = b.read("p5", NM_FILE);
    for line in [
        "type=ethernet\n",
        "interface-name=eth0\n",
        "method=manual\n",
        "address1=172.16.2.205/24,172.16.2.1\n",
        "dns=172.16.2.1;\n",
    ] {
        assert!(p5.contains(line), "{line:?} missing:\n{p5}");
    }
    let uuid = |s: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix("uuid="))
            .unwrap()
            .to_string()
    };
    assert_eq!(uuid(&p5).len(), 36);
    let p4 = b.read("p4", NM_FILE);
    assert!(p4.contains("[ipv4]\nmethod=auto\n"), "{p4}");
    assert_ne!(uuid(&p4), uuid(&p5));
    // NetworkManager owns resolv.conf and the interface: nothing else.
    for f in [IFACE_FILE, NETWORKD_FILE, "etc/resolv.conf"] {
        assert!(!written(&b, "p5", f), "{f}");
    }
}

#[test]
fn systemd_networkd_without_networkmanager_or_ifupdown() {
    let Some(base) = extracted(PI_FIXTURE, "pi") else {
        return;
    };
    let nd = variant(&base, "networkd", &[], &["usr/sbin/ifup"]);
    let b = build_lan(&nd, "lan-networkd");
    common_checks(&b);
    assert_eq!(
        b.read("p5", NETWORKD_FILE),
        "# The LAN interface of p5, written by chbuild from the profile.\n\
         [Match]\n\
         Name=eth0\n\
         \n\
         [Network]\n\
         Address=172.16.2.205/24\n\
         Gateway=172.16.2.1\n\
         DNS=172.16.2.1\n"
    );
    assert!(b
        .read("p4", NETWORKD_FILE)
        .contains("[Network]\nDHCP=ipv4\n"));
    for (link, target) in [
        (
            "multi-user.target.wants/systemd-networkd.service",
            "systemd-networkd.service",
        ),
        (
            "network-online.target.wants/systemd-networkd-wait-online.service",
            "systemd-networkd-wait-online.service",
        ),
    ] {
        let l = b.tree("p5").join("etc/systemd/system").join(link);
        let t = std::fs::read_link(&l).unwrap_or_else(|e| panic!("{}: {e}", l.display()));
        assert!(t.ends_with(target), "{}", t.display());
    }
    assert!(!written(&b, "p5", IFACE_FILE));
    assert!(b
        .read("p5", "etc/resolv.conf")
        .ends_with("nameserver 172.16.2.1\n"));
}
