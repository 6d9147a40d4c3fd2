//! Copying a tree with a link policy. Regular files under the policy's
//! top-level directories are hardlinked to the source (package files, which
//! dpkg replaces by rename and never rewrites in place); everything else is
//! a private copy (a reflink where the file system has them), because a
//! running node or `usbboot-init` writes there in place, which would reach
//! through a hardlink into the source and every sibling.
//!
//! Hardlinks between copied files stay hardlinks, privately. A pair that
//! crosses the policy's boundary is split: the copied side never shares an
//! inode with the source.
//!
//! Sockets are skipped (running programs make them; no archive or image
//! format chbuild writes can carry one). Device nodes and FIFOs are made
//! with `mknod`. The walk stays on the source's file system.

use super::Attrs;
use anyhow::{Context, Result};
use nix::sys::stat::{mknod, Mode, SFlag};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Which source files a copy shares by hardlink.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkPolicy {
    top: Vec<OsString>,
    all: bool,
    /// Top-level directories whose files are linked except text files
    /// (`*.txt`), which stay private copies.
    binaries: Vec<OsString>,
    /// Deeper directories (relative paths) whose files are all linked.
    subtrees: Vec<PathBuf>,
}

impl LinkPolicy {
    /// Copy everything.
    pub fn copy_all() -> LinkPolicy {
        LinkPolicy::default()
    }

    /// Hardlink the regular files below these top-level directories.
    pub fn link_top<S: AsRef<OsStr>>(dirs: impl IntoIterator<Item = S>) -> LinkPolicy {
        LinkPolicy {
            top: dirs.into_iter().map(|d| d.as_ref().to_owned()).collect(),
            all: false,
            binaries: Vec::new(),
            subtrees: Vec::new(),
        }
    }

    /// Hardlink every regular file: a store entry made from another one
    /// (a package layer from its base), never written in place.
    pub fn link_all() -> LinkPolicy {
        LinkPolicy {
            top: vec![],
            all: true,
            binaries: Vec::new(),
            subtrees: Vec::new(),
        }
    }

    /// Also hardlink the regular files below the top-level directory `dir`,
    /// except text files (`*.txt`, the ones written in place by `cat >` or
    /// an editor); the caller says why that is safe for `dir`.
    pub fn and_binaries_under<S: AsRef<OsStr>>(mut self, dir: S) -> LinkPolicy {
        self.binaries.push(dir.as_ref().to_owned());
        self
    }

    /// Also hardlink every regular file below `dir`, a path relative to the
    /// tree root; the caller says why that is safe for `dir`.
    pub fn and_subtree(mut self, dir: impl Into<PathBuf>) -> LinkPolicy {
        self.subtrees.push(dir.into());
        self
    }

    /// Whether a regular file at `rel` (relative to the tree root) is
    /// hardlinked to the source.
    pub fn links(&self, rel: &Path) -> bool {
        if self.all {
            return true;
        }
        let mut c = rel.components();
        let (Some(top), Some(_)) = (c.next(), c.next()) else {
            return false;
        };
        let top = top.as_os_str();
        if self.top.iter().any(|t| top == t) {
            return true;
        }
        if self
            .subtrees
            .iter()
            .any(|d| rel.starts_with(d) && rel != d.as_path())
        {
            return true;
        }
        self.binaries.iter().any(|t| top == t)
            && !rel
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("txt"))
    }
}

/// Counts of what a copy did, for reports and benchmarks.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct CopyStats {
    /// Every entry of the source, the root included.
    pub entries: u64,
    pub dirs: u64,
    /// Regular files hardlinked to the source.
    pub linked: u64,
    /// Regular files copied (each inode once).
    pub copied: u64,
    pub copied_bytes: u64,
    /// Device nodes and FIFOs.
    pub special: u64,
    /// Refreshing an old tree: regular files left as they were, and
    /// entries removed because the new content no longer has them.
    pub kept: u64,
    pub pruned: u64,
}

