//! The Zero boot layer, end to end on the bootable Pi fixture: `chbuild
//! image` rebuilds the Zeros' initramfs once, in the store, with chbuild's
//! USB/NFS initramfs files; the result is checked with initramfs-tools' own
//! `lsinitramfs`/`unmkinitramfs`, and the nfs-top script is run from the
//! built image, in its own shell (klibc's, under qemu-user), as the kernel
//! command line of the deployed tree asks.
//!
//! Needs root (overlay mounts, owners), binfmt_misc for arm64 and
//! initramfs-tools-core on the machine (`.ci/setup` installs it).

mod cli_support;
use cli_support::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const PI: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures/debian-bookworm-arm64-pi.tar.xz"
);
const KERNEL: &str = "6.1.0-50-arm64";

fn ready() -> bool {
    if !nix::unistd::geteuid().is_root() {
        skip("the Zero boot layer mounts an overlay and keeps owners: needs root");
        return false;
    }
    if let Err(e) = chbuild::tools::check_foreign_arch("aarch64") {
        skip(&format!("arm64 binaries cannot run here: {e:#}"));
        return false;
    }
    if Command::new("lsinitramfs").arg("--help").output().is_err() {
        skip("lsinitramfs is missing: install initramfs-tools-core");
        return false;
    }
    if !Path::new(PI).exists() {
        skip(&format!("fixture {PI} is missing"));
        return false;
    }
    true
}

fn env(name: &str) -> Chbuild {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    Chbuild {
        profile: profile("zero-boot.toml"),
        store: root.join("store"),
        secrets: root.join("secrets"),
    }
}

fn image(c: &Chbuild, out: &Path, nodes: &str, overlays: Option<&Path>) -> String {
    let mut cmd = c.command(&[
        "image",
        nodes,
        "--format",
        "dir",
        "-o",
        out.to_str().unwrap(),
    ]);
    if let Some(o) = overlays {
        cmd.env("CHBUILD_OVERLAYS", o);
    }
    let o = cmd.output().unwrap();
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "chbuild image {nodes} failed: {log}");
    log
}

/// The store's Zero boot layers (`store list --json`).
fn boot_layers(c: &Chbuild) -> Vec<serde_json::Value> {
    let o = c.ok(&["--json", "store", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "zero-boot")
        .cloned()
        .collect()
}

fn lsinitramfs(image: &Path) -> Vec<String> {
    let o = chbuild::tools::run(Command::new("lsinitramfs").arg(image)).unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn has(list: &[String], path: &str) -> bool {
    list.iter().any(|l| l == path)
}

fn initrd(tree: &Path) -> PathBuf {
    tree.join("boot/firmware")
        .join(format!("initrd.img-{KERNEL}"))
}

fn sha(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(
        std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    ))
}

/// The base's tree in the store.
fn store_base(c: &Chbuild) -> PathBuf {
    std::fs::read_dir(&c.store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("meta.json").is_file())
        .expect("the base in the store")
        .join("tree")
}

/// Run the image's nfs-top script in the image's own shell, with
/// `cmdline` as /proc/cmdline and one network interface `eth0` with
/// address `mac`, as a QEMU VM shows its virtio NIC (no USB device
/// controller, so no gadget). The machine's kernel cannot create VLANs
/// here (no module loading in a container), so `ip` is the one thing
/// replaced: a stand-in that logs its arguments. Returns (output, ip log).
fn run_nfs_top(extracted: &Path, cmdline: &str, mac: &str) -> (String, String) {
    let root = tempfile::tempdir_in(extracted.parent().unwrap()).unwrap();
    let r = root.path().join("root");
    chbuild::tools::run(Command::new("cp").arg("-a").arg(extracted).arg(&r)).unwrap();
    std::fs::create_dir_all(r.join("proc")).unwrap();
    std::fs::write(r.join("proc/cmdline"), cmdline).unwrap();
    let net = r.join("sys/class/net/eth0");
    std::fs::create_dir_all(&net).unwrap();
    std::fs::write(net.join("address"), format!("{mac}\n")).unwrap();
    let ip = r.join("usr/sbin/ip");
    assert!(ip.exists(), "the image carries /sbin/ip");
    std::fs::remove_file(&ip).unwrap();
    std::fs::write(&ip, "#!/bin/sh\necho \"$*\" >>/ip.log\n").unwrap();
    chbuild::tools::run(Command::new("chmod").arg("0755").arg(&ip)).unwrap();
    // As the initramfs' init exports them.
    let o = Command::new("chroot")
        .env_clear()
        .env("PATH", "/sbin:/usr/sbin:/bin:/usr/bin")
        .env("quiet", "n")
        .arg(&r)
        .args(["/bin/sh", "/scripts/nfs-top/chbuild-usbboot"])
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "the nfs-top script failed: {out}");
    let log = std::fs::read_to_string(r.join("ip.log")).unwrap_or_default();
    (out, log)
}

