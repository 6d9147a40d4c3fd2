//! `chbuild image` end to end on the minbase fixture: artifacts,
//! reproducibility, sibling isolation and incremental rebuilds.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const PROFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/profiles/fixture.toml");
const EPOCH: &str = "1700000000";

fn fixture_present() -> bool {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/debian-bookworm-arm64-minbase.tar.xz");
    if !p.exists() {
        eprintln!("SKIP: fixture {} is missing", p.display());
    }
    p.exists()
}

/// One store and one secrets directory for the whole test binary, so the
/// base is ingested once.
fn shared() -> &'static (PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image_build");
        let store = root.join("store");
        let secrets = root.join("secrets");
        std::fs::create_dir_all(&root).unwrap();
        let o = run(&["secrets", "init"], &secrets, &store, &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (store, secrets)
    })
}

fn run(args: &[&str], secrets: &Path, store: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chbuild"));
    c.args(args)
        .arg("--profile")
        .arg(PROFILE)
        .arg("--secrets")
        .arg(secrets)
        .arg("--store")
        .arg(store)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env_remove("CHBUILD_PASSWORD_HASH");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running chbuild")
}

fn image(nodes: &[&str], out: &Path) -> Output {
    let (store, secrets) = shared();
    let mut args = vec!["image"];
    args.extend_from_slice(nodes);
    args.extend_from_slice(&["--output", out.to_str().unwrap()]);
    let o = run(&args, secrets, store, &[]);
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
    let text = std::fs::read_to_string(PROFILE).unwrap();
    let changed = text.replacen(
        "slot = 2\naddress = \"172.19.181.2\"\ngroups = [\"zerocluster\"]",
        "slot = 2\naddress = \"172.19.181.2\"\ngroups = [\"zerocluster\"]\noverrides = { packages = [\"tmux\"] }",
        1,
    );
    assert_ne!(text, changed);
    let p2 = Path::new(PROFILE).with_file_name("fixture-changed.toml");
    std::fs::write(&p2, changed).unwrap();
    let (store, secrets) = shared();
    let o = Command::new(env!("CARGO_BIN_EXE_chbuild"))
        .args([
            "image",
            "z1..z2",
            "--output",
            out.to_str().unwrap(),
            "--profile",
            p2.to_str().unwrap(),
        ])
        .arg("--secrets")
        .arg(secrets)
        .arg("--store")
        .arg(store)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .unwrap();
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
    let o = run(
        &[
            "image",
            "z1",
            "--output",
            t.path().join("o").to_str().unwrap(),
        ],
        &t.path().join("none"),
        &t.path().join("store"),
        &[],
    );
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
