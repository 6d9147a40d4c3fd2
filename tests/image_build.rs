//! `chbuild image` end to end on the minbase fixture: artifacts,
//! reproducibility, sibling isolation and incremental rebuilds.

mod cli_support;

use cli_support::{fixture_present, Chbuild};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One store and one secrets directory for the whole test binary, so the
/// base is ingested once.
fn cli() -> Chbuild {
    let c = Chbuild::new("image_build", "fixture.toml");
    c.init_secrets();
    c
}

fn image(nodes: &[&str], out: &Path) -> Output {
    let mut args = vec!["image"];
    args.extend_from_slice(nodes);
    args.extend_from_slice(&["--output", out.to_str().unwrap()]);
    let o = cli().run(&args);
    assert!(
        o.status.success(),
        "chbuild image failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

#[test]
fn builds_are_reproducible_and_complete() {
    if !fixture_present() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a");
    let b = t.path().join("b");
    image(&["z1,p5"], &a);
    image(&["z1", "p5"], &b);
    for f in [
        "z1.tar.zst",
        "p5.tar.zst",
        "manifest.json",
        "SHA256SUMS",
        "known_hosts",
    ] {
        let fa = std::fs::read(a.join(f)).unwrap();
        let fb = std::fs::read(b.join(f)).unwrap();
        assert!(fa == fb, "{f} differs between two builds");
    }
    // The checksums verify with the tool users run.
    let o = Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(&a)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["source_date_epoch"], 1700000000);
    let z1 = m["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "z1")
        .unwrap();
    assert_eq!(z1["slot"], 1);
    assert_eq!(z1["kind"], "usbboot");
    assert!(z1["files"].as_u64().unwrap() > 10_000);

    // The tarball holds the tree with its owners, modes and device nodes.
    let o = Command::new("tar")
        .args(["--numeric-owner", "-tvf"])
        .arg(a.join("z1.tar.zst"))
        .arg("--zstd")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listing = String::from_utf8_lossy(&o.stdout);
    let passwd = listing
        .lines()
        .find(|l| l.ends_with(" usr/bin/passwd"))
        .expect("passwd in tarball");
    assert!(passwd.starts_with("-rwsr-xr-x 0/0"), "{passwd}");
    if nix::unistd::geteuid().is_root() {
        let null = listing
            .lines()
            .find(|l| l.ends_with(" dev/null"))
            .expect("/dev/null in tarball");
        assert!(null.starts_with("crw-rw-rw- 0/0"), "{null}");
    } else {
        cli_support::skip("device nodes in the base need root to ingest");
    }
    for l in listing.lines() {
        // GNU tar prints the date of each entry: none is after the epoch.
        assert!(
            !l.contains("2024-") && !l.contains("2025-") && !l.contains("2026-"),
            "{l}"
        );
    }
}

#[test]
fn siblings_share_the_base_but_never_their_writable_files() {
    if !fixture_present() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    image(&["z1..z2"], &out);
    let ino = |p: PathBuf| std::fs::symlink_metadata(p).unwrap().ino();
    let z1 = out.join("z1");
    let z2 = out.join("z2");
    assert_eq!(
        ino(z1.join("usr/bin/passwd")),
        ino(z2.join("usr/bin/passwd"))
    );
    for f in ["etc/passwd", "etc/hostname", "var/lib/dpkg/status"] {
        assert_ne!(
            ino(z1.join(f)),
            ino(z2.join(f)),
            "{f} must be a private copy"
        );
    }
    // A node appending to a file never changes its sibling.
    use std::io::Write;
    let before = std::fs::read(z2.join("etc/hosts")).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(z1.join("etc/hosts"))
        .unwrap()
        .write_all(b"10.0.0.1 intruder\n")
        .unwrap();
    assert_eq!(std::fs::read(z2.join("etc/hosts")).unwrap(), before);

    // Four nodes use little more disk than one tree (du counts a hardlink once).
    let du = |paths: &[PathBuf]| -> u64 {
        let o = Command::new("du")
            .arg("-sk")
            .arg("-c")
            .args(paths)
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&o.stdout);
        s.lines()
            .last()
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let one = du(std::slice::from_ref(&z1));
    let both = du(&[z1, z2]);
    assert!(
        (both as f64) < one as f64 * 1.15,
        "two trees {both} KiB vs one {one} KiB"
    );
}

#[test]
fn unchanged_nodes_are_not_rebuilt_and_changes_touch_only_their_node() {
    if !fixture_present() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    image(&["z1..z2"], &out);
    let mtime = |p: &str| std::fs::metadata(out.join(p)).unwrap().mtime_nsec();
    let (t1, t2) = (mtime("z1.tar.zst"), mtime("z2.tar.zst"));
    let o = image(&["z1..z2"], &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("z1: unchanged") && err.contains("z2: unchanged"),
        "{err}"
    );
    assert_eq!((t1, t2), (mtime("z1.tar.zst"), mtime("z2.tar.zst")));

    // A host override on z2 rebuilds z2 only.
    let base = cli();
    let text = std::fs::read_to_string(&base.profile).unwrap();
    let changed = text.replacen(
        "slot = 2\naddress = \"172.19.181.2\"\ngroups = [\"zerocluster\"]",
        "slot = 2\naddress = \"172.19.181.2\"\ngroups = [\"zerocluster\"]\noverrides = { packages = [\"tmux\"] }",
        1,
    );
    assert_ne!(text, changed);
    let p2 = base.profile.with_file_name("fixture-changed.toml");
    std::fs::write(&p2, changed).unwrap();
    let changed_cli = Chbuild {
        profile: p2.clone(),
        ..base
    };
    let o = changed_cli.run(&["image", "z1..z2", "--output", out.to_str().unwrap()]);
    let _ = std::fs::remove_file(&p2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("z1: unchanged"), "{err}");
    assert!(!err.contains("z2: unchanged"), "{err}");
    assert_eq!(t1, mtime("z1.tar.zst"));
    assert_ne!(t2, mtime("z2.tar.zst"));
    // And the base was not ingested again (the store logs "stored <digest>").
    assert!(!err.contains("stored "), "{err}");
}

#[test]
fn image_without_secrets_says_what_to_run() {
    let t = tempfile::tempdir().unwrap();
    let nothing = Chbuild {
        profile: cli_support::profile("fixture.toml"),
        store: t.path().join("store"),
        secrets: t.path().join("none"),
    };
    let o = nothing.run(&[
        "image",
        "z1",
        "--output",
        t.path().join("o").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("chbuild secrets init"), "{err}");
}

#[test]
fn artifacts_holding_secrets_are_private() {
    if !fixture_present() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    image(&["z3"], &out);
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(out.clone()), 0o700);
    assert_eq!(mode(out.join("z3.tar.zst")), 0o600);
    assert_eq!(mode(out.join("z3/etc/munge/munge.key")), 0o400);
    assert_eq!(mode(out.join("z3/etc/ssh/ssh_host_ed25519_key")), 0o600);
    assert_eq!(mode(out.join("z3/etc/shadow")) & 0o007, 0);
}
