//! Staging: build the new tree as a hidden sibling of its target, keeping
//! owners, modes (setuid too), xattrs, times, symlinks, hard links and
//! device nodes. Files that a running Zero or `usbboot-init` may rewrite in
//! place are always copied; the rest is hard-linked when the source is on
//! the same file system, or, from a tarball, to the identical file of a
//! tree already deployed (so a deploy costs inodes, not gigabytes).

use crate::fs::{copy_tree, CopyStats, Durability, Inode, LinkPolicy};
use crate::unpack::EntryKind;
use anyhow::{Context, Result};
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Top-level directories whose files are shared by hard link: package
/// files, which dpkg replaces by rename and never rewrites in place.
/// Everything else (etc, var, home, boot...) is copied, because usbboot-init
/// and the running node write there in place, which would reach through a
/// hard link into the source tree; dpkg's `var/lib/dpkg/info` (see
/// [`crate::tree::dpkg_policy`]) and boot binaries when the tree protects
/// them (see [`UNSHARE_BOOT`]) are the exceptions.
const SHARED_TOP: &[&str] = &["usr", "opt", "bin", "sbin", "lib", "lib32", "lib64"];

/// A node tree that carries this (the `boot_unshare` overlay) breaks the
/// hard links of its boot files before raspi-firmware writes them in place
/// on the Zero (its postinst and kernel/initramfs hooks `cp` over them):
/// only then are the boot binaries shared too (61 MiB of a Zero's 79 MiB
/// of private files on the Pi base). Text files (`config.txt`,
/// `cmdline.txt`), which raspi-firmware and `usbboot-init` rewrite, stay
/// private copies whatever the tree carries.
pub const UNSHARE_BOOT: &str = "usr/local/sbin/chbuild-unshare-boot";

fn policy(link: bool, boot: bool) -> LinkPolicy {
    match (link, boot) {
        (false, _) => LinkPolicy::copy_all(),
        (true, false) => crate::tree::dpkg_policy(LinkPolicy::link_top(SHARED_TOP)),
        (true, true) => {
            crate::tree::dpkg_policy(crate::tree::boot_policy(LinkPolicy::link_top(SHARED_TOP)))
        }
    }
}

/// Populate `dst` (which must not exist) from the tree `src`: hard links
/// for shareable files when `link` is set, copies otherwise.
pub fn from_tree(src: &Path, dst: &Path, link: bool) -> Result<CopyStats> {
    copy_tree(src, dst, &policy(link, src.join(UNSHARE_BOOT).is_file()))
}

/// Populate `dst` (which must not exist) from a `.tar.zst`, through the
/// same safe unpacker as the store. A shareable file (the same policy as
/// [`from_tree`]) that one of the `donors` (the trees already deployed)
/// holds byte for byte, with the same owner, mode, mtime and xattrs, is
/// hard-linked to it instead of written: Zeros from one base share their
/// package files on the controller's card as they do on the build
/// machine, and a redeploy writes only what changed there.
///
/// With `refresh`, `dst` is an old tree of this node (its `pN.prev`,
/// renamed to the staging name) brought to the tarball's content in place:
/// what is already identical stays, only what differs is written, what the
/// tarball no longer has is removed (see [`crate::unpack::Unpacker::refresh`]).
/// On the controller's SD card a redeploy then writes what changed, not a
/// tree's worth of directories and inodes.
pub fn from_tarball(
    tarball: &Path,
    dst: &Path,
    donors: &[std::path::PathBuf],
    unshares_boot: bool,
    refresh: bool,
) -> Result<CopyStats> {
    let ctx = || format!("unpacking {}", tarball.display());
    let f = File::open(tarball).with_context(|| format!("opening {}", tarball.display()))?;
    let len = f.metadata().map(|m| m.len()).ok();
    let mut progress = crate::progress::Progress::bytes("unpacking", len);
    let counted = crate::progress::ProgressReader {
        inner: f,
        progress: &mut progress,
    };
    let mut dec = zstd::stream::read::Decoder::new(counted).with_context(ctx)?;
    dec.window_log_max(31).with_context(ctx)?;
    let mut ar = tar::Archive::new(dec);
    if !refresh {
        fs::create_dir(dst).with_context(|| format!("creating {}", dst.display()))?;
    }
    let mut stats = CopyStats::default();
    let donors = crate::unpack::Donors::open(donors, policy(true, unshares_boot))?;
    let each = |e: crate::unpack::Entry| {
        stats.entries += 1;
        match e.kind {
            EntryKind::File => {
                stats.copied += 1;
                stats.copied_bytes += e.size;
            }
            EntryKind::Dir => stats.dirs += 1,
            EntryKind::Char | EntryKind::Block | EntryKind::Fifo => stats.special += 1,
            EntryKind::Symlink | EntryKind::Hardlink => {}
        }
        Ok(())
    };
    let unpacker = if refresh {
        crate::unpack::Unpacker::refresh(dst, donors)?
    } else {
        crate::unpack::Unpacker::new(dst).sharing(donors)
    };
    let shared = crate::unpack::unpack_tar_with(unpacker, &mut ar, tarball, each)?;
    progress.finish();
    stats.linked = shared.linked;
    stats.kept = shared.kept;
    stats.pruned = shared.pruned;
    stats.copied -= shared.linked + shared.kept;
    stats.copied_bytes -= shared.linked_bytes + shared.kept_bytes;
    Ok(stats)
}

