//! Every role baked into z1 (a Zero, USB/NFS boot) and p5 (the management
//! Pi: NFS server, k3s server) from the Pi fixture, checked by reading the
//! produced files. The minbase fixture covers a base without a munge user
//! and without a boot directory.

mod common;

use common::{build, extracted, snapshot, Built, Snapshot, MINBASE_FIXTURE, PI_FIXTURE};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

struct Fixture {
    built: Built,
    base: PathBuf,
    before: Snapshot,
}

/// The shared motd of the base: an overlay replaces it in the node trees,
/// where it is a hardlink to the base's file.
const SHARED_FILE: &str = "usr/share/base-files/motd";

/// The profile overlay's own cgroup.conf, over the slurm role's.
/// The profile's layer goes on every node: `roles.slurm` is defined only
/// where the slurm role applies.
const SITE_CGROUP: &str = "# site\
{% if roles.slurm is defined %} {{ roles.slurm.cluster_name }} {{ roles.slurm.partitions[0].name }}{% endif %}
ConstrainCores=yes
";

fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let base = extracted(PI_FIXTURE, "pi")?;
        let before = snapshot(&base);
        let built = build(&base, "tree", &["z1", "p5"], |p, scratch| {
            // The profile's own overlay: a declared mode and owner, a
            // template, and a file over a hardlinked one in usr.
            let ov = scratch.join("overlay");
            std::fs::create_dir_all(ov.join("etc")).unwrap();
            std::fs::create_dir_all(ov.join("usr/share/base-files")).unwrap();
            std::fs::write(
                ov.join("etc/cluster-note.j2"),
                "{{ hostname }} uid={{ user.uid }} zero={{ usbboot is not none }}\n",
            )
            .unwrap();
            std::fs::write(ov.join(SHARED_FILE), "node motd\n").unwrap();
            // A role file replaced by its path, reading the role's values.
            std::fs::create_dir_all(ov.join("etc/slurm")).unwrap();
            std::fs::write(ov.join("etc/slurm/cgroup.conf.j2"), SITE_CGROUP).unwrap();
            std::fs::write(
                ov.join("_meta.toml"),
                "[files.\"etc/cluster-note\"]\nmode = \"0640\"\ngroup = \"{{ user.name }}\"\n",
            )
            .unwrap();
            p.overlay_dir = Some(ov);
            // An air-gap bundle for the k3s server.
            let ag = scratch.join("airgap");
            std::fs::create_dir_all(&ag).unwrap();
            std::fs::write(ag.join("k3s"), "#!/bin/sh\n").unwrap();
            std::fs::write(ag.join("k3s-airgap-images-arm64.tar.zst"), "images").unwrap();
            p.features.k3s_airgap_dir = Some(ag);
        });
        Some(Fixture {
            built,
            base,
            before,
        })
    })
    .as_ref()
}

macro_rules! fixture_or_skip {
    () => {
        match fixture() {
            Some(f) => f,
            None => return,
        }
    };
}

fn mode(m: &std::fs::Metadata) -> u32 {
    m.mode() & 0o7777
}

#[test]
fn base_and_hardlinked_files_are_untouched() {
    let f = fixture_or_skip!();
    let after = snapshot(&f.base);
    let changed: Vec<_> = f
        .before
        .iter()
        .filter(|(p, v)| after.get(*p) != Some(v))
        .map(|(p, _)| p)
        .take(10)
        .collect();
    assert!(changed.is_empty(), "base entries changed: {changed:?}");
    assert_eq!(
        std::fs::read_to_string(f.base.join(SHARED_FILE)).unwrap(),
        std::fs::read_to_string(f.base.join(SHARED_FILE)).unwrap()
    );
    let b = &f.built;
    assert_eq!(b.read("z1", SHARED_FILE), "node motd\n");
    let base_ino = std::fs::metadata(f.base.join(SHARED_FILE)).unwrap().ino();
    assert_ne!(b.meta("z1", SHARED_FILE).ino(), base_ino);
    // An untouched file of usr is still the base's inode.
    let passwd_bin = "usr/bin/passwd";
    assert_eq!(
        b.meta("p5", passwd_bin).ino(),
        std::fs::metadata(f.base.join(passwd_bin)).unwrap().ino()
    );
    for node in ["z1", "p5"] {
        let w = &b.written[node];
        assert!(w.contains(&PathBuf::from("etc/hostname")), "{w:?}");
        assert!(w.contains(&PathBuf::from(SHARED_FILE)));
        // Every path written is a new inode, never one of the base's.
        for rel in w {
            let m = b.meta(node, &rel.to_string_lossy());
            if let Some(v) = f.before.get(rel) {
                assert_ne!(
                    m.ino(),
                    v.0,
                    "{node}: {} is the base's inode",
                    rel.display()
                );
            }
        }
    }
}