#[test]
fn zeros_share_one_rebuilt_initramfs_that_brings_up_the_nfs_vlan() {
    if !ready() {
        return;
    }
    let c = env("zero-boot");
    c.ok(&["secrets", "init"]);
    let work = c.store.parent().unwrap().to_path_buf();
    let out = work.join("out");
    let base_before = {
        // The fixture's own image, before any build.
        image(&c, &work.join("warmup"), "p1", None);
        sha(&initrd(&store_base(&c)))
    };
    let log = image(&c, &out, "z1,z2,p1", None);
    assert_eq!(
        log.matches("rebuilt in").count(),
        1,
        "one initramfs build for both Zeros: {log}"
    );

    // One layer, on the base (the fixture has every package), saying what
    // it is.
    let ls = boot_layers(&c);
    assert_eq!(ls.len(), 1, "{ls:#?}");
    let layer = &ls[0];
    assert_eq!(layer["initramfs"]["kernels"][0], KERNEL);
    assert_eq!(layer["packages"].as_array().unwrap().len(), 0);
    let text = String::from_utf8_lossy(&c.ok(&["store", "list"]).stdout).into_owned();
    assert!(
        text.contains("Zero boot layer") && text.contains(KERNEL),
        "{text}"
    );

    // The Zeros' image, read by initramfs-tools' own tool.
    let (z1, z2, p1) = (out.join("z1"), out.join("z2"), out.join("p1"));
    let files = lsinitramfs(&initrd(&z1));
    for want in [
        "scripts/nfs-top/chbuild-usbboot",
        "conf/conf.d/chbuild-usbboot",
        "usr/sbin/ip",
    ] {
        assert!(has(&files, want), "{want} missing from the initramfs");
    }
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("/kernel/net/8021q/8021q.ko")),
        "8021q.ko missing from the initramfs"
    );
    // The NFS client and the network drivers are in. The fixture's base
    // chose MODULES=list, already smaller than the MODULES=netboot a Zero
    // gets on a MODULES=most base: its choice is kept.
    for want in ["/kernel/fs/nfs/nfs.ko", "/kernel/drivers/net/virtio_net.ko"] {
        assert!(files.iter().any(|f| f.ends_with(want)), "{want} missing");
    }
    let conf =
        std::fs::read_to_string(z1.join("etc/initramfs-tools/conf.d/chbuild-usbboot")).unwrap();
    assert!(conf.contains("\nBOOT=nfs\n"), "{conf}");
    assert!(!conf.contains("MODULES="), "{conf}");
    // Both Zeros boot the same image; the base's and the LAN node's stay
    // the fixture's.
    assert_eq!(sha(&initrd(&z1)), sha(&initrd(&z2)));
    assert_eq!(sha(&initrd(&store_base(&c))), base_before);
    assert_eq!(sha(&initrd(&p1)), base_before);
    assert!(!has(
        &lsinitramfs(&initrd(&p1)),
        "scripts/nfs-top/chbuild-usbboot"
    ));
    // The rest of the tree is still the base's, by inode.
    let base = store_base(&c);
    assert_eq!(
        std::fs::metadata(z1.join("usr/bin/ip")).unwrap().ino(),
        std::fs::metadata(base.join("usr/bin/ip")).unwrap().ino()
    );
    // The tree also carries the files (update-initramfs on the Zero
    // rebuilds the same image), and ifupdown spares usb0 at shutdown.
    for f in [
        "etc/initramfs-tools/hooks/chbuild-usbboot",
        "etc/initramfs-tools/scripts/nfs-top/chbuild-usbboot",
        "etc/initramfs-tools/conf.d/chbuild-usbboot",
        "etc/default/raspi-firmware-custom",
    ] {
        assert!(z1.join(f).is_file(), "{f} missing from z1");
        assert!(!p1.join(f).exists(), "{f} on the LAN node p1");
    }
    let dropin = std::fs::read_to_string(
        z1.join("etc/systemd/system/networking.service.d/chbuild-nfsroot.conf"),
    )
    .unwrap();
    assert!(dropin.contains("--exclude=lo --exclude=usb0"), "{dropin}");

    // The image's contents: the real iproute2 ip, BOOT=nfs.
    let x = work.join("unpacked");
    chbuild::tools::run(Command::new("unmkinitramfs").arg(initrd(&z1)).arg(&x)).unwrap();
    // With early microcode the main archive is under main/.
    let root = if x.join("main").is_dir() {
        x.join("main")
    } else {
        x.clone()
    };
    assert_eq!(
        sha(&root.join("usr/sbin/ip")),
        sha(&base.join("usr/bin/ip")),
        "the image's ip is the base's iproute2"
    );
    let conf = std::fs::read_to_string(root.join("conf/conf.d/chbuild-usbboot")).unwrap();
    assert!(conf.lines().any(|l| l == "BOOT=nfs"), "{conf}");

    // In a VM: the deployed cmdline, a NIC with the Zero's device-side
    // address. No gadget; the NIC becomes usb0, VLAN 10 on it.
    let cmdline = std::fs::read_to_string(z1.join("boot/firmware/cmdline.txt")).unwrap();
    assert!(cmdline.contains(":p1:usb0.10:static"), "{cmdline}");
    let (said, ip) = run_nfs_top(&root, &cmdline, "00:22:82:ff:ff:01");
    assert!(said.contains("no USB device controller"), "{said}");
    for want in [
        "link set dev eth0 down",
        "link set dev eth0 name usb0",
        "link set dev usb0 up",
        "link add link usb0 name usb0.10 type vlan id 10",
        "link set dev usb0.10 mtu 1496",
        "link set dev usb0.10 up",
    ] {
        assert!(
            ip.lines().any(|l| l == want),
            "`ip {want}` not run:\n{ip}\n{said}"
        );
    }
    // p10's address is ...:0a (hexadecimal, as ClusterCTRL's).
    let p10 = cmdline.replace(":p1:usb0.10:", ":p10:usb0.10:");
    let (said, ip) = run_nfs_top(&root, &p10, "00:22:82:ff:ff:0a");
    assert!(
        ip.lines().any(|l| l == "link set dev eth0 name usb0"),
        "{ip}\n{said}"
    );
    // Another node's address: nothing renamed, and the reason said.
    let (said, ip) = run_nfs_top(&root, &cmdline, "00:22:82:ff:ff:02");
    assert!(ip.is_empty(), "{ip}");
    assert!(said.contains("00:22:82:ff:ff:01"), "{said}");
    // No ClusterCTRL ip=: nothing at all.
    let (said, ip) = run_nfs_top(
        &root,
        "console=tty0 root=/dev/mmcblk0p2",
        "00:22:82:ff:ff:01",
    );
    assert!(ip.is_empty() && said.is_empty(), "{said}{ip}");

    // Built once: a second build elsewhere reuses the layer.
    let meta = c.store.join("layers").join(layer["key"].as_str().unwrap());
    let stamp = std::fs::metadata(meta.join("layer.json")).unwrap().ino();
    let log = image(&c, &work.join("out2"), "z1", None);
    assert!(!log.contains("rebuilt in"), "{log}");
    assert_eq!(
        std::fs::metadata(meta.join("layer.json")).unwrap().ino(),
        stamp
    );
    assert_eq!(sha(&initrd(&work.join("out2/z1"))), sha(&initrd(&z1)));

    // A changed initramfs template is another layer; gc keeps the one the
    // profile's Zeros use and removes the other.
    let ov = work.join("overlays");
    chbuild::tools::run(
        Command::new("cp")
            .arg("-a")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("overlays"))
            .arg(&ov),
    )
    .unwrap();
    let conf = ov.join("roles/usbboot_initramfs/etc/initramfs-tools/conf.d/chbuild-usbboot.j2");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("# changed\n");
    std::fs::write(&conf, text).unwrap();
    image(&c, &work.join("out3"), "z1", Some(&ov));
    let keys: Vec<String> = boot_layers(&c)
        .iter()
        .map(|l| l["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    c.ok(&["store", "gc"]);
    let left = boot_layers(&c);
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0]["key"], layer["key"]);

    // Reproducible: built again (as on another machine), the same image.
    std::fs::remove_dir_all(&meta).unwrap();
    let log = image(&c, &work.join("out4"), "z1", None);
    assert_eq!(log.matches("rebuilt in").count(), 1, "{log}");
    assert_eq!(sha(&initrd(&work.join("out4/z1"))), sha(&initrd(&z1)));
}

