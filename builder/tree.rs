//! Compose a node tree from a stored base: hardlinks for the read-mostly
//! top-level directories, real copies (reflinks where the file system has
//! them) for everything a running node writes in place, so that a node
//! appending to a file can never change its siblings or the store.

use crate::fs::{copy_tree, CopyStats, LinkPolicy};
use anyhow::{Context, Result};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use walkdir::WalkDir;

/// Recreate `base` at `dest` (which must not exist). Files below the
/// top-level directories named in `link_dirs` are hardlinked to the base,
/// and so are the files below `boot/` but its text files (see
/// [`boot_policy`]); the rest is copied.
pub fn compose(base: &Path, dest: &Path, link_dirs: &[String]) -> Result<CopyStats> {
    copy_tree(
        base,
        dest,
        &dpkg_policy(boot_policy(LinkPolicy::link_top(link_dirs))),
    )
}

/// Share dpkg's per-package files (`var/lib/dpkg/info`: file lists,
/// md5sums, maintainer scripts; 8 MiB of the 11 MiB of a Zero's `var`).
/// dpkg never writes one in place: lists and other database files go
/// through its atomic-file helper (write `*-new`, then rename), and a
/// package's control members are extracted to a temporary directory and
/// renamed in. dpkg's lock files (`lock`, `lock-frontend`, `triggers/Lock`)
/// live outside `info/` and stay private: on NFS roots a shared lock inode
/// would make one node's apt wait for another's.
pub fn dpkg_policy(p: LinkPolicy) -> LinkPolicy {
    p.and_subtree("var/lib/dpkg/info")
}

/// Share `boot/` (kernel, initramfs, device trees, Pi firmware: 61 MiB of
/// the 79 MiB a Zero's tree would copy) but its `*.txt`.
///
/// Who writes there, and how:
/// - in a built tree, only chbuild: overlays (`cmdline.txt`, `userconf.txt`)
///   and the SD image's `cmdline.txt`/`fstab` fix-up write new inodes and
///   rename them into place, so a shared inode is never opened for writing;
/// - `/boot/vmlinuz-*` and `/boot/initrd.img-*` are replaced by rename on a
///   node too (dpkg unpacks beside and renames; update-initramfs writes
///   `initrd.img-*.new` and renames it);
/// - but on a running node raspi-firmware writes `/boot/firmware` in place:
///   its postinst and its kernel and initramfs hooks `cp` the firmware,
///   kernel, initramfs and device trees over the existing files, and
///   `config.txt`/`cmdline.txt` are rewritten with `cat >`. Text files stay
///   private here for that reason; the rest is shared only in built trees,
///   which no node runs: a deploy gives each node its own inodes for them
///   or breaks the link before raspi-firmware writes (see `deploy`).
pub fn boot_policy(p: LinkPolicy) -> LinkPolicy {
    p.and_binaries_under("boot")
}

/// Bring every mtime newer than `epoch` down to it, so the tree (and any
/// file system made from it) is reproducible. Only inodes private to this
/// tree are touched: a file shared with the store or siblings keeps its
/// base time, which the archive writers clamp on their side. Returns the
/// number of regular files, counted on the way (one walk, not two).
pub fn clamp_mtimes(tree: &Path, epoch: i64) -> Result<u64> {
    let limit = filetime::FileTime::from_unix_time(epoch, 0);
    let mut files = 0;
    for entry in WalkDir::new(tree).follow_links(false).contents_first(true) {
        let entry = entry.with_context(|| format!("walking {}", tree.display()))?;
        let meta = entry
            .path()
            .symlink_metadata()
            .with_context(|| format!("reading {}", entry.path().display()))?;
        files += u64::from(meta.is_file());
        if meta.mtime() > epoch && (meta.is_dir() || meta.nlink() == 1) {
            filetime::set_symlink_file_times(entry.path(), limit, limit)
                .with_context(|| format!("setting times of {}", entry.path().display()))?;
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn linked_dirs_share_inodes_and_copied_dirs_do_not() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base");
        fs::create_dir_all(base.join("usr/bin")).unwrap();
        fs::create_dir_all(base.join("etc")).unwrap();
        fs::write(base.join("usr/bin/tool"), "tool").unwrap();
        fs::write(base.join("etc/motd"), "hello").unwrap();
        fs::hard_link(base.join("etc/motd"), base.join("etc/motd2")).unwrap();
        fs::create_dir_all(base.join("boot/firmware")).unwrap();
        fs::write(base.join("boot/firmware/kernel8.img"), "kernel").unwrap();
        fs::write(base.join("boot/firmware/config.txt"), "arm_64bit=1").unwrap();
        fs::create_dir_all(base.join("var/lib/dpkg/info")).unwrap();
        fs::write(base.join("var/lib/dpkg/info/tool.list"), "/usr/bin/tool").unwrap();
        fs::write(base.join("var/lib/dpkg/status"), "Package: tool").unwrap();
        fs::write(base.join("var/lib/dpkg/lock"), "").unwrap();
        std::os::unix::fs::symlink("usr/bin", base.join("bin")).unwrap();
        let a = t.path().join("a");
        let stats = compose(&base, &a, &["usr".into(), "bin".into()]).unwrap();
        assert_eq!(stats.linked, 3);
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        // Boot binaries are shared, the text files raspi-firmware rewrites
        // in place are not.
        let kernel = "boot/firmware/kernel8.img";
        assert_eq!(ino(&a.join(kernel)), ino(&base.join(kernel)));
        let config = "boot/firmware/config.txt";
        assert_ne!(ino(&a.join(config)), ino(&base.join(config)));
        // dpkg's info files are shared; its status and locks are not.
        let list = "var/lib/dpkg/info/tool.list";
        assert_eq!(ino(&a.join(list)), ino(&base.join(list)));
        for p in ["var/lib/dpkg/status", "var/lib/dpkg/lock"] {
            assert_ne!(ino(&a.join(p)), ino(&base.join(p)), "{p}");
        }
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