#[test]
fn hostname_and_hosts() {
    let f = fixture_or_skip!();
    let b = &f.built;
    assert_eq!(b.read("z1", "etc/hostname"), "z1\n");
    assert_eq!(b.read("p5", "etc/hostname"), "p5\n");
    let z1 = b.read("z1", "etc/hosts");
    assert!(z1.contains("127.0.1.1\tz1\n"), "{z1}");
    assert!(
        z1.contains("172.19.181.254\tclusterhat controller p0\n"),
        "{z1}"
    );
    let p5 = b.read("p5", "etc/hosts");
    assert!(
        p5.contains("172.16.2.200\tclusterhat controller p0\n"),
        "{p5}"
    );
    for (addr, name) in [
        ("172.19.181.4", "z4"),
        ("172.16.2.201", "p1"),
        ("172.16.2.205", "p5"),
    ] {
        assert!(p5.contains(&format!("{addr}\t{name}\n")), "{p5}");
    }
    assert_eq!(b.read("z1", "etc/machine-id"), "");
    assert_eq!(
        std::fs::read_link(b.tree("z1").join("etc/localtime")).unwrap(),
        PathBuf::from("/usr/share/zoneinfo/Etc/UTC")
    );
}

#[test]
fn user_accounts_sudo_and_home() {
    let f = fixture_or_skip!();
    let b = &f.built;
    let hash = &b.secrets.password_hash;
    for node in ["z1", "p5"] {
        let passwd = b.read(node, "etc/passwd");
        assert!(
            passwd.contains("\npi:x:1000:1000:,,,:/home/pi:/bin/bash\n"),
            "{passwd}"
        );
        assert!(passwd.contains("munge:x:100:101:"), "base entries kept");
        let shadow = b.read(node, "etc/shadow");
        assert!(
            shadow.contains(&format!("\npi:{hash}:")),
            "shadow has the hash"
        );
        let m = b.meta(node, "etc/shadow");
        assert_eq!((mode(&m), m.uid(), m.gid()), (0o640, 0, 42));
        let group = b.read(node, "etc/group");
        assert!(group.contains("\npi:x:1000:\n"), "{group}");
        assert!(
            group
                .lines()
                .any(|l| l.starts_with("sudo:x:27:") && l.ends_with("pi")),
            "{group}"
        );
        let gshadow = b.read(node, "etc/gshadow");
        assert!(
            gshadow
                .lines()
                .any(|l| l.starts_with("sudo:") && l.ends_with(":pi")),
            "{gshadow}"
        );
        assert!(gshadow.contains("\npi:!::\n"), "{gshadow}");
        let sudoers = "etc/sudoers.d/010_pi-nopasswd";
        assert_eq!(
            b.read(node, sudoers).lines().last(),
            Some("pi ALL=(ALL) NOPASSWD: ALL")
        );
        let m = b.meta(node, sudoers);
        assert_eq!((mode(&m), m.uid()), (0o440, 0));
        let m = b.meta(node, "home/pi");
        assert_eq!((mode(&m), m.uid(), m.gid()), (0o700, 1000, 1000));
        let m = b.meta(node, "home/pi/.bashrc");
        assert_eq!((m.uid(), m.gid()), (1000, 1000));
        // Raspberry Pi OS first-boot files in the boot directory.
        assert_eq!(
            b.read(node, "boot/firmware/userconf.txt"),
            format!("pi:{hash}\n")
        );
        assert_eq!(mode(&b.meta(node, "boot/firmware/userconf.txt")), 0o600);
        assert_eq!(b.meta(node, "boot/firmware/ssh").len(), 0);
    }
}

