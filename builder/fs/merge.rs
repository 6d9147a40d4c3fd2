//! Fold the upper directory of an overlayfs mount into a tree that holds
//! the lower one: what a package layer adds, changes and deletes becomes a
//! plain tree again, in which every file the layer did not touch is still
//! the lower tree's inode (a hardlink), so layers and node trees share
//! them with the base.
//!
//! overlayfs marks a deletion with a whiteout (a character device 0/0)
//! and a directory that replaced a lower one with the xattr
//! `trusted.overlay.opaque=y`; its other `trusted.overlay.*` xattrs are
//! bookkeeping that must not reach a tree.

use super::{remove_tree, Attrs};
use anyhow::{Context, Result};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Counts of what a merge did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct MergeStats {
    /// Files, symlinks and device nodes moved in from the upper directory.
    pub moved: u64,
    pub moved_bytes: u64,
    /// Paths the layer deleted.
    pub deleted: u64,
    pub dirs: u64,
    /// The regular files moved in, relative to the root.
    #[serde(skip)]
    pub files: Vec<PathBuf>,
}

const OVERLAY_XATTR: &str = "trusted.overlay.";

fn is_overlay_xattr(name: &OsString) -> bool {
    name.to_string_lossy().starts_with(OVERLAY_XATTR)
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Remove whatever is at `path`, a directory with its contents.
fn remove_any(path: &Path) -> Result<bool> {
    match path.symlink_metadata() {
        Err(_) => Ok(false),
        Ok(m) if m.is_dir() => remove_tree(path).map(|_| true),
        Ok(_) => fs::remove_file(path)
            .map(|_| true)
            .with_context(|| format!("removing {}", path.display())),
    }
}

/// Move the entries of `upper` (an overlayfs upper directory, no longer
/// mounted) into `dest` (a copy of the lower tree), applying whiteouts and
/// opaque directories. `skip` names paths (relative to the root) whose
/// contents stay out of the result. `upper` is consumed.
pub fn merge_upper(upper: &Path, dest: &Path, skip: &[&str]) -> Result<MergeStats> {
    let mut stats = MergeStats::default();
    let mut dirs: Vec<(PathBuf, Attrs)> = Vec::new();
    let mut walk = walkdir::WalkDir::new(upper)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter();
    while let Some(e) = walk.next() {
        let e = e.with_context(|| format!("walking {}", upper.display()))?;
        let from = e.path();
        let rel = from
            .strip_prefix(upper)
            .expect("the walk stays under its root");
        let to = dest.join(rel);
        let meta = from
            .symlink_metadata()
            .with_context(|| format!("reading {}", from.display()))?;
        if skip
            .iter()
            .any(|s| rel.starts_with(s) && rel != Path::new(s))
        {
            if meta.is_dir() {
                walk.skip_current_dir();
            }
            continue;
        }
        if is_whiteout(&meta) {
            if remove_any(&to)? {
                stats.deleted += 1;
            }
            continue;
        }
        if meta.is_dir() {
            let opaque = xattr::get(from, "trusted.overlay.opaque")
                .ok()
                .flatten()
                .is_some_and(|v| v == b"y");
            match to.symlink_metadata() {
                Ok(m) if m.is_dir() => {
                    if opaque {
                        // The layer replaced this directory: nothing of
                        // the lower one shows through.
                        for c in fs::read_dir(&to)
                            .with_context(|| format!("reading {}", to.display()))?
                        {
                            let c = c.with_context(|| format!("reading {}", to.display()))?;
                            remove_any(&c.path())?;
                        }
                    }
                }
                Ok(_) => {
                    remove_any(&to)?;
                    fs::create_dir(&to).with_context(|| format!("creating {}", to.display()))?;
                }
                Err(_) => {
                    fs::create_dir(&to).with_context(|| format!("creating {}", to.display()))?;
                }
            }
            let mut attrs = Attrs::of(from, &meta)?;
            attrs.xattrs.retain(|(n, _)| !is_overlay_xattr(n));
            dirs.push((to, attrs));
            stats.dirs += 1;
            continue;
        }
        remove_any(&to)?;
        // Same file system: the upper inode itself becomes the tree's, with
        // its owner, mode, xattrs, times and hardlinks among upper files.
        fs::rename(from, &to)
            .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
        if !meta.file_type().is_symlink() {
            for name in super::read_xattrs(&to)? {
                if is_overlay_xattr(&name.0) {
                    xattr::remove(&to, &name.0).with_context(|| {
                        format!("removing the overlay xattr from {}", to.display())
                    })?;
                }
            }
        }
        stats.moved += 1;
        if meta.is_file() {
            stats.moved_bytes += meta.len();
            stats.files.push(rel.to_path_buf());
        }
    }
    // Deepest first, after every entry is in: adding entries changes a
    // directory's mtime.
    for (dir, attrs) in dirs.iter().rev() {
        attrs.apply(dir, false)?;
    }
    Ok(stats)
}

/// Whether two files hold the same bytes.
fn same_content(a: &Path, b: &Path) -> Result<bool> {
    use std::io::Read;
    let open = |p: &Path| fs::File::open(p).with_context(|| format!("opening {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = fa
            .read(&mut ba)
            .with_context(|| format!("reading {}", a.display()))?;
        let mut m = 0;
        while m < n {
            let k = fb
                .read(&mut bb[m..n])
                .with_context(|| format!("reading {}", b.display()))?;
            if k == 0 {
                return Ok(false);
            }
            m += k;
        }
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Replace each of `files` (relative to `tree`) by a hardlink to the file
/// at the same path in one of `donors` (other trees of the same store)
/// when that file has the same bytes, owner, mode, mtime and xattrs: two
/// package layers that install the same package (docker.io for the LAN
/// Pis and for the management node) then hold its files once. Files that
/// are already hardlinked within `tree` are left alone. Returns the bytes
/// shared.
pub fn link_identical(tree: &Path, files: &[PathBuf], donors: &[PathBuf]) -> Result<u64> {
    let mut shared = 0;
    for rel in files {
        let p = tree.join(rel);
        let Ok(m) = p.symlink_metadata() else {
            continue;
        };
        if !m.is_file() || m.nlink() > 1 || m.len() == 0 {
            continue;
        }
        for d in donors {
            let q = d.join(rel);
            let Ok(n) = q.symlink_metadata() else {
                continue;
            };
            let same_meta = n.is_file()
                && n.dev() == m.dev()
                && n.len() == m.len()
                && n.mode() == m.mode()
                && (n.uid(), n.gid()) == (m.uid(), m.gid())
                && (n.mtime(), n.mtime_nsec()) == (m.mtime(), m.mtime_nsec());
            if !same_meta
                || super::read_xattrs(&q)? != super::read_xattrs(&p)?
                || !same_content(&p, &q)?
            {
                continue;
            }
            // Linked beside, then renamed over: the path always names a
            // whole file.
            let name = p.file_name().expect("a file has a name").to_string_lossy();
            let tmp = p.with_file_name(format!(".{name}.chbuild-link"));
            fs::hard_link(&q, &tmp)
                .with_context(|| format!("linking {} to {}", tmp.display(), q.display()))?;
            fs::rename(&tmp, &p)
                .with_context(|| format!("renaming {} to {}", tmp.display(), p.display()))?;
            shared += m.len();
            break;
        }
    }
    Ok(shared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::{mknod, Mode, SFlag};

    #[test]
    fn whiteouts_delete_and_files_replace() {
        if !super::super::is_root() {
            return; // whiteouts are device nodes: root only
        }
        let t = tempfile::tempdir().unwrap();
        let (dest, upper) = (t.path().join("dest"), t.path().join("upper"));
        fs::create_dir_all(dest.join("etc/old")).unwrap();
        fs::write(dest.join("etc/old/f"), "old").unwrap();
        fs::write(dest.join("etc/keep"), "keep").unwrap();
        fs::write(dest.join("etc/gone"), "gone").unwrap();
        fs::create_dir_all(dest.join("opaque")).unwrap();
        fs::write(dest.join("opaque/lower"), "lower").unwrap();
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::create_dir_all(upper.join("opaque")).unwrap();
        fs::create_dir_all(upper.join("var/lib/apt/lists")).unwrap();
        fs::write(upper.join("var/lib/apt/lists/big"), "x").unwrap();
        xattr::set(upper.join("opaque"), "trusted.overlay.opaque", b"y").unwrap();
        fs::write(upper.join("opaque/upper"), "upper").unwrap();
        fs::write(upper.join("etc/keep"), "new").unwrap();
        xattr::set(upper.join("etc/keep"), "trusted.overlay.origin", b"o").unwrap();
        mknod(&upper.join("etc/gone"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
        let s = merge_upper(&upper, &dest, &["var/lib/apt/lists"]).unwrap();
        assert_eq!(fs::read_to_string(dest.join("etc/keep")).unwrap(), "new");
        assert!(xattr::get(dest.join("etc/keep"), "trusted.overlay.origin")
            .unwrap()
            .is_none());
        assert!(!dest.join("etc/gone").exists());
        assert_eq!(fs::read_to_string(dest.join("etc/old/f")).unwrap(), "old");
        assert!(!dest.join("opaque/lower").exists());
        assert!(dest.join("opaque/upper").exists());
        assert!(xattr::get(dest.join("opaque"), "trusted.overlay.opaque")
            .unwrap()
            .is_none());
        assert!(dest.join("var/lib/apt/lists").is_dir());
        assert!(!dest.join("var/lib/apt/lists/big").exists());
        assert_eq!((s.moved, s.deleted), (2, 1));
    }

    #[test]
    fn identical_files_are_linked_and_others_kept() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        for d in [&a, &b] {
            fs::create_dir_all(d.join("usr/bin")).unwrap();
        }
        fs::write(a.join("usr/bin/same"), "docker").unwrap();
        fs::write(b.join("usr/bin/same"), "docker").unwrap();
        fs::write(a.join("usr/bin/other"), "one").unwrap();
        fs::write(b.join("usr/bin/other"), "two").unwrap();
        let t0 = filetime::FileTime::from_unix_time(1_700_000_000, 0);
        for p in ["usr/bin/same", "usr/bin/other"] {
            filetime::set_file_mtime(a.join(p), t0).unwrap();
            filetime::set_file_mtime(b.join(p), t0).unwrap();
        }
        let files = vec![
            PathBuf::from("usr/bin/same"),
            PathBuf::from("usr/bin/other"),
        ];
        let shared = link_identical(&b, &files, std::slice::from_ref(&a)).unwrap();
        assert_eq!(shared, 6);
        let ino = |p: PathBuf| p.symlink_metadata().unwrap().ino();
        assert_eq!(ino(a.join("usr/bin/same")), ino(b.join("usr/bin/same")));
        assert_ne!(ino(a.join("usr/bin/other")), ino(b.join("usr/bin/other")));
        assert_eq!(fs::read_to_string(b.join("usr/bin/other")).unwrap(), "two");
    }
}