/// The Zero boot layer on a package layer: the package layer's own `etc`
/// has the time it was built, so another build of it (another machine,
/// another day) differs there; the initramfs must not.
#[test]
fn an_initramfs_on_a_package_layer_is_the_same_whenever_the_layer_was_built() {
    if !ready() {
        return;
    }
    let mut c = env("zero-boot-on-layer");
    let work = c.store.parent().unwrap().to_path_buf();
    // The zero-boot profile with one package the fixture lacks, its base
    // archive's path made absolute (the other files are in the secrets).
    let dir = profile("zero-boot.toml").parent().unwrap().to_path_buf();
    let text = std::fs::read_to_string(profile("zero-boot.toml")).unwrap();
    let text = text
        .replace(
            "\"../../../shared/",
            &format!("\"{}/../../../shared/", dir.display()),
        )
        .replace("\"e2fsprogs\",\n]", "\"e2fsprogs\", \"htop\",\n]");
    assert!(
        text.contains("\"htop\""),
        "the profile's package list moved"
    );
    c.profile = work.join("profile.toml");
    std::fs::write(&c.profile, text).unwrap();
    c.ok(&["secrets", "init"]);

    let first = work.join("out1");
    let log = image(&c, &first, "z1", None);
    assert_eq!(log.matches("rebuilt in").count(), 1, "{log}");
    let boot = boot_layers(&c);
    assert_eq!(boot.len(), 1, "{boot:#?}");
    let o = c.ok(&["--json", "store", "list"]);
    let all: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let layer = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "layer")
        .expect("a package layer for htop")
        .clone();
    assert!(
        layer["installed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("htop=")),
        "{layer:#?}"
    );
    let tree = c
        .store
        .join("layers")
        .join(layer["key"].as_str().unwrap())
        .join("tree");
    assert!(tree.join("usr/bin/htop").is_file());

    // As if the package layer had been built an hour later.
    let etc = tree.join("etc");
    let when = std::fs::metadata(&etc).unwrap().mtime() + 3600;
    let t = filetime::FileTime::from_unix_time(when, 0);
    filetime::set_file_mtime(&etc, t).unwrap();
    std::fs::remove_dir_all(
        c.store
            .join("layers")
            .join(boot[0]["key"].as_str().unwrap()),
    )
    .unwrap();
    let log = image(&c, &work.join("out2"), "z1", None);
    assert_eq!(log.matches("rebuilt in").count(), 1, "{log}");
    assert_eq!(
        sha(&initrd(&work.join("out2/z1"))),
        sha(&initrd(&first.join("z1"))),
        "the initramfs follows the package layer's build time"
    );
}