/// Recreate `src` at `dst` (which must not exist) with owners (when root),
/// modes, xattrs and mtimes, hardlinking what `policy` says.
pub fn copy_tree(src: &Path, dst: &Path, policy: &LinkPolicy) -> Result<CopyStats> {
    if dst.symlink_metadata().is_ok() {
        anyhow::bail!("{} already exists", dst.display());
    }
    let mut stats = CopyStats::default();
    // First copy of each multiply-linked inode, for its other names.
    let mut copies: HashMap<(u64, u64), PathBuf> = HashMap::new();
    // Directory attributes last and deepest first: adding entries changes
    // a directory's mtime, a read-only mode would stop the adding, and a
    // default ACL would be inherited by what is created below it.
    let mut dirs: Vec<(PathBuf, Attrs)> = Vec::new();
    for e in walkdir::WalkDir::new(src)
        .follow_links(false)
        .sort_by_file_name()
        .same_file_system(true)
    {
        let e = e.with_context(|| format!("walking {}", src.display()))?;
        let from = e.path();
        let rel = from
            .strip_prefix(src)
            .expect("the walk stays under its root");
        let to = dst.join(rel);
        stats.entries += 1;
        // The walk's own file type (from the directory entry, no lstat):
        // a linked file, most of a tree, needs nothing more than link(2).
        if e.file_type().is_file() && policy.links(rel) {
            fs::hard_link(from, &to)
                .with_context(|| format!("linking {} to {}", to.display(), from.display()))?;
            stats.linked += 1;
            continue;
        }
        let meta = from
            .symlink_metadata()
            .with_context(|| format!("reading {}", from.display()))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&to).with_context(|| format!("creating {}", to.display()))?;
            dirs.push((to, Attrs::of(from, &meta)?));
            stats.dirs += 1;
            continue;
        }
        if ft.is_socket() {
            tracing::debug!("skipping the socket {}", from.display());
            continue;
        }
        let inode = (meta.dev(), meta.ino());
        if meta.nlink() > 1 {
            if let Some(first) = copies.get(&inode) {
                fs::hard_link(first, &to)
                    .with_context(|| format!("linking {} to {}", to.display(), first.display()))?;
                continue;
            }
        }
        let attrs = Attrs::of(from, &meta)?;
        if ft.is_symlink() {
            let target =
                fs::read_link(from).with_context(|| format!("reading link {}", from.display()))?;
            std::os::unix::fs::symlink(&target, &to)
                .with_context(|| format!("creating the symlink {}", to.display()))?;
        } else if ft.is_file() {
            reflink_copy::reflink_or_copy(from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            stats.copied += 1;
            stats.copied_bytes += meta.len();
        } else {
            let kind = if ft.is_char_device() {
                SFlag::S_IFCHR
            } else if ft.is_block_device() {
                SFlag::S_IFBLK
            } else {
                SFlag::S_IFIFO
            };
            // 0600 until the owner is set; the mode comes after it.
            mknod(&to, kind, Mode::from_bits_truncate(0o600), meta.rdev())
                .with_context(|| format!("creating the node {}", to.display()))?;
            stats.special += 1;
        }
        attrs.apply(&to, ft.is_symlink())?;
        if meta.nlink() > 1 {
            copies.insert(inode, to);
        }
    }
    for (dir, attrs) in dirs.iter().rev() {
        attrs.apply(dir, false)?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use filetime::FileTime;
    use std::os::unix::fs::PermissionsExt;

    /// cap_net_raw+ep as `setcap` writes it (VFS_CAP_REVISION_2).
    const CAP_NET_RAW: [u8; 20] = [
        0x01, 0, 0, 0x02, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    fn source(root: &Path) {
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("dev")).unwrap();
        let tool = root.join("usr/bin/tool");
        fs::write(&tool, "tool").unwrap();
        fs::hard_link(&tool, root.join("usr/bin/tool2")).unwrap();
        fs::write(root.join("etc/motd"), "hello").unwrap();
        fs::hard_link(root.join("etc/motd"), root.join("etc/motd2")).unwrap();
        fs::write(root.join("etc/su"), "su").unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        nix::unistd::mkfifo(&root.join("dev/fifo"), Mode::from_bits_truncate(0o620)).unwrap();
        fs::set_permissions(root.join("dev/fifo"), fs::Permissions::from_mode(0o620)).unwrap();
        xattr::set(root.join("etc/motd"), "user.chbuild", b"yes").unwrap();
        xattr::set(root.join("etc"), "user.dir", b"d").unwrap();
        if super::super::is_root() {
            let su = root.join("etc/su");
            std::os::unix::fs::lchown(&su, Some(12), Some(34)).unwrap();
            xattr::set(&su, "security.capability", &CAP_NET_RAW).unwrap();
            mknod(
                &root.join("dev/null"),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(1, 3),
            )
            .unwrap();
            std::os::unix::fs::lchown(root.join("bin"), Some(5), Some(6)).unwrap();
        }
        fs::set_permissions(root.join("etc/su"), fs::Permissions::from_mode(0o4755)).unwrap();
        filetime::set_file_mtime(root.join("etc"), FileTime::from_unix_time(1000, 7)).unwrap();
    }

    #[test]
    fn copy_keeps_everything_and_links_by_policy() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        source(&src);
        let dst = t.path().join("dst");
        let stats = copy_tree(&src, &dst, &LinkPolicy::link_top(["usr"])).unwrap();
        let m = |p: &Path| p.symlink_metadata().unwrap();
        let (s, d) = (|r: &str| m(&src.join(r)), |r: &str| m(&dst.join(r)));
        // Linked area: the source inode itself.
        assert_eq!(d("usr/bin/tool").ino(), s("usr/bin/tool").ino());
        assert_eq!(d("usr/bin/tool2").ino(), s("usr/bin/tool").ino());
        assert_eq!(stats.linked, 2);
        // Copied area: private inodes, a private hardlink pair.
        assert_ne!(d("etc/motd").ino(), s("etc/motd").ino());
        assert_eq!(d("etc/motd").ino(), d("etc/motd2").ino());
        assert_eq!(stats.copied, 2);
        // setuid survives the owner change, and so do the capabilities.
        assert_eq!(d("etc/su").mode() & 0o7777, 0o4755);
        assert_eq!(d("dev/fifo").mode() & 0o7777, 0o620);
        assert!(d("dev/fifo").file_type().is_fifo());
        assert_eq!(
            xattr::get(dst.join("etc/motd"), "user.chbuild").unwrap(),
            Some(b"yes".to_vec())
        );
        assert_eq!(
            xattr::get(dst.join("etc"), "user.dir").unwrap(),
            Some(b"d".to_vec())
        );
        assert_eq!((d("etc").mtime(), d("etc").mtime_nsec()), (1000, 7));
        assert_eq!(
            fs::read_link(dst.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        if super::super::is_root() {
            assert_eq!((d("etc/su").uid(), d("etc/su").gid()), (12, 34));
            assert_eq!(
                xattr::get(dst.join("etc/su"), "security.capability").unwrap(),
                Some(CAP_NET_RAW.to_vec())
            );
            assert!(d("dev/null").file_type().is_char_device());
            assert_eq!(d("dev/null").rdev(), s("dev/null").rdev());
            assert_eq!((d("bin").uid(), d("bin").gid()), (5, 6));
        }
        // Appending in a copied area never reaches the source.
        use std::io::Write;
        fs::OpenOptions::new()
            .append(true)
            .open(dst.join("etc/motd"))
            .unwrap()
            .write_all(b"!")
            .unwrap();
        assert_eq!(fs::read_to_string(src.join("etc/motd")).unwrap(), "hello");
        assert!(copy_tree(&src, &dst, &LinkPolicy::copy_all()).is_err());
    }

    #[test]
    fn copy_all_shares_nothing_and_skips_sockets() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("usr")).unwrap();
        fs::write(src.join("usr/f"), "f").unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
        let dst = t.path().join("dst");
        let stats = copy_tree(&src, &dst, &LinkPolicy::copy_all()).unwrap();
        assert_eq!(stats.linked, 0);
        assert_ne!(
            fs::metadata(dst.join("usr/f")).unwrap().ino(),
            fs::metadata(src.join("usr/f")).unwrap().ino()
        );
        assert!(dst.join("sock").symlink_metadata().is_err());
        // A file named like a linked directory, at the top, is copied.
        assert!(!LinkPolicy::link_top(["usr"]).links(Path::new("usr")));
        assert!(LinkPolicy::link_top(["usr"]).links(Path::new("usr/f")));
        // Below a binaries directory, text files stay private.
        let p = LinkPolicy::link_top(["usr"]).and_binaries_under("boot");
        assert!(p.links(Path::new("boot/firmware/vmlinuz-6.1.0-50-arm64")));
        assert!(p.links(Path::new("boot/firmware/overlays/a.dtbo")));
        assert!(!p.links(Path::new("boot/firmware/config.txt")));
        assert!(!p.links(Path::new("boot/firmware/CMDLINE.TXT")));
        assert!(!p.links(Path::new("boot")));
        assert!(!p.links(Path::new("etc/boot/x")));
    }
}
