//! Crafted archives: every way out of the tree is refused with the entry
//! named, and a broken archive leaves the store as it was.

use chbuild::profile::model::Arch;
use chbuild::profile::{Base, BaseSource, Checksum, ChecksumAlgorithm};
use chbuild::store::Store;
use std::io::Write;
use std::path::{Path, PathBuf};
use tar::{EntryType, Header};

/// Append an entry whose name is written raw: the tar crate's `set_path`
/// refuses `..` and absolute names, which is what these tests need.
fn raw(
    b: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: EntryType,
    link: Option<&str>,
    data: &[u8],
) {
    let mut h = Header::new_gnu();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_entry_type(kind);
    h.set_mode(if kind == EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn archive(dir: &Path, name: &str, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> PathBuf {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    let bytes = b.into_inner().unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn base(path: &Path) -> Base {
    Base {
        source: BaseSource::Archive {
            path: path.to_path_buf(),
            checksum: None,
        },
        architecture: Arch::Arm64,
        boot_dir: "boot/firmware".into(),
    }
}

/// Every path under the store, for "unchanged" comparisons.
fn snapshot(store: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir::WalkDir::new(store)
        .into_iter()
        .map(|e| e.unwrap().path().to_path_buf())
        .filter(|p| !p.ends_with(".lock"))
        .collect();
    v.sort();
    v
}

fn refused(name: &str, build: impl FnOnce(&mut tar::Builder<Vec<u8>>), expect: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let a = archive(tmp.path(), name, build);
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let before = snapshot(&store.root);
    let err = store.ensure_base(&base(&a)).unwrap_err();
    let msg = format!("{err:#}");
    for e in expect {
        assert!(
            msg.contains(e),
            "{name}: error `{msg}` should mention `{e}`"
        );
    }
    assert_eq!(snapshot(&store.root), before, "{name}: the store changed");
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "{name}: something was written outside the tree"
    );
    assert!(!tmp.path().join("x").exists());
}

#[test]
fn dotdot_is_refused() {
    refused(
        "dotdot.tar",
        |b| {
            raw(b, "./", EntryType::Directory, None, b"");
            raw(b, "./etc/../../x", EntryType::Regular, None, b"evil");
        },
        &["./etc/../../x", "`..`"],
    );
}

#[test]
fn absolute_name_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("abs-target");
    let name = target.display().to_string();
    refused(
        "abs.tar",
        |b| raw(b, &name, EntryType::Regular, None, b"evil"),
        &[&name, "absolute"],
    );
    assert!(!target.exists());
}

#[test]
fn write_through_symlink_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().display().to_string();
    refused(
        "through-symlink.tar",
        |b| {
            raw(b, "./", EntryType::Directory, None, b"");
            raw(b, "./escape", EntryType::Symlink, Some(&outside), b"");
            raw(b, "./escape/pwned", EntryType::Regular, None, b"evil");
        },
        &["./escape/pwned", "symbolic link"],
    );
    assert!(!tmp.path().join("pwned").exists());
}

#[test]
fn relative_symlink_escape_is_refused() {
    refused(
        "relative-symlink.tar",
        |b| {
            raw(b, "./", EntryType::Directory, None, b"");
            raw(b, "./up", EntryType::Symlink, Some("../../../.."), b"");
            raw(b, "./up/tmp/pwned", EntryType::Directory, None, b"");
        },
        &["./up/tmp/pwned", "symbolic link"],
    );
}

#[test]
fn hardlink_outside_is_refused() {
    refused(
        "hardlink-dotdot.tar",
        |b| {
            raw(b, "./", EntryType::Directory, None, b"");
            raw(
                b,
                "./passwd",
                EntryType::Link,
                Some("../../../etc/passwd"),
                b"",
            );
        },
        &["./passwd", "`..`"],
    );
    refused(
        "hardlink-abs.tar",
        |b| raw(b, "./shadow", EntryType::Link, Some("/etc/shadow"), b""),
        &["./shadow", "absolute"],
    );
    // Through a symlink inside the tree that points outside.
    refused(
        "hardlink-via-symlink.tar",
        |b| {
            raw(b, "./", EntryType::Directory, None, b"");
            raw(b, "./etc", EntryType::Symlink, Some("/etc"), b"");
            raw(b, "./passwd", EntryType::Link, Some("./etc/passwd"), b"");
        },
        &["./passwd", "symbolic link"],
    );
}

fn good_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    raw(&mut b, "./", EntryType::Directory, None, b"");
    raw(&mut b, "./etc/", EntryType::Directory, None, b"");
    // Incompressible enough that cutting the archive cuts file data.
    let mut x = 0x2545F4914F6CDD1Du64;
    let data: Vec<u8> = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    raw(&mut b, "./etc/data", EntryType::Regular, None, &data);
    raw(
        &mut b,
        "./etc/hostname",
        EntryType::Regular,
        None,
        b"node\n",
    );
    b.into_inner().unwrap()
}

#[test]
fn truncated_or_corrupt_archive_leaves_store_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let tar = good_tar();
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
    xz.write_all(&tar).unwrap();
    let xz = xz.finish().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    let mut corrupt = xz.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("cut.tar", tar[..tar.len() / 2].to_vec()),
        // Cut exactly between entries: only the missing end blocks tell.
        ("cut-at-header.tar", tar[..1024 + 512 + 200_192].to_vec()),
        ("cut.tar.xz", xz[..xz.len() - 40].to_vec()),
        ("cut.tar.gz", gz[..gz.len() / 2].to_vec()),
        ("cut.tar.zst", zst[..zst.len() - 10].to_vec()),
        ("corrupt.tar.xz", corrupt),
    ];
    let before = snapshot(&store.root);
    for (name, bytes) in cases {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let err = store.ensure_base(&base(&p));
        assert!(err.is_err(), "{name} was accepted");
        eprintln!("{name}: {:#}", err.unwrap_err());
        assert_eq!(snapshot(&store.root), before, "{name}: the store changed");
    }
    // The complete archives, whatever their compression, give one tree each.
    for (name, bytes) in [
        ("ok.tar", &tar),
        ("ok.tar.xz", &xz),
        ("ok.tar.gz", &gz),
        ("ok.zst", &zst),
    ] {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let t = store.ensure_base(&base(&p)).unwrap();
        assert_eq!(
            std::fs::read(t.root.join("etc/hostname")).unwrap(),
            b"node\n"
        );
    }
    assert_eq!(store.list().unwrap().len(), 4);
}

#[test]
fn archive_checksum_is_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let p = tmp.path().join("ok.tar");
    std::fs::write(&p, good_tar()).unwrap();
    let mut b = base(&p);
    b.source = BaseSource::Archive {
        path: p.clone(),
        checksum: Some(Checksum {
            algorithm: ChecksumAlgorithm::Md5,
            hex: "0".repeat(32),
        }),
    };
    let before = snapshot(&store.root);
    let msg = format!("{:#}", store.ensure_base(&b).unwrap_err());
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert_eq!(snapshot(&store.root), before);
}
