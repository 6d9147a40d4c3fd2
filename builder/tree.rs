//! Compose a node tree from a stored base: hardlinks for the read-mostly
//! top-level directories, real copies (reflinks where the file system has
//! them) for everything a running node writes in place, so that a node
//! appending to a file can never change its siblings or the store.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use walkdir::WalkDir;

/// Counts of what composing did, for the report and the benchmark.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ComposeStats {
    pub linked: u64,
    pub copied: u64,
    pub copied_bytes: u64,
    pub dirs: u64,
    pub special: u64,
}

/// Recreate `base` at `dest` (which must not exist). Top-level directories
/// named in `link_dirs` are hardlinked file by file; the rest is copied.
pub fn compose(base: &Path, dest: &Path, link_dirs: &[String]) -> Result<ComposeStats> {
    if dest.exists() {
        bail!("{} already exists", dest.display());
    }
    let mut stats = ComposeStats::default();
    // Hardlinks inside copied areas stay hardlinks, within this node only.
    let mut copied_inodes: HashMap<(u64, u64), PathBuf> = HashMap::new();
    // Directory metadata is set after their contents, deepest first.
    let mut dirs: Vec<(PathBuf, fs::Metadata)> = Vec::new();
    for entry in WalkDir::new(base).follow_links(false).sort_by_file_name() {
        let entry = entry.with_context(|| format!("walking {}", base.display()))?;
        let rel = entry
            .path()
            .strip_prefix(base)
            .expect("walk stays under base");
        let target = dest.join(rel);
        let meta = entry
            .path()
            .symlink_metadata()
            .with_context(|| format!("reading {}", entry.path().display()))?;
        let ft = meta.file_type();
        let top = rel
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        let linked = top
            .as_deref()
            .is_some_and(|t| link_dirs.iter().any(|d| d == t))
            && rel.components().count() > 1;
        if ft.is_dir() {
            fs::create_dir(&target).with_context(|| format!("creating {}", target.display()))?;
            copy_xattrs(entry.path(), &target)?;
            dirs.push((target, meta));
            stats.dirs += 1;
        } else if ft.is_symlink() {
            let to = fs::read_link(entry.path())
                .with_context(|| format!("reading link {}", entry.path().display()))?;
            std::os::unix::fs::symlink(&to, &target)
                .with_context(|| format!("creating symlink {}", target.display()))?;
            set_owner_and_times(&target, &meta)?;
        } else if linked {
            fs::hard_link(entry.path(), &target).with_context(|| {
                format!("linking {} to {}", target.display(), entry.path().display())
            })?;
            stats.linked += 1;
        } else if let Some(first) = copied_inodes.get(&(meta.dev(), meta.ino())) {
            fs::hard_link(first, &target)
                .with_context(|| format!("linking {} to {}", target.display(), first.display()))?;
        } else if ft.is_file() {
            reflink_copy::reflink_or_copy(entry.path(), &target).with_context(|| {
                format!("copying {} to {}", entry.path().display(), target.display())
            })?;
            copy_xattrs(entry.path(), &target)?;
            set_owner_mode_and_times(&target, &meta)?;
            if meta.nlink() > 1 {
                copied_inodes.insert((meta.dev(), meta.ino()), target.clone());
            }
            stats.copied += 1;
            stats.copied_bytes += meta.len();
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
            make_special(&target, &meta)?;
            copy_xattrs(entry.path(), &target)?;
            set_owner_mode_and_times(&target, &meta)?;
            stats.special += 1;
        }
    }
    for (dir, meta) in dirs.iter().rev() {
        set_owner_mode_and_times(dir, meta)?;
    }
    Ok(stats)
}

fn make_special(target: &Path, meta: &fs::Metadata) -> Result<()> {
    use nix::sys::stat::{mknod, Mode, SFlag};
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        SFlag::S_IFCHR
    } else if ft.is_block_device() {
        SFlag::S_IFBLK
    } else if ft.is_fifo() {
        SFlag::S_IFIFO
    } else {
        SFlag::S_IFSOCK
    };
    mknod(target, kind, Mode::from_bits_truncate(0o600), meta.rdev())
        .with_context(|| format!("creating device node {}", target.display()))
}