#[test]
fn ssh_keys_drop_in_and_known_hosts() {
    let f = fixture_or_skip!();
    let b = &f.built;
    let admin = std::fs::read_to_string(b.profile.secrets_dir.join("admin_ed25519.pub")).unwrap();
    for node in ["z1", "p5"] {
        let ak = "home/pi/.ssh/authorized_keys";
        assert_eq!(b.read(node, ak), admin);
        let m = b.meta(node, ak);
        assert_eq!((mode(&m), m.uid(), m.gid()), (0o600, 1000, 1000));
        assert_eq!(mode(&b.meta(node, "home/pi/.ssh")), 0o700);
        let d = b.read(node, "etc/ssh/sshd_config.d/50-chbuild.conf");
        for l in [
            "PasswordAuthentication no",
            "PermitRootLogin no",
            "HostKey /etc/ssh/ssh_host_ed25519_key",
        ] {
            assert!(d.lines().any(|x| x == l), "{node}: {l} missing in {d}");
        }
        assert!(b
            .read(node, "etc/ssh/sshd_config")
            .contains("Include /etc/ssh/sshd_config.d/*.conf"));
        let key = b.secrets.host_key(node).unwrap();
        assert_eq!(b.read(node, "etc/ssh/ssh_host_ed25519_key"), key.private);
        let m = b.meta(node, "etc/ssh/ssh_host_ed25519_key");
        assert_eq!((mode(&m), m.uid()), (0o600, 0));
        assert_eq!(b.read(node, "etc/ssh/ssh_host_ed25519_key.pub"), key.public);
        let blob = key.public.split_whitespace().nth(1).unwrap();
        let addr = b.profile.node(node).unwrap().address.unwrap();
        assert!(
            b.known_hosts
                .contains(&format!("{node},{addr} ssh-ed25519 {blob}\n")),
            "{}",
            b.known_hosts
        );
    }
    assert_eq!(b.known_hosts.lines().count(), b.profile.nodes.len());
}

#[test]
fn munge_key_is_0400_and_owned_by_munge() {
    let f = fixture_or_skip!();
    let b = &f.built;
    for node in ["z1", "p5"] {
        let p = b.tree(node).join("etc/munge/munge.key");
        assert_eq!(std::fs::read(&p).unwrap(), b.secrets.munge_key);
        let m = b.meta(node, "etc/munge/munge.key");
        // uid/gid of munge in the fixture's own etc/passwd.
        assert_eq!((mode(&m), m.uid(), m.gid()), (0o400, 100, 101));
    }
}

#[test]
fn slurm_conf_from_the_profile() {
    let f = fixture_or_skip!();
    let b = &f.built;
    let conf = b.read("z1", "etc/slurm/slurm.conf");
    for l in [
        "SlurmctldHost=clusterhat",
        "AuthType=auth/munge",
        "NodeName=z1 NodeAddr=172.19.181.1 CPUs=4 RealMemory=400 State=UNKNOWN",
        "NodeName=z4 NodeAddr=172.19.181.4 CPUs=4 RealMemory=400 State=UNKNOWN",
        "PartitionName=zero Nodes=z1,z2,z3,z4 Default=YES MaxTime=INFINITE State=UP",
    ] {
        assert!(conf.lines().any(|x| x == l), "{l} missing in\n{conf}");
    }
    // LAN Pis only with slurm_include_picluster (off in the profile).
    assert!(!conf.contains("NodeName=p"), "{conf}");
    assert!(b
        .read("z1", "etc/slurm/cgroup.conf")
        .contains("ConstrainCores=yes"));
    assert!(!b.tree("p5").join("etc/slurm/slurm.conf").exists());
}

