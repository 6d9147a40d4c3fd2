//! chbuild's unpacked tree against GNU tar's on the same archive: types,
//! modes (setuid/setgid), owners, sizes, mtimes (sub-second), link counts,
//! link targets, device numbers and every extended attribute.

mod support;

use chbuild::profile::model::Arch;
use chbuild::profile::{Base, BaseSource};
use chbuild::store::{manifest, Store};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use tar::{EntryType, Header};

const PI: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures/debian-bookworm-arm64-pi.tar.xz"
);

fn root_or_skip(what: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        support::skip(&format!(
            "{what} needs root (owners, devices, security.* xattrs)"
        ));
        return false;
    }
    true
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("starting a checker");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `find -printf` of every file (directory sizes left out: they depend on
/// the order names were added), `getfattr` of every xattr, device numbers.
fn dump(root: &Path) -> Vec<String> {
    let find = run(Command::new("find")
        .arg(".")
        .args(["-printf", "%P|%y|%m|%U|%G|%s|%T@|%n|%l\n"])
        .current_dir(root));
    let mut lines: Vec<String> = find
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split('|').collect();
            if f[1] == "d" {
                f[5] = "-";
            }
            format!("find {}", f.join(" "))
        })
        .collect();
    let attrs = run(Command::new("getfattr")
        .args(["-R", "-d", "-h", "-m", "-", "-e", "hex", "."])
        .current_dir(root));
    for block in attrs.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut it = block.lines();
        let file = it.next().unwrap().to_string();
        for a in it {
            lines.push(format!("xattr {file} {a}"));
        }
    }
    for e in walkdir::WalkDir::new(root) {
        let e = e.unwrap();
        let ft = e.file_type();
        if ft.is_char_device() || ft.is_block_device() {
            let rdev = e.metadata().unwrap().rdev();
            lines.push(format!(
                "dev {} {}:{}",
                e.path().strip_prefix(root).unwrap().display(),
                nix::sys::stat::major(rdev),
                nix::sys::stat::minor(rdev)
            ));
        }
    }
    lines.sort();
    lines
}

fn gnu_tar(archive: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(archive)
        .arg("-C")
        .arg(dest));
}

/// Unpack with both into `work` (the caller's temporary directory, removed
/// even when an assertion fails) and compare the dumps.
fn compare(archive: &Path, work: &Path) -> (usize, chbuild::store::BaseTree) {
    let store = Store::open(&work.join("store")).unwrap();
    let base = Base {
        source: BaseSource::Archive {
            path: archive.to_path_buf(),
            checksum: None,
        },
        architecture: Arch::Arm64,
        boot_dir: "boot/firmware".into(),
    };
    let tree = store.ensure_base(&base).unwrap();
    let ours = dump(&tree.root);
    let theirs_dir = work.join("gnu");
    gnu_tar(archive, &theirs_dir);
    let theirs = dump(&theirs_dir);
    let only_ours: Vec<_> = ours
        .iter()
        .filter(|l| theirs.binary_search(l).is_err())
        .collect();
    let only_theirs: Vec<_> = theirs
        .iter()
        .filter(|l| ours.binary_search(l).is_err())
        .collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "chbuild and GNU tar differ on {}:\nchbuild only: {:#?}\nGNU tar only: {:#?}",
        archive.display(),
        &only_ours[..only_ours.len().min(20)],
        &only_theirs[..only_theirs.len().min(20)]
    );
    (ours.len(), tree)
}

#[test]
fn pi_fixture_matches_gnu_tar() {
    if !root_or_skip("comparing with GNU tar") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (lines, tree) = compare(Path::new(PI), work.path());
    assert!(lines > 15_000, "only {lines} lines compared");
    // The attributes the issue names, checked by name as well.
    let cap = xattr::get(tree.root.join("usr/bin/ping"), "security.capability").unwrap();
    assert!(cap.is_some(), "ping lost its file capability");
    let acl = xattr::get(
        tree.root.join("var/log/journal"),
        "system.posix_acl_default",
    )
    .unwrap();
    assert!(acl.is_some(), "var/log/journal lost its default ACL");
    let m = manifest::read_manifest(&tree.root.parent().unwrap().join(manifest::MANIFEST)).unwrap();
    assert_eq!(m.len(), 15_696);
    let ping = m.iter().find(|e| e.path == "usr/bin/ping").unwrap();
    assert!(ping.xattrs.contains_key("security.capability"));
}

/// Every entry kind a root filesystem has, with the details tar-rs alone
/// loses: device nodes, FIFOs, directory mtimes and xattrs, sub-second times.
#[test]
fn crafted_entry_kinds_match_gnu_tar() {
    if !root_or_skip("comparing with GNU tar") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str,
                   kind: EntryType,
                   mode: u32,
                   link: Option<&str>,
                   data: &[u8],
                   pax: &[(&str, &[u8])]| {
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (*k, *v)))
                .unwrap();
        }
        let mut h = Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(995);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        if matches!(kind, EntryType::Char | EntryType::Block) {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    let dir_pax: &[(&str, &[u8])] = &[("mtime", b"1500000000.25"), ("SCHILY.xattr.user.dir", b"d")];
    add("./", EntryType::Directory, 0o755, None, b"", &[]);
    add("./dir/", EntryType::Directory, 0o2750, None, b"", dir_pax);
    add(
        "./dir/setuid",
        EntryType::Regular,
        0o4755,
        None,
        b"#!/bin/sh\n",
        &[("SCHILY.xattr.user.k", b"v")],
    );
    add(
        "./dir/hard",
        EntryType::Link,
        0o644,
        Some("./dir/setuid"),
        b"",
        &[],
    );
    add(
        "./dir/link",
        EntryType::Symlink,
        0o777,
        Some("setuid"),
        b"",
        &[],
    );
    add("./dir/null", EntryType::Char, 0o666, None, b"", &[]);
    add("./dir/blk", EntryType::Block, 0o660, None, b"", &[]);
    add("./dir/fifo", EntryType::Fifo, 0o600, None, b"", &[]);
    add(
        "./sticky/",
        EntryType::Directory,
        0o1777,
        None,
        b"",
        &[("mtime", b"0")],
    );
    add("./ro/", EntryType::Directory, 0o555, None, b"", &[]);
    add(
        "./ro/file",
        EntryType::Regular,
        0o444,
        None,
        b"x",
        &[("mtime", b"1700000000.999999999")],
    );
    let path = tmp.path().join("kinds.tar");
    std::fs::write(&path, b.into_inner().unwrap()).unwrap();
    let (lines, tree) = compare(&path, tmp.path());
    assert!(lines >= 12, "{lines}");
    let md = std::fs::symlink_metadata(tree.root.join("dir/fifo")).unwrap();
    assert!(md.file_type().is_fifo());
    let md = std::fs::metadata(tree.root.join("sticky")).unwrap();
    assert_eq!(md.mtime(), 0, "mtime 0 must stay 0");
}