/// Bytes and inodes the staged tree will take: every file that is copied
/// (counted once per inode), and one inode per entry.
pub fn needed_space(src: &Path, link: bool) -> Result<(u64, u64)> {
    let links = policy(link, src.join(UNSHARE_BOOT).is_file());
    let mut seen = std::collections::HashSet::new();
    let (mut bytes, mut entries) = (0, 0);
    for e in walkdir::WalkDir::new(src).follow_links(false) {
        let e = e.with_context(|| format!("walking {}", src.display()))?;
        let m = e
            .path()
            .symlink_metadata()
            .with_context(|| format!("reading {}", e.path().display()))?;
        let rel = e.path().strip_prefix(src).expect("under the walk root");
        entries += 1;
        if m.is_file() && !links.links(rel) && seen.insert((m.dev(), m.ino())) {
            bytes += m.len();
        }
    }
    Ok((bytes, entries))
}

/// Replace a small file of a live (or about to be swapped) tree as a new
/// inode, keeping the owner and mode of the file it replaces (0644 root if
/// new). A rename also breaks any hard link, so the source tree is never
/// edited.
pub fn write_file_atomic(path: &Path, content: &[u8]) -> Result<()> {
    let old = path.symlink_metadata().ok();
    crate::fs::write_new(
        path,
        content,
        Inode::like(old.as_ref(), 0o644, Durability::Publish),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use filetime::FileTime;
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    use std::os::unix::fs::PermissionsExt;

    fn tree_with_everything(root: &Path) {
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("dev")).unwrap();
        fs::write(root.join("usr/bin/tool"), b"tool").unwrap();
        fs::set_permissions(
            root.join("usr/bin/tool"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool2")).unwrap();
        fs::write(root.join("etc/hostname"), b"z1\n").unwrap();
        fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
        fs::write(root.join("var/lib/dpkg/info/tool.list"), b"/usr/bin/tool\n").unwrap();
        fs::write(root.join("var/lib/dpkg/status"), b"Package: tool\n").unwrap();
        std::os::unix::fs::symlink("../usr/bin/tool", root.join("etc/link")).unwrap();
        nix::unistd::mkfifo(&root.join("dev/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        xattr::set(root.join("etc/hostname"), "user.chbuild", b"yes").unwrap();
        filetime::set_file_mtime(root.join("etc"), FileTime::from_unix_time(1000, 0)).unwrap();
        if nix::unistd::geteuid().is_root() {
            let mode = Mode::from_bits_truncate(0o666);
            mknod(&root.join("dev/null"), SFlag::S_IFCHR, mode, makedev(1, 3)).unwrap();
            std::os::unix::fs::lchown(root.join("etc/hostname"), Some(12), Some(34)).unwrap();
        }
    }

    #[test]
    fn copy_and_link_keep_everything() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        tree_with_everything(&src);
        for link in [false, true] {
            let dst = t.path().join(format!("dst-{link}"));
            let stats = from_tree(&src, &dst, link).unwrap();
            let a = super::super::listing::of_dir(&src, true).unwrap();
            let b = super::super::listing::of_dir(&dst, true).unwrap();
            assert_eq!(a, b, "link={link}");
            assert_eq!(stats.linked, if link { 3 } else { 0 });
            let m = |p: &str| dst.join(p).symlink_metadata().unwrap();
            assert_eq!(m("usr/bin/tool").ino(), m("usr/bin/tool2").ino());
            assert_eq!(m("etc").mtime(), 1000);
            assert_eq!(
                xattr::get(dst.join("etc/hostname"), "user.chbuild").unwrap(),
                Some(b"yes".to_vec())
            );
            // etc/ is copied even when linking: editing it leaves the source alone.
            assert_ne!(
                m("etc/hostname").ino(),
                src.join("etc/hostname").symlink_metadata().unwrap().ino()
            );
            // dpkg's info files are shared when linking, its status is not.
            let src_ino = |p: &str| src.join(p).symlink_metadata().unwrap().ino();
            let list = "var/lib/dpkg/info/tool.list";
            assert_eq!(m(list).ino() == src_ino(list), link);
            assert_ne!(
                m("var/lib/dpkg/status").ino(),
                src_ino("var/lib/dpkg/status")
            );
        }
    }

    #[test]
    fn tarball_cannot_create_nodes_through_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let me = nix::unistd::geteuid().as_raw() as u64;
        let header = || {
            let mut h = tar::Header::new_gnu();
            h.set_uid(me);
            h.set_gid(nix::unistd::getegid().as_raw() as u64);
            h.set_mtime(1);
            h
        };
        let mut h = header();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "./dev", &outside).unwrap();
        let mut h = header();
        h.set_entry_type(tar::EntryType::Fifo);
        h.set_size(0);
        h.set_mode(0o600);
        b.append_data(&mut h, "./dev/fifo", std::io::empty())
            .unwrap();
        let tarball = t.path().join("evil.tar.zst");
        fs::write(
            &tarball,
            zstd::encode_all(&b.into_inner().unwrap()[..], 1).unwrap(),
        )
        .unwrap();
        let err = from_tarball(&tarball, &t.path().join("dst"), &[], false, false).unwrap_err();
        assert!(format!("{err:#}").contains("is a symbolic link"), "{err:#}");
        assert!(!outside.join("fifo").exists());
    }

    #[test]
    fn atomic_write_keeps_mode_and_breaks_links() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        fs::write(&a, b"old").unwrap();
        fs::set_permissions(&a, fs::Permissions::from_mode(0o600)).unwrap();
        fs::hard_link(&a, t.path().join("b")).unwrap();
        write_file_atomic(&a, b"new").unwrap();
        assert_eq!(fs::read(&a).unwrap(), b"new");
        assert_eq!(fs::read(t.path().join("b")).unwrap(), b"old");
        assert_eq!(a.metadata().unwrap().mode() & 0o7777, 0o600);
    }
}