#[test]
fn k3s_server_with_air_gap_bundle() {
    let f = fixture_or_skip!();
    let b = &f.built;
    let c = b.read("p5", "etc/rancher/k3s/config.yaml");
    assert!(
        c.contains(&format!("token: \"{}\"\n", b.secrets.k3s_token)),
        "{c}"
    );
    assert!(!c.contains("server:"), "the server has no server URL: {c}");
    assert!(c.contains("node-ip: \"172.16.2.205\""), "{c}");
    let m = b.meta("p5", "etc/rancher/k3s/config.yaml");
    assert_eq!(mode(&m), 0o600);
    assert_eq!(mode(&b.meta("p5", "usr/local/bin/k3s")), 0o755);
    assert_eq!(
        b.read(
            "p5",
            "var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst"
        ),
        "images"
    );
    assert!(b
        .read("p5", "etc/systemd/system/k3s.service")
        .contains("ExecStart=/usr/local/bin/k3s server"));
    assert_eq!(
        std::fs::read_link(
            b.tree("p5")
                .join("etc/systemd/system/multi-user.target.wants/k3s.service")
        )
        .unwrap(),
        PathBuf::from("/etc/systemd/system/k3s.service")
    );
    // Zeros run no k3s (they are not in `containers`); Docker neither.
    assert!(!b.tree("z1").join("etc/rancher").exists());
    assert!(!b.tree("z1").join("etc/docker").exists());
    assert!(b.read("p5", "etc/docker/daemon.json").contains("journald"));
}

#[test]
fn nfs_export_and_client_mounts() {
    let f = fixture_or_skip!();
    let b = &f.built;
    assert_eq!(
        b.read("p5", "etc/exports").lines().last().unwrap(),
        "/opt/data 172.16.2.0/24(rw,sync,no_subtree_check,root_squash) 172.19.181.0/24(rw,sync,no_subtree_check,root_squash)"
    );
    assert!(b.tree("p5").join("opt/data/usbboot").is_dir());
    assert_eq!(b.meta("p5", "opt/data").uid(), 1000);
    let mount = b.read("z1", "etc/systemd/system/opt-data.mount");
    assert!(
        mount.contains("What=172.16.2.205:/opt/data\nWhere=/opt/data\nType=nfs\n"),
        "{mount}"
    );
    assert!(mount.contains("Options=rw,nofail,_netdev"), "{mount}");
    assert!(b
        .read("z1", "etc/systemd/system/opt-data.automount")
        .contains("Where=/opt/data"));
    assert_eq!(
        std::fs::read_link(
            b.tree("z1")
                .join("etc/systemd/system/remote-fs.target.wants/opt-data.automount")
        )
        .unwrap(),
        PathBuf::from("/etc/systemd/system/opt-data.automount")
    );
    assert!(!b
        .tree("p5")
        .join("etc/systemd/system/opt-data.mount")
        .exists());
}

#[test]
fn zero_boots_from_nfs_and_lan_nodes_route_to_it() {
    let f = fixture_or_skip!();
    let b = &f.built;
    let cmdline = b.read("z1", "boot/firmware/cmdline.txt");
    assert_eq!(cmdline.lines().count(), 1);
    assert!(cmdline.contains(" root=/dev/nfs "), "{cmdline}");
    assert!(
        cmdline.contains(
            " nfsroot=172.19.180.254:/var/lib/clusterctrl/nfs/p1 rw ip=172.19.180.1:172.19.180.254::255.255.255.0:p1:usb0.10:static "
        ),
        "{cmdline}"
    );
    assert!(!cmdline.contains("mmcblk0"), "{cmdline}");
    assert!(b
        .read("z1", "etc/fstab")
        .lines()
        .any(|l| l == "172.19.180.254:/var/lib/clusterctrl/nfs/p1/boot/firmware /boot/firmware nfs defaults 0 2"));
    let usb0 = b.read("z1", "etc/network/interfaces.d/usb0");
    assert!(
        usb0.contains(
            "iface usb0 inet static\n\taddress 172.19.181.1/24\n\tgateway 172.19.181.254\n"
        ),
        "{usb0}"
    );
    // p5 keeps its SD-card command line; it routes to the Zeros instead.
    assert_eq!(
        b.read("p5", "boot/firmware/cmdline.txt"),
        std::fs::read_to_string(f.base.join("boot/firmware/cmdline.txt")).unwrap()
    );
    let route = b.read("p5", "etc/systemd/system/chbuild-zero-route.service");
    assert!(
        route.contains("ip route replace 172.19.181.0/24 via 172.16.2.200"),
        "{route}"
    );
    assert!(b
        .tree("p5")
        .join("etc/systemd/system/multi-user.target.wants/chbuild-zero-route.service")
        .symlink_metadata()
        .is_ok());
    assert!(!b
        .tree("z1")
        .join("etc/systemd/system/chbuild-zero-route.service")
        .exists());
}