fn copy_xattrs(from: &Path, to: &Path) -> Result<()> {
    let names = match xattr::list(from) {
        Ok(n) => n,
        // A file system without xattrs has none to copy.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing xattrs of {}", from.display())),
    };
    for name in names {
        if let Some(value) = xattr::get(from, &name)
            .with_context(|| format!("reading xattr {:?} of {}", name, from.display()))?
        {
            xattr::set(to, &name, &value)
                .with_context(|| format!("setting xattr {:?} on {}", name, to.display()))?;
        }
    }
    Ok(())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn set_owner_and_times(path: &Path, meta: &fs::Metadata) -> Result<()> {
    if is_root() {
        std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    let mtime = filetime::FileTime::from_last_modification_time(meta);
    filetime::set_symlink_file_times(path, mtime, mtime)
        .with_context(|| format!("setting times of {}", path.display()))
}

/// Owner first, then mode: chown clears setuid/setgid bits.
fn set_owner_mode_and_times(path: &Path, meta: &fs::Metadata) -> Result<()> {
    if is_root() {
        std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .with_context(|| format!("chmod {}", path.display()))?;
    let mtime = filetime::FileTime::from_last_modification_time(meta);
    filetime::set_symlink_file_times(path, mtime, mtime)
        .with_context(|| format!("setting times of {}", path.display()))
}

/// Bring every mtime newer than `epoch` down to it, so the tree (and any
/// file system made from it) is reproducible. Only inodes private to this
/// tree are touched: a file shared with the store or siblings keeps its
/// base time, which the archive writers clamp on their side.
pub fn clamp_mtimes(tree: &Path, epoch: i64) -> Result<()> {
    let limit = filetime::FileTime::from_unix_time(epoch, 0);
    for entry in WalkDir::new(tree).follow_links(false).contents_first(true) {
        let entry = entry.with_context(|| format!("walking {}", tree.display()))?;
        let meta = entry.path().symlink_metadata()?;
        if meta.mtime() > epoch && (meta.is_dir() || meta.nlink() == 1) {
            filetime::set_symlink_file_times(entry.path(), limit, limit)
                .with_context(|| format!("setting times of {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Remove a tree, tolerating one that is not there.
pub fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linked_dirs_share_inodes_and_copied_dirs_do_not() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base");
        fs::create_dir_all(base.join("usr/bin")).unwrap();
        fs::create_dir_all(base.join("etc")).unwrap();
        fs::write(base.join("usr/bin/tool"), "tool").unwrap();
        fs::write(base.join("etc/motd"), "hello").unwrap();
        fs::hard_link(base.join("etc/motd"), base.join("etc/motd2")).unwrap();
        std::os::unix::fs::symlink("usr/bin", base.join("bin")).unwrap();
        let a = t.path().join("a");
        let stats = compose(&base, &a, &["usr".into(), "bin".into()]).unwrap();
        assert_eq!(stats.linked, 1);
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        assert_eq!(
            ino(&a.join("usr/bin/tool")),
            ino(&base.join("usr/bin/tool"))
        );
        assert_ne!(ino(&a.join("etc/motd")), ino(&base.join("etc/motd")));
        // A hardlink pair inside a copied area stays a pair, privately.
        assert_eq!(ino(&a.join("etc/motd")), ino(&a.join("etc/motd2")));
        assert_eq!(fs::read_link(a.join("bin")).unwrap(), Path::new("usr/bin"));
        // Appending in a copied area never reaches the base.
        use std::io::Write;
        fs::OpenOptions::new()
            .append(true)
            .open(a.join("etc/motd"))
            .unwrap()
            .write_all(b"!")
            .unwrap();
        assert_eq!(fs::read_to_string(base.join("etc/motd")).unwrap(), "hello");
    }
}
