//! `chbuild doctor --root`: a controller tree where one Zero boots, then
//! the same tree with one thing broken at a time; each break is found,
//! alone, with its fix.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Output};

const BUILD: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// A controller with ClusterCTRL and a good p1, and a release naming it.
fn healthy(root: &Path, release: &Path) {
    write(
        root,
        "lib/systemd/system/clusterctrl-rpiboot.service",
        "[Service]\n",
    );
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    symlink(
        "/lib/systemd/system/clusterctrl-rpiboot.service",
        wants.join("clusterctrl-rpiboot.service"),
    )
    .unwrap();
    write(root, "boot/firmware/bootcode.bin", "x");
    let boot = root.join("var/lib/clusterctrl/boot");
    std::fs::create_dir_all(&boot).unwrap();
    symlink("/boot/firmware/bootcode.bin", boot.join("bootcode.bin")).unwrap();
    symlink(
        "/var/lib/clusterctrl/nfs/p1/boot/firmware/",
        boot.join("1-1.1"),
    )
    .unwrap();
    let p1 = "var/lib/clusterctrl/nfs/p1";
    write(
        root,
        &format!("{p1}/boot/firmware/cmdline.txt"),
        "console=serial0,115200 root=/dev/nfs nfsroot=172.19.180.254:/var/lib/clusterctrl/nfs/p1,vers=3 rw ip=172.19.180.1:172.19.180.254::255.255.255.0:p1:usb0.10:static rootwait\n",
    );
    write(
        root,
        &format!("{p1}/etc/initramfs-tools/modules"),
        "dwc2\n8021q\nlibcomposite\n",
    );
    write(
        root,
        &format!("{p1}/etc/initramfs-tools/scripts/nfs-top/00_vlan"),
        "#!/bin/sh\nip link add link usb0 name usb0.10 type vlan id 10\n",
    );
    write(
        root,
        &format!("{p1}/.chbuild-build"),
        &format!("build={BUILD}\nnode=z1\n"),
    );
    write(
        root,
        "etc/exports",
        "/var/lib/clusterctrl/nfs/p1 172.19.180.1(rw,sync,no_subtree_check,no_root_squash)\n",
    );
    let manifest = serde_json::json!({
        "cluster": "clusterhat", "profile": "profiles/clusterhat.toml",
        "base_digest": "b", "source_date_epoch": 0,
        "nodes": [{"name": "z1", "hostname": "z1", "kind": "usbboot", "slot": 1,
                   "tree": "z1", "tarball": "z1.tar.zst", "sha256": BUILD,
                   "size": 1, "files": 1, "inputs": "i"}]
    });
    write(release, "manifest.json", &manifest.to_string());
}

fn doctor(root: &Path, release: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chbuild"))
        .args(["doctor", "--root"])
        .arg(root)
        .arg("--release")
        .arg(release)
        .args(extra)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn problems(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with("PROBLEM"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_healthy_controller_has_no_problem() {
    let t = tempfile::tempdir().unwrap();
    let (root, rel) = (t.path().join("root"), t.path().join("release"));
    healthy(&root, &rel);
    let o = doctor(&root, &rel, &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for check in [
        "rpiboot",
        "boot-links",
        "cmdline",
        "vlan",
        "exports",
        "free-space",
        "build",
    ] {
        assert!(
            out.contains(&format!("ok      {check} ")),
            "no ok line for {check}:\n{out}"
        );
    }
}

#[test]
fn each_broken_item_is_one_finding_with_its_fix() {
    type Break = fn(&Path);
    let cases: [(&str, Break, &str, &str); 7] =
        [
            (
                "rpiboot",
                |r| {
                    std::fs::remove_file(r.join(
                        "etc/systemd/system/multi-user.target.wants/clusterctrl-rpiboot.service",
                    ))
                    .unwrap()
                },
                "not enabled",
                "systemctl enable --now clusterctrl-rpiboot.service",
            ),
            (
                "boot-links",
                |r| std::fs::remove_file(r.join("var/lib/clusterctrl/boot/1-1.1")).unwrap(),
                "no link in /var/lib/clusterctrl/boot points to p1",
                "usbboot-init 1",
            ),
            (
                "cmdline",
                |r| {
                    let p = r.join("var/lib/clusterctrl/nfs/p1/boot/firmware/cmdline.txt");
                    let t = std::fs::read_to_string(&p).unwrap();
                    std::fs::write(&p, t.replace(":p1:usb0.10", ":p2:usb0.10")).unwrap();
                },
                "cmdline.txt has ip=172.19.180.1:172.19.180.254::255.255.255.0:p2:usb0.10:static",
                "usbboot-init 1",
            ),
            (
                "vlan",
                |r| {
                    std::fs::remove_dir_all(
                        r.join("var/lib/clusterctrl/nfs/p1/etc/initramfs-tools/scripts"),
                    )
                    .unwrap()
                },
                "nothing in its initramfs creates the usb0.10 VLAN",
                "official usbboot archive",
            ),
            (
                "exports",
                |r| std::fs::write(r.join("etc/exports"), "").unwrap(),
                "/var/lib/clusterctrl/nfs/p1 is not exported",
                "exportfs -ra",
            ),
            (
                "build",
                |r| {
                    std::fs::write(
                        r.join("var/lib/clusterctrl/nfs/p1/.chbuild-build"),
                        "build=bbbbbbbbbbbbbbbb\n",
                    )
                    .unwrap()
                },
                "deployed build bbbbbbbbbbbb is not the release's aaaaaaaaaaaa",
                "chbuild deploy z1 --bundle",
            ),
            (
                "free-space",
                |_| {},
                "needed for one more tree",
                "grow the file system",
            ),
        ];
    for (check, brk, message, fix) in cases {
        let t = tempfile::tempdir().unwrap();
        let (root, rel) = (t.path().join("root"), t.path().join("release"));
        healthy(&root, &rel);
        brk(&root);
        let extra: &[&str] = if check == "free-space" {
            &["--min-free-mib", "999999999"]
        } else {
            &[]
        };
        let o = doctor(&root, &rel, extra);
        let found = problems(&o);
        assert_eq!(o.status.code(), Some(1), "{check}: {found:?}");
        assert_eq!(found.len(), 1, "{check}: {found:?}");
        let line = &found[0];
        assert!(line.starts_with(&format!("PROBLEM {check} ")), "{line}");
        assert!(line.contains(message), "{check}: {line}");
        assert!(
            line.contains(" -- fix: ") && line.contains(fix),
            "{check}: {line}"
        );

        // The same as JSON: one problem, with its fix.
        let o = doctor(&root, &rel, &[&["--json"], extra].concat());
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let probs: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["status"] == "problem")
            .collect();
        assert_eq!(probs.len(), 1, "{check}: {v}");
        assert_eq!(probs[0]["check"], check);
        assert!(probs[0]["fix"].as_str().unwrap().contains(fix));
    }
}
