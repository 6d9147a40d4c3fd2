//! The whole chain on the minbase fixture: `chbuild image` builds the Zero
//! trees, `chbuild verify` accepts the output, `chbuild deploy` installs
//! them under a prefix as ClusterCTRL's pN directories.

mod cli_support;

use cli_support::Chbuild;
use std::path::PathBuf;
use std::process::Output;

fn chbuild(args: &[&str]) -> Output {
    Chbuild::new("end_to_end", "fixture.toml").run(args)
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

#[test]
fn image_verify_and_deploy_two_zeros() {
    if !cli_support::fixture_present() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        cli_support::skip("deploying trees with their owners needs root (runs in CI)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let root = t.path().join("root");
    let out_s = out.to_str().unwrap();
    let root_s = root.to_str().unwrap();
    ok(chbuild(&["secrets", "init"]));
    ok(chbuild(&["image", "@zerocluster", "--output", out_s]));
    ok(chbuild(&["verify", out_s]));

    let o = ok(chbuild(&[
        "deploy",
        "z1,z2",
        "--output",
        out_s,
        "--root",
        root_s,
        "--no-power",
    ]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("usbboot-init") && err.contains("skipped"),
        "a Debian base has no reconfig-usbboot: {err}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    for (node, n) in [("z1", 1), ("z2", 2)] {
        let p: PathBuf = root.join(format!("var/lib/clusterctrl/nfs/p{n}"));
        assert_eq!(
            std::fs::read_to_string(p.join("etc/hostname"))
                .unwrap()
                .trim(),
            node
        );
        let cmdline = std::fs::read_to_string(p.join("boot/firmware/cmdline.txt")).unwrap();
        assert!(
            cmdline.contains(&format!(":p{n}:usb0.10:static")),
            "{cmdline}"
        );
        let sha = manifest["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == node)
            .unwrap()["sha256"]
            .as_str()
            .unwrap()
            .to_string();
        let marker = std::fs::read_to_string(p.join(".chbuild-build")).unwrap();
        assert!(marker.contains(&sha), "{marker}");
        assert_eq!(
            std::fs::read(p.join("etc/munge/munge.key")).unwrap().len(),
            1024
        );
    }
    // The same build again changes nothing.
    let o = ok(chbuild(&[
        "deploy",
        "z1",
        "--output",
        out_s,
        "--root",
        root_s,
        "--no-power",
    ]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unchanged"));

    // A tampered tarball makes verify (and a bundle deploy) refuse.
    let tarball = out.join("z2.tar.zst");
    let mut bytes = std::fs::read(&tarball).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&tarball, bytes).unwrap();
    let o = chbuild(&["verify", out_s]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("z2.tar.zst: sha256"));
    let o = chbuild(&[
        "deploy",
        "z2",
        "--bundle",
        out_s,
        "--root",
        root_s,
        "--no-power",
        "--force",
    ]);
    assert!(!o.status.success());
}