#[test]
fn shell_aliases_work_in_a_login_shell() {
    let f = fixture_or_skip!();
    let p = f.built.tree("z1").join("etc/profile.d/chbuild-aliases.sh");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(". '{}' && alias ll la lt", p.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for a in ["ll=", "la=", "lt="] {
        assert!(text.contains(a), "{text}");
    }
}

#[test]
fn firstboot_unit_installs_nothing_the_image_can_carry() {
    let f = fixture_or_skip!();
    let b = &f.built;
    for node in ["z1", "p5"] {
        let unit = b.read(node, "etc/systemd/system/chbuild-firstboot.service");
        for l in [
            "Type=oneshot",
            "ConditionPathExists=!/var/lib/chbuild/firstboot.done",
            "StandardOutput=journal",
            "ExecStart=/usr/local/sbin/chbuild-firstboot",
        ] {
            assert!(
                unit.lines().any(|x| x == l),
                "{node}: {l} missing in {unit}"
            );
        }
        assert!(b
            .tree(node)
            .join("etc/systemd/system/multi-user.target.wants/chbuild-firstboot.service")
            .symlink_metadata()
            .is_ok());
        assert_eq!(
            mode(&b.meta(node, "usr/local/sbin/chbuild-firstboot")),
            0o755
        );
        let script = b.read(node, "usr/local/sbin/chbuild-firstboot");
        // Every package is baked at build time (the store's package
        // layers); only packages.firstboot, empty here, is installed by
        // the node itself.
        assert!(script.contains("nothing to install"), "{node}: {script}");
        assert!(!script.contains("apt-get"), "{node}: {script}");
        let s = std::process::Command::new("sh")
            .arg("-n")
            .arg(b.tree(node).join("usr/local/sbin/chbuild-firstboot"))
            .status()
            .unwrap();
        assert!(s.success(), "{node}: the script parses");
    }
    // The Zero needs no network at first boot at all.
    let unit = b.read("z1", "etc/systemd/system/chbuild-firstboot.service");
    assert!(!unit.contains("network-online"), "{unit}");
    let z1 = b.read("z1", "usr/local/sbin/chbuild-firstboot");
    assert!(
        !z1.contains("useradd"),
        "the fixture has a munge user: {z1}"
    );
}

#[test]
fn overlays_render_with_declared_owner_and_mode() {
    let f = fixture_or_skip!();
    let b = &f.built;
    assert_eq!(b.read("z1", "etc/cluster-note"), "z1 uid=1000 zero=True\n");
    assert_eq!(b.read("p5", "etc/cluster-note"), "p5 uid=1000 zero=False\n");
    let m = b.meta("z1", "etc/cluster-note");
    assert_eq!((mode(&m), m.uid(), m.gid()), (0o640, 0, 1000));
    // The repository's own common layer.
    let motd = b.read("z1", "etc/motd");
    assert!(
        motd.contains("z1: zero2 (usbboot) of the clusterhat cluster"),
        "{motd}"
    );
    assert!(motd.contains("partition zero"), "{motd}");
}

#[test]
fn a_user_layer_overrides_a_role_file_by_path() {
    let f = fixture_or_skip!();
    let b = &f.built;
    assert_eq!(
        b.read("z1", "etc/slurm/cgroup.conf"),
        "# site clusterhat zero\nConstrainCores=yes\n"
    );
    let m = b.meta("z1", "etc/slurm/cgroup.conf");
    assert_eq!((mode(&m), m.uid(), m.gid()), (0o644, 0, 0));
    assert_eq!(
        b.read("p5", "etc/slurm/cgroup.conf"),
        "# site\nConstrainCores=yes\n"
    );
    // The role's other file is still the role's.
    assert!(b
        .read("z1", "etc/slurm/slurm.conf")
        .starts_with("# Written by chbuild"));
}

/// A base without a munge user and without a boot directory: the key is
/// root's until the first-boot unit creates the user.
#[test]
fn minbase_without_munge_user() {
    let Some(base) = extracted(MINBASE_FIXTURE, "minbase") else {
        return;
    };
    let b = build(&base, "minbase", &["z2"], |_, _| {});
    let m = b.meta("z2", "etc/munge/munge.key");
    assert_eq!((mode(&m), m.uid()), (0o400, 0));
    let s = b.read("z2", "usr/local/sbin/chbuild-firstboot");
    assert!(s.contains("useradd --system --gid munge"), "{s}");
    assert!(
        s.contains("chown munge:munge /etc/munge /etc/munge/munge.key"),
        "{s}"
    );
    assert!(s.contains(" munge "), "munge is installed: {s}");
    assert!(s.contains("systemctl enable munge.service"), "{s}");
    assert!(b
        .read("z2", "boot/firmware/cmdline.txt")
        .contains(":p2:usb0.10:static"));
    assert!(Path::new(&b.tree("z2"))
        .join("boot/firmware/userconf.txt")
        .exists());
    let _ = std::fs::remove_dir_all(&b.dir);
}

/// A kernel or firmware upgrade on a Zero: Debian's raspi-firmware hook,
/// run in (a copy of) the tree as dpkg would, regenerates cmdline.txt
/// from its defaults; chbuild's keep the NFS root and ClusterCTRL's
/// `ip=...:p1:usb0.10:static`, so the Zero still boots after it.
#[test]
fn a_zero_keeps_its_nfs_root_when_raspi_firmware_regenerates_cmdline() {
    let f = fixture_or_skip!();
    if chbuild::tools::check_foreign_arch("aarch64").is_err() {
        common::skip("arm64 binaries cannot run here");
        return;
    }
    let hook = "etc/kernel/postinst.d/z50-raspi-firmware";
    assert!(
        f.built.tree("z1").join(hook).exists(),
        "the Pi fixture has raspi-firmware"
    );
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("z1");
    chbuild::tools::run(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(f.built.tree("z1"))
            .arg(&root),
    )
    .unwrap();
    // The kernel package installs into /boot; the hook copies the newest
    // kernel from there into the boot directory and writes cmdline.txt.
    let firmware = root.join("boot/firmware");
    for e in std::fs::read_dir(&firmware).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with("vmlinuz-") || name.starts_with("initrd.img-") {
            std::fs::copy(firmware.join(&name), root.join("boot").join(&name)).unwrap();
        }
    }
    std::fs::remove_file(firmware.join("cmdline.txt")).unwrap();
    // /proc lets the hook see it runs in a chroot; the mount dies with the
    // private namespace.
    let script = format!(
        "mount -t proc proc {root}/proc && DEB_MAINT_PARAMS=configure chroot {root} /{hook}",
        root = root.display()
    );
    chbuild::tools::run(
        std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(&script),
    )
    .unwrap();
    let cmdline = std::fs::read_to_string(firmware.join("cmdline.txt")).unwrap();
    for want in [
        "root=/dev/nfs",
        "boot=nfs",
        "nfsroot=172.19.180.254:/var/lib/clusterctrl/nfs/p1",
        "ip=172.19.180.1:172.19.180.254::255.255.255.0:p1:usb0.10:static",
    ] {
        assert!(
            cmdline
                .split_whitespace()
                .any(|a| a == want || a.starts_with(want)),
            "{want} missing from the regenerated cmdline.txt: {cmdline}"
        );
    }
    assert!(!cmdline.contains("mmcblk"), "{cmdline}");
    // config.txt, regenerated too, keeps the Zero's USB and UART settings
    // (no dwc2 overlay: Debian's firmware boots the upstream kernel and
    // ships no overlays/).
    let config = std::fs::read_to_string(firmware.join("config.txt")).unwrap();
    assert!(
        config.contains("# Inserted by /etc/default/raspi-firmware-custom"),
        "{config}"
    );
    assert!(config.lines().any(|l| l == "enable_uart=1"), "{config}");
    assert!(!config.contains("dtoverlay=dwc2"), "{config}");
}
