//! Sharing an archive's files with trees already on disk instead of writing
//! them again: deploy stages a Zero's tarball next to the trees of the
//! other Zeros (and its own previous tree), which come from the same base,
//! so most of their package files are already there byte for byte. A file
//! is shared (hardlinked) only when a donor tree has it at the same path
//! with the same size, owner, mode, mtime and xattrs, and the same bytes,
//! compared while the archive streams by; whatever differs is written as
//! usual. Which paths may be shared at all is the caller's policy.
//!
//! Donor trees are not trusted more than the archive: a path is opened
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` below the donor's
//! root, so a symlink a node left in its own tree cannot lead outside it,
//! and the inode that was compared is the one linked (through its open
//! descriptor), not whatever the path names a moment later.

use super::Attrs;
use crate::fs::LinkPolicy;
use anyhow::{Context, Result};
use rustix::fs::{openat2, AtFlags, Mode, OFlags, ResolveFlags, CWD};
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Trees whose files a new tree may share, and which paths it may share.
pub struct Donors {
    roots: Vec<(PathBuf, OwnedFd)>,
    policy: LinkPolicy,
    pub stats: ShareStats,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ShareStats {
    /// Files hardlinked to a donor instead of written.
    pub linked: u64,
    pub linked_bytes: u64,
    /// Refreshing a tree: files left as they were (identical), and
    /// entries of the old tree the archive no longer has, removed.
    pub kept: u64,
    pub kept_bytes: u64,
    pub pruned: u64,
}

impl Donors {
    /// The existing directories of `roots`, in order of preference.
    pub fn open(roots: &[PathBuf], policy: LinkPolicy) -> Result<Donors> {
        let mut open = Vec::new();
        for r in roots {
            match File::open(r) {
                Ok(f) if f.metadata().map(|m| m.is_dir()).unwrap_or(false) => {
                    open.push((r.clone(), OwnedFd::from(f)))
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("opening {}", r.display())),
            }
        }
        Ok(Donors {
            roots: open,
            policy,
            stats: ShareStats::default(),
        })
    }

    /// A donor file that matches the entry's metadata, when the policy
    /// lets `rel` be shared.
    pub(super) fn candidate(&self, rel: &Path, attrs: &Attrs, size: u64) -> Option<File> {
        if !self.policy.links(rel) {
            return None;
        }
        self.roots.iter().find_map(|(_, dir)| {
            let f = open_regular(dir, rel)?;
            same_metadata(&f, rel, attrs, size).then_some(f)
        })
    }

    /// The file already at `rel` in the tree being refreshed (`root`), when
    /// it may stay as it is if its bytes match: same metadata, and either
    /// a path the policy shares or a file no other path links (a private
    /// file the node may write in place must not be one inode with
    /// anything else).
    pub(super) fn own(&self, root: &OwnedFd, rel: &Path, attrs: &Attrs, size: u64) -> Option<File> {
        let f = open_regular(root, rel)?;
        let shareable = self.policy.links(rel);
        let alone = f.metadata().is_ok_and(|m| m.nlink() == 1);
        (same_metadata(&f, rel, attrs, size) && (shareable || alone)).then_some(f)
    }

    pub(super) fn counted(&mut self, size: u64) {
        self.stats.linked += 1;
        self.stats.linked_bytes += size;
    }
}

/// Open the regular file at `rel` below `dir` for reading, never through
/// a symlink and never opening anything else: the path is first opened
/// `O_PATH` (which opens no device and waits on no FIFO a tree may hold
/// there), and only a regular file is then reopened through
/// `/proc/self/fd`, which opens that same inode.
pub(super) fn open_regular(dir: &OwnedFd, rel: &Path) -> Option<File> {
    let fd = openat2(
        dir,
        rel,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )
    .ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return None;
    }
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    // O_NOATIME: comparing must not dirty the inode. These files' atime is
    // their mtime (as unpacked), so under relatime the first read would
    // set it, writing every compared inode back to the card. Only the
    // owner or root may ask for it; anyone else reads without.
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(&path)
        .or_else(|_| File::open(&path))
        .ok()
}

/// A regular file of `size` bytes with the entry's owner, mode, mtime and
/// xattrs, all read through the descriptor that was opened.
fn same_metadata(f: &File, rel: &Path, attrs: &Attrs, size: u64) -> bool {
    f.metadata().is_ok_and(|m| {
        m.is_file()
            && m.len() == size
            && super::same_node(&m, attrs, true, || crate::fs::read_xattrs_of(f, rel))
    })
}

/// Compare the next `size` bytes of `data` with `donor`. Returns how many
/// leading bytes matched and, on a mismatch, the chunk of `data` that
/// differed (already consumed from `data`), so the caller can write the
/// file from the donor's matching prefix, that chunk and the rest of
/// `data`.
pub(super) fn compare(
    donor: &File,
    data: &mut impl Read,
    size: u64,
    buf: &mut [u8],
    theirs: &mut Vec<u8>,
) -> Result<(u64, Option<usize>)> {
    let mut pos = 0u64;
    loop {
        let n = match data.read(buf) {
            Ok(0) if pos < size => {
                anyhow::bail!("the archive ends inside this file ({pos} of {size} bytes)")
            }
            Ok(0) => return Ok((pos, None)),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the archive"),
        };
        theirs.resize(n, 0);
        let same = pos + n as u64 <= size
            && donor.read_exact_at(theirs, pos).is_ok()
            && theirs[..] == buf[..n];
        if !same {
            return Ok((pos, Some(n)));
        }
        pos += n as u64;
    }
}

/// Hardlink `donor` (an open descriptor) at `to`: through
/// `/proc/self/fd` with AT_SYMLINK_FOLLOW, which links the open inode
/// itself.
pub(super) fn link_open(donor: &File, to: &Path) -> std::io::Result<()> {
    let proc = format!("/proc/self/fd/{}", donor.as_raw_fd());
    rustix::fs::linkat(CWD, proc.as_str(), CWD, to, AtFlags::SYMLINK_FOLLOW)
        .map_err(std::io::Error::from)
}
