//! `chbuild sd` through the binary: an SD image of p5 from the minbase
//! fixture with every role baked in, reuse of an up-to-date image, and a
//! write to a loop device standing in for a card.

mod cli_support;

use cli_support::Chbuild;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn cli() -> Chbuild {
    Chbuild::new("sd_cli", "fixture.toml")
}

fn chbuild(args: &[&str]) -> Output {
    cli().run(args)
}

/// The fixture is there and the secrets exist (made once).
fn ready() -> bool {
    if !cli_support::fixture_present() {
        return false;
    }
    cli().init_secrets();
    true
}

#[test]
fn sd_image_of_p5_has_the_roles_and_is_reused_when_unchanged() {
    if !ready() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("p5.img");
    let o = chbuild(&["sd", "p5", "--output", img.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::metadata(&img).unwrap().permissions().mode() & 0o777,
        0o600,
        "the image holds secrets"
    );

    // The root file system carries the roles, checked by debugfs.
    let table: serde_json::Value = serde_json::from_slice(
        &Command::new("sfdisk")
            .arg("--json")
            .arg(&img)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let root_start = parts[1]["start"].as_u64().unwrap();
    let root_size = parts[1]["size"].as_u64().unwrap();
    let part = t.path().join("root.ext4");
    let dd = Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", part.display()))
        .args([
            "bs=512",
            &format!("skip={root_start}"),
            &format!("count={root_size}"),
            "status=none",
        ])
        .status()
        .unwrap();
    assert!(dd.success());
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&part)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let cat = |f: &str| {
        let o = Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat {f}"))
            .arg(&part)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(cat("/etc/hostname").trim(), "p5");
    assert!(
        cat("/etc/hosts").contains("172.16.2.200\tclusterhat controller p0"),
        "{}",
        cat("/etc/hosts")
    );
    assert!(
        cat("/etc/exports").contains("/opt/data"),
        "p5 is the NFS server"
    );
    let stat = Command::new("debugfs")
        .arg("-R")
        .arg("stat /etc/munge/munge.key")
        .arg(&part)
        .output()
        .unwrap();
    let stat = String::from_utf8_lossy(&stat.stdout);
    assert!(stat.contains("Mode:  0400"), "{stat}");

    // A second run with the same inputs reuses the image.
    let before = std::fs::metadata(&img).unwrap().modified().unwrap();
    let o = chbuild(&["sd", "p5", "--output", img.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("up to date, reused"),
        "{err}"
    );
    assert_eq!(before, std::fs::metadata(&img).unwrap().modified().unwrap());

    // --compress zst gives a copy that decompresses to the image.
    let o = chbuild(&[
        "sd",
        "p5",
        "--output",
        img.to_str().unwrap(),
        "--compress",
        "zst",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let zst = t.path().join("p5.img.zst");
    let back = Command::new("zstd").arg("-dc").arg(&zst).output().unwrap();
    assert!(
        back.stdout == std::fs::read(&img).unwrap(),
        "zstd -dc p5.img.zst differs from p5.img"
    );
}

#[test]
fn sd_refuses_a_zero() {
    let o = chbuild(&["sd", "z1", "--output", "/tmp/never.img"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("z1 is a usbboot Zero"));
    assert!(!Path::new("/tmp/never.img").exists());
}

#[test]
fn sd_writes_a_card_through_the_command_line() {
    if !nix::unistd::geteuid().is_root() {
        cli_support::skip("writing a loop device needs root (runs in CI)");
        return;
    }
    if !ready() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("p4.img");
    let o = chbuild(&["sd", "p4", "--output", img.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let card = t.path().join("card");
    let len = std::fs::metadata(&img).unwrap().len() + (64 << 20);
    std::fs::File::create(&card).unwrap().set_len(len).unwrap();
    let lo = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&card)
        .output()
        .unwrap();
    assert!(
        lo.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&lo.stderr)
    );
    let dev = String::from_utf8(lo.stdout).unwrap().trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        }
    }
    let _guard = Detach(dev.clone());
    // Without --force a loop device (not removable) is refused.
    let o = chbuild(&[
        "sd",
        "p4",
        "--output",
        img.to_str().unwrap(),
        "--dev",
        &dev,
        "--yes",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("removable"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = chbuild(&[
        "sd",
        "p4",
        "--output",
        img.to_str().unwrap(),
        "--dev",
        &dev,
        "--yes",
        "--force",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let written = report["written"]["bytes_written"].as_u64().unwrap();
    assert!(
        written < std::fs::metadata(&img).unwrap().len(),
        "only mapped blocks are written"
    );
    // The card now starts with the image.
    let image = std::fs::read(&img).unwrap();
    let mut card_bytes = std::fs::read(&card).unwrap();
    card_bytes.truncate(image.len());
    assert!(card_bytes == image, "card content differs from the image");
}
