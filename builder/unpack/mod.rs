//! The one safe way to unpack an archive (untrusted input) under a root
//! directory without ever leaving it: the store ingests bases with it and
//! deploy stages tarballs with it. Owners, modes (setuid too), xattrs,
//! hardlinks, symlinks, device nodes, FIFOs and mtimes (with pax
//! sub-seconds) survive.
//!
//! Every entry name is normalized first (`..` and absolute names refused),
//! then its parent is resolved component by component: a component must be a
//! real directory (never a symlink), which is what `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` would enforce. Directories this
//! unpacker created or checked are remembered, so a rootfs with ten thousand
//! entries costs no extra `lstat` per entry. A directory is never replaced by
//! anything else, so a remembered directory stays a directory. The check and
//! the creation cannot be raced apart: the root is a new directory of this
//! process (a store `.tmp-*` entry, a deploy staging directory in a
//! root-only directory) and the archive, the only other party, acts one
//! entry at a time, through this code.
//!
//! Deploy may also *refresh* an old tree of its own instead of filling a new
//! directory ([`Unpacker::refresh`]): the old tree (a node's `pN.prev`,
//! renamed by deploy into its root-only staging name) is trusted no more
//! than the archive. Whatever of it the archive does not name again is
//! stale: a stale symlink or file where the archive needs a directory is
//! removed, never followed; a stale directory where the archive puts a file
//! is removed whole; what is left over at the end is pruned. A stale file,
//! symlink or device node that already is what the archive says (same
//! metadata and, for a file, the same bytes, compared as the archive
//! streams by) is kept as it is, and so is a directory's metadata: a
//! redeploy that changed one file writes that file, not the tree. A kept
//! file is never written into (it may be one inode with the live tree), and
//! a changed one is written as a new inode.
//!
//! Final components are created with calls that do not follow symlinks
//! (`O_CREAT|O_EXCL`, `symlink`, `link`, `mknod`, `lchown`, `lsetxattr`,
//! `lutimes`), and get their metadata in the order of
//! [`crate::fs::Attrs::apply`]. Directory metadata is applied last, deepest
//! first, because writing into a directory changes its mtime (and a
//! read-only directory could not be written into at all).

mod share;
mod tar_entries;

pub use share::{Donors, ShareStats};
pub use tar_entries::{unpack_tar, unpack_tar_with, Entry};

use anyhow::{bail, Context, Result};
use filetime::FileTime;
use nix::sys::stat::{Mode, SFlag};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// What an archive entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

/// Metadata of one entry, as the archive gives it.
#[derive(Debug, Clone)]
pub struct Attrs {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Attrs {
    /// As the file system applies them (numeric owners are 32 bits there).
    fn to_fs(&self) -> crate::fs::Attrs {
        crate::fs::Attrs {
            uid: self.uid as u32,
            gid: self.gid as u32,
            mode: self.mode & 0o7777,
            mtime: FileTime::from_unix_time(self.mtime, self.mtime_nsec),
            xattrs: self
                .xattrs
                .iter()
                .map(|(k, v)| (k.into(), v.clone()))
                .collect(),
        }
    }
}

/// Things an unprivileged unpack had to leave out, reported once at the end.
#[derive(Debug, Default, Clone)]
pub struct Skipped {
    pub devices: u64,
    pub xattrs: u64,
}

pub struct Unpacker {
    root: PathBuf,
    dirs: HashSet<PathBuf>,
    deferred: Vec<(PathBuf, Attrs)>,
    privileged: bool,
    buf: Vec<u8>,
    /// Trees whose identical files are linked instead of written.
    donors: Option<Donors>,
    /// The donor's bytes, compared with `buf`.
    theirs: Vec<u8>,
    /// Refreshing an old tree: its root, and every non-directory path this
    /// archive wrote or kept (directories are in `dirs`).
    refresh: Option<(OwnedFd, HashSet<PathBuf>)>,
    pub skipped: Skipped,
}

/// Turn an entry name into a relative path with only normal components.
/// `./` and `.` components are dropped; the root itself becomes "".
pub fn normalize(name: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                bail!("`..` in the name would leave the tree")
            }
            Component::RootDir | Component::Prefix(_) => {
                bail!("absolute names are refused")
            }
        }
    }
    Ok(out)
}

impl Unpacker {
    /// `root` must be a new, empty directory owned by this process.
    pub fn new(root: &Path) -> Unpacker {
        let mut dirs = HashSet::new();
        dirs.insert(PathBuf::new());
        Unpacker {
            root: root.to_path_buf(),
            dirs,
            deferred: vec![],
            privileged: crate::fs::is_root(),
            buf: vec![0; 1 << 17],
            donors: None,
            theirs: Vec::new(),
            refresh: None,
            skipped: Skipped::default(),
        }
    }

    /// Bring the existing tree `root` (a directory of this process, in a
    /// directory only it writes) to exactly what the archive holds,
    /// writing only what differs (see the module's comment). `donors`
    /// says which paths may be shared; its trees are linked as by
    /// [`Unpacker::sharing`].
    pub fn refresh(root: &Path, donors: Donors) -> Result<Unpacker> {
        let fd = File::open(root).with_context(|| format!("opening {}", root.display()))?;
        let mut u = Unpacker::new(root).sharing(donors);
        u.refresh = Some((OwnedFd::from(fd), HashSet::new()));
        Ok(u)
    }

    /// A leftover of the old tree this archive has not named (refreshing
    /// only; in a new tree nothing is stale).
    fn stale(&self, rel: &Path) -> bool {
        self.refresh
            .as_ref()
            .is_some_and(|(_, seen)| !seen.contains(rel) && !self.dirs.contains(rel))
    }

    /// Note a non-directory the archive put (or kept) at `rel`.
    fn put(&mut self, rel: &Path) {
        if let Some((_, seen)) = self.refresh.as_mut() {
            seen.insert(rel.to_path_buf());
        }
    }

    fn kept(&mut self, size: u64) {
        if let Some(d) = self.donors.as_mut() {
            d.stats.kept += 1;
            d.stats.kept_bytes += size;
        }
    }

    /// Link a regular file to an identical one of these trees instead of
    /// writing it (see [`share`]).
    pub fn sharing(mut self, donors: Donors) -> Unpacker {
        self.donors = Some(donors);
        self
    }

    /// What was shared with donor trees so far.
    pub fn share_stats(&self) -> ShareStats {
        self.donors.as_ref().map(|d| d.stats).unwrap_or_default()
    }

    /// Make sure every parent component of `rel` is a real directory under
    /// the root, creating missing ones (as GNU tar does).
    fn prepare_parent(&mut self, rel: &Path, create: bool) -> Result<()> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        if self.dirs.contains(parent) {
            return Ok(());
        }
        let mut prefix = PathBuf::new();
        for c in parent.components() {
            prefix.push(c);
            if self.dirs.contains(&prefix) {
                continue;
            }
            let full = self.root.join(&prefix);
            match fs::symlink_metadata(&full) {
                Ok(md) if md.file_type().is_dir() => {}
                // The old tree's file or symlink where this archive needs
                // a directory: removed, never followed.
                Ok(_) if create && self.stale(&prefix) => {
                    fs::remove_file(&full)
                        .with_context(|| format!("removing {}", full.display()))?;
                    fs::create_dir(&full)
                        .with_context(|| format!("creating {}", full.display()))?;
                }
                Ok(md) if md.file_type().is_symlink() => bail!(
                    "`{}` is a symbolic link: writing through it could leave the tree",
                    prefix.display()
                ),
                Ok(_) => bail!("`{}` is not a directory", prefix.display()),
                Err(e) if e.kind() == ErrorKind::NotFound && create => {
                    fs::create_dir(&full)
                        .with_context(|| format!("creating {}", full.display()))?;
                }
                Err(e) => return Err(e).with_context(|| format!("inspecting {}", full.display())),
            }
            self.dirs.insert(prefix.clone());
        }
        Ok(())
    }

    /// Clear the way for a non-directory at `full`: an earlier entry of the
    /// same name is replaced, but never a directory of this archive (a
    /// stale one of a refreshed tree goes, with what it holds).
    fn remove_existing(&self, rel: &Path) -> Result<()> {
        let full = self.root.join(rel);
        match fs::symlink_metadata(&full) {
            Ok(md) if md.file_type().is_dir() && self.stale(rel) => {
                // remove_dir_all does not follow symlinks inside.
                fs::remove_dir_all(&full).with_context(|| format!("removing {}", full.display()))
            }
            Ok(md) if md.file_type().is_dir() => {
                bail!("it would replace the directory `{}`", rel.display())
            }
            Ok(_) => fs::remove_file(&full).with_context(|| format!("removing {}", full.display())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("inspecting {}", full.display())),
        }
    }

    pub fn directory(&mut self, rel: &Path, attrs: Attrs) -> Result<()> {
        if !rel.as_os_str().is_empty() {
            self.prepare_parent(rel, true)?;
            let full = self.root.join(rel);
            if !self.dirs.contains(rel) {
                match fs::create_dir(&full) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        let md = fs::symlink_metadata(&full)
                            .with_context(|| format!("inspecting {}", full.display()))?;
                        if !md.file_type().is_dir() {
                            self.remove_existing(rel)?;
                            fs::create_dir(&full)
                                .with_context(|| format!("creating {}", full.display()))?;
                        }
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("creating {}", full.display()))
                    }
                }
                self.dirs.insert(rel.to_path_buf());
            }
        }
        self.deferred.push((rel.to_path_buf(), attrs));
        Ok(())
    }

    pub fn file(
        &mut self,
        rel: &Path,
        attrs: &Attrs,
        size: u64,
        data: &mut impl Read,
    ) -> Result<()> {
        self.prepare_parent(rel, true)?;
        let full = self.root.join(rel);
        // A donor's copy, how many leading bytes of it match the archive,
        // and how many bytes of `buf` (read from the archive) follow them.
        let mut start: Option<(File, u64, usize)> = None;
        // Refreshing: the old tree's own file at this path comes first.
        let own = match (&self.refresh, &self.donors) {
            (Some((root, _)), Some(d)) if self.stale(rel) => d.own(root, rel, attrs, size),
            _ => None,
        };
        let candidate = match own {
            Some(f) => {
                let (matched, pending) =
                    share::compare(&f, data, size, &mut self.buf, &mut self.theirs)?;
                if pending.is_none() {
                    self.put(rel);
                    self.kept(size);
                    return Ok(());
                }
                start = Some((f, matched, pending.unwrap_or(0)));
                None
            }
            None => self
                .donors
                .as_ref()
                .and_then(|d| d.candidate(rel, attrs, size)),
        };
        if let Some(donor) = candidate {
            let (matched, pending) =
                share::compare(&donor, data, size, &mut self.buf, &mut self.theirs)?;
            match pending {
                None => {
                    let linked = match share::link_open(&donor, &full) {
                        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                            self.remove_existing(rel)?;
                            share::link_open(&donor, &full)
                        }
                        r => r,
                    };
                    match linked {
                        Ok(()) => {
                            if let Some(d) = self.donors.as_mut() {
                                d.counted(size);
                            }
                            self.put(rel);
                            return Ok(());
                        }
                        // Another file system, or the inode's link limit:
                        // write the (identical) bytes instead.
                        Err(e) => {
                            tracing::debug!("not sharing {}: {e}", full.display());
                            start = Some((donor, matched, 0));
                        }
                    }
                }
                Some(n) => start = Some((donor, matched, n)),
            }
        }
        let open = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&full)
        };
        let mut f = match open() {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                self.remove_existing(rel)?;
                open()
            }
            r => r,
        }
        .with_context(|| format!("creating {}", full.display()))?;
        let mut copied = 0u64;
        if let Some((donor, matched, pending)) = start {
            // The archive's bytes already read: the donor's matching
            // prefix, then the chunk that differed.
            let mut pos = 0u64;
            self.theirs.resize(self.buf.len(), 0);
            while pos < matched {
                let n = (matched - pos).min(self.theirs.len() as u64) as usize;
                donor
                    .read_exact_at(&mut self.theirs[..n], pos)
                    .context("reading a donor file")?;
                f.write_all(&self.theirs[..n])
                    .with_context(|| format!("writing {}", full.display()))?;
                pos += n as u64;
            }
            f.write_all(&self.buf[..pending])
                .with_context(|| format!("writing {}", full.display()))?;
            copied = matched + pending as u64;
        }
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) if copied < size => {
                    bail!("the archive ends inside this file ({copied} of {size} bytes)")
                }
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("reading the archive"),
            };
            f.write_all(&self.buf[..n])
                .with_context(|| format!("writing {}", full.display()))?;
            copied += n as u64;
        }
        self.skipped.xattrs += attrs.to_fs().apply_to_file(&f, &full)?;
        self.put(rel);
        Ok(())
    }

    pub fn symlink(&mut self, rel: &Path, target: &Path, attrs: &Attrs) -> Result<()> {
        self.prepare_parent(rel, true)?;
        let full = self.root.join(rel);
        if self.stale(rel) {
            let same = fs::symlink_metadata(&full).is_ok_and(|md| {
                md.file_type().is_symlink()
                    && fs::read_link(&full).is_ok_and(|t| t == target)
                    && same_node(&md, attrs, false, || crate::fs::read_xattrs(&full))
            });
            if same {
                self.put(rel);
                return Ok(());
            }
        }
        let r = match std::os::unix::fs::symlink(target, &full) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                self.remove_existing(rel)?;
                std::os::unix::fs::symlink(target, &full)
            }
            r => r,
        };
        r.with_context(|| format!("creating the symlink {}", full.display()))?;
        self.put(rel);
        self.finish_node(&full, attrs, true)
    }

    /// A hardlink to an earlier entry; the target must be a non-directory
    /// reached without symlinks in its parents, inside the tree.
    pub fn hardlink(&mut self, rel: &Path, target: &Path) -> Result<()> {
        let target = normalize(target).context("hardlink target")?;
        self.prepare_parent(&target, false)
            .context("hardlink target")?;
        if self.stale(&target) {
            // What a refreshed tree had there before is not this archive's.
            bail!("hardlink target `{}` is not in the tree", target.display());
        }
        let from = self.root.join(&target);
        match fs::symlink_metadata(&from) {
            Ok(md) if md.file_type().is_dir() => {
                bail!("hardlink target `{}` is a directory", target.display())
            }
            Ok(_) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("hardlink target `{}` is not in the tree", target.display())
                })
            }
        }
        self.prepare_parent(rel, true)?;
        let full = self.root.join(rel);
        if self.stale(rel) {
            let ino = |p: &Path| {
                fs::symlink_metadata(p)
                    .ok()
                    .map(|m| (m.dev(), m.ino(), m.is_dir()))
            };
            if ino(&full).is_some_and(|i| !i.2 && Some(i) == ino(&from)) {
                self.put(rel);
                return Ok(());
            }
        }
        // link(2) does not follow a symlink given as the target.
        let r = match fs::hard_link(&from, &full) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                self.remove_existing(rel)?;
                fs::hard_link(&from, &full)
            }
            r => r,
        };
        r.with_context(|| format!("linking {} to {}", full.display(), from.display()))?;
        self.put(rel);
        Ok(())
    }

    pub fn special(
        &mut self,
        rel: &Path,
        kind: EntryKind,
        rdev: (u32, u32),
        attrs: &Attrs,
    ) -> Result<()> {
        self.prepare_parent(rel, true)?;
        let full = self.root.join(rel);
        if self.stale(rel) {
            let want = match kind {
                EntryKind::Char => SFlag::S_IFCHR.bits(),
                EntryKind::Block => SFlag::S_IFBLK.bits(),
                _ => SFlag::S_IFIFO.bits(),
            };
            let rdev = if kind == EntryKind::Fifo {
                0
            } else {
                nix::sys::stat::makedev(rdev.0.into(), rdev.1.into())
            };
            let same = fs::symlink_metadata(&full).is_ok_and(|md| {
                md.mode() & libc::S_IFMT == want
                    && md.rdev() == rdev
                    && same_node(&md, attrs, true, || crate::fs::read_xattrs(&full))
            });
            if same {
                self.put(rel);
                return Ok(());
            }
        }
        // 0600 until the owner is set; the mode comes after it.
        let perm = Mode::from_bits_truncate(0o600);
        let make = || match kind {
            EntryKind::Fifo => nix::unistd::mkfifo(&full, perm),
            EntryKind::Char | EntryKind::Block => nix::sys::stat::mknod(
                &full,
                if kind == EntryKind::Char {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                },
                perm,
                nix::sys::stat::makedev(rdev.0.into(), rdev.1.into()),
            ),
            _ => unreachable!("special() is only called for devices and fifos"),
        };
        let r = match make() {
            Err(nix::errno::Errno::EEXIST) => {
                self.remove_existing(rel)?;
                make()
            }
            r => r,
        };
        match r {
            Ok(()) => {}
            Err(nix::errno::Errno::EPERM) if !self.privileged && kind != EntryKind::Fifo => {
                // Only root may make device nodes; the manifest still lists it.
                self.skipped.devices += 1;
                self.put(rel);
                return Ok(());
            }
            Err(e) => {
                return Err(io::Error::from(e))
                    .with_context(|| format!("creating {}", full.display()))
            }
        }
        self.put(rel);
        self.finish_node(&full, attrs, false)
    }

    /// Metadata of a node created by path (the node was just created by
    /// us, so only a symlink needs care: nothing follows it).
    fn finish_node(&mut self, full: &Path, attrs: &Attrs, symlink: bool) -> Result<()> {
        self.skipped.xattrs += attrs.to_fs().apply(full, symlink)?;
        Ok(())
    }

    /// Prune what a refreshed tree had beyond the archive, apply directory
    /// metadata, deepest first, then return what was shared and skipped.
    pub fn finish(mut self) -> Result<(ShareStats, Skipped)> {
        if self.refresh.is_some() {
            self.prune()?;
        }
        let mut deferred = std::mem::take(&mut self.deferred);
        // Stable sort: a directory listed twice gets its last entry's attrs.
        deferred.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.components().count()));
        for (rel, attrs) in &deferred {
            let full = self.root.join(rel);
            (|| {
                if self.refresh.is_some() {
                    let md = fs::symlink_metadata(&full)
                        .with_context(|| format!("inspecting {}", full.display()))?;
                    // Read once: to compare, then to drop what is stale.
                    let have = crate::fs::read_xattrs(&full)?;
                    if same_inode_fields(&md, attrs, true) && same_xattrs(&have, attrs) {
                        return Ok(());
                    }
                    // Names the archive does not give go; the rest is set.
                    for (name, _) in have {
                        if !attrs
                            .xattrs
                            .iter()
                            .any(|(n, _)| std::ffi::OsStr::new(n) == name)
                        {
                            let _ = xattr::remove(&full, &name);
                        }
                    }
                }
                self.finish_node(&full, attrs, false)
            })()
            .with_context(|| format!("entry `{}`", display_name(rel)))?;
        }
        Ok((self.share_stats(), self.skipped))
    }

    /// Remove every entry of a refreshed tree this archive did not name.
    /// Every directory of the new tree is in `dirs` (checked to be one),
    /// so listing each of them finds every leftover, and nothing else
    /// writes in the tree, so paths below them are safe to use.
    fn prune(&mut self) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let mut pruned = 0;
        let dirs: Vec<PathBuf> = self.dirs.iter().cloned().collect();
        for rel in dirs {
            let full = self.root.join(&rel);
            let listing = || -> io::Result<Vec<PathBuf>> {
                let fd = open_dir_noatime(&full)?;
                let mut out = vec![];
                for e in rustix::fs::Dir::read_from(&fd)? {
                    let name = e?.file_name().to_bytes().to_vec();
                    if name != b"." && name != b".." {
                        out.push(rel.join(std::ffi::OsStr::from_bytes(&name)));
                    }
                }
                Ok(out)
            };
            let names = listing().with_context(|| format!("listing {}", full.display()))?;
            for child in names.into_iter().filter(|c| self.stale(c)) {
                let path = self.root.join(&child);
                let md = fs::symlink_metadata(&path)
                    .with_context(|| format!("inspecting {}", path.display()))?;
                let r = if md.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                r.with_context(|| format!("removing {}", path.display()))?;
                pruned += 1;
            }
        }
        if let Some(d) = self.donors.as_mut() {
            d.stats.pruned += pruned;
        }
        Ok(())
    }
}

/// Open a directory to list it without setting its atime: under relatime
/// the first listing of a directory whose atime is its mtime (as unpacked)
/// would write its inode back, for every directory of the tree. Only the
/// owner or root may ask for that; anyone else lists without.
fn open_dir_noatime(path: &Path) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::open(path, flags | OFlags::NOATIME, Mode::empty())
        .or_else(|_| rustix::fs::open(path, flags, Mode::empty()))
        .map_err(io::Error::from)
}

/// Whether an existing node already has what the archive gives it (the
/// refresh keeps it then, and the sharing unpacker links it): owner,
/// mtime, permission bits (with `mode`: a symlink's mean nothing) and
/// exactly the archive's xattrs, read by `xattrs` only when the rest
/// matches. Type, size and content are the caller's to compare.
fn same_node(
    md: &fs::Metadata,
    attrs: &Attrs,
    mode: bool,
    xattrs: impl FnOnce() -> Result<Vec<(OsString, Vec<u8>)>>,
) -> bool {
    same_inode_fields(md, attrs, mode) && xattrs().is_ok_and(|have| same_xattrs(&have, attrs))
}

fn same_inode_fields(md: &fs::Metadata, attrs: &Attrs, mode: bool) -> bool {
    u64::from(md.uid()) == attrs.uid
        && u64::from(md.gid()) == attrs.gid
        && (!mode || md.mode() & 0o7777 == attrs.mode & 0o7777)
        && md.mtime() == attrs.mtime
        && md.mtime_nsec() == i64::from(attrs.mtime_nsec)
}

/// `have` (sorted, as `crate::fs::read_xattrs` gives it) is exactly the
/// archive's.
fn same_xattrs(have: &[(OsString, Vec<u8>)], attrs: &Attrs) -> bool {
    let mut want: Vec<(OsString, &[u8])> = attrs
        .xattrs
        .iter()
        .map(|(n, v)| (OsString::from(n), v.as_slice()))
        .collect();
    want.sort();
    have.iter()
        .map(|(n, v)| (n, v.as_slice()))
        .eq(want.iter().map(|(n, v)| (n, *v)))
}

pub fn display_name(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        ".".into()
    } else {
        rel.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(12);
        h.set_gid(34);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }

    fn unpack(data: Vec<u8>, root: &Path) -> Result<Vec<Entry>> {
        fs::create_dir(root).unwrap();
        let mut seen = vec![];
        unpack_tar(
            &mut tar::Archive::new(&data[..]),
            root,
            Path::new("t.tar"),
            |e| {
                seen.push(e);
                Ok(())
            },
        )?;
        Ok(seen)
    }

    /// Refresh the existing tree `root` to the archive, sharing nothing.
    fn refresh(data: Vec<u8>, root: &Path) -> Result<ShareStats> {
        let donors = Donors::open(&[], crate::fs::LinkPolicy::copy_all()).unwrap();
        let ar = &mut tar::Archive::new(&data[..]);
        unpack_tar_with(
            Unpacker::refresh(root, donors)?,
            ar,
            Path::new("t.tar"),
            |_| Ok(()),
        )
    }

    #[test]
    fn everything_survives_unpacking() {
        use tar::EntryType as T;
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut header(T::Directory, 0o750, 0), "./", io::empty())
            .unwrap();
        b.append_pax_extensions([
            ("SCHILY.xattr.user.k", &b"v"[..]),
            ("mtime", &b"1700000001.5"[..]),
        ])
        .unwrap();
        b.append_data(&mut header(T::Regular, 0o4755, 2), "./bin/su", &b"su"[..])
            .unwrap();
        b.append_link(&mut header(T::Link, 0o4755, 0), "./bin/su2", "bin/su")
            .unwrap();
        b.append_link(&mut header(T::Symlink, 0o777, 0), "./sh", "/bin/su")
            .unwrap();
        b.append_data(&mut header(T::Fifo, 0o620, 0), "./run/fifo", io::empty())
            .unwrap();
        let mut dev = header(T::Char, 0o666, 0);
        dev.set_device_major(1).unwrap();
        dev.set_device_minor(3).unwrap();
        b.append_data(&mut dev, "./dev/null", io::empty()).unwrap();
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let seen = unpack(b.into_inner().unwrap(), &root).unwrap();
        let kinds: Vec<_> = seen.iter().map(|e| e.kind).collect();
        use EntryKind as K;
        assert_eq!(
            kinds,
            [K::Dir, K::File, K::Hardlink, K::Symlink, K::Fifo, K::Char]
        );
        let m = |p: &str| root.join(p).symlink_metadata().unwrap();
        assert_eq!(m("bin/su").mode() & 0o7777, 0o4755);
        assert_eq!(
            (m("bin/su").mtime(), m("bin/su").mtime_nsec()),
            (1_700_000_001, 500_000_000)
        );
        assert_eq!(m("bin/su").ino(), m("bin/su2").ino());
        assert_eq!(
            xattr::get(root.join("bin/su"), "user.k").unwrap(),
            Some(b"v".to_vec())
        );
        assert_eq!(
            fs::read_link(root.join("sh")).unwrap(),
            Path::new("/bin/su")
        );
        assert!(m("run/fifo").file_type().is_fifo());
        assert_eq!(m("run/fifo").mode() & 0o7777, 0o620);
        assert_eq!(m("").mode() & 0o7777, 0o750);
        assert_eq!(m("").mtime(), 1_700_000_000);
        if crate::fs::is_root() {
            assert_eq!((m("bin/su").uid(), m("bin/su").gid()), (12, 34));
            assert!(m("dev/null").file_type().is_char_device());
            assert_eq!(m("dev/null").rdev(), nix::sys::stat::makedev(1, 3));
        }
    }

    #[test]
    fn nothing_is_written_through_a_symlink() {
        use tar::EntryType as T;
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        for second in [T::Regular, T::Fifo, T::Directory, T::Symlink] {
            let mut b = tar::Builder::new(Vec::new());
            b.append_link(&mut header(T::Symlink, 0o777, 0), "./d", &outside)
                .unwrap();
            let mut h = header(second, 0o644, 0);
            if second == T::Symlink {
                b.append_link(&mut h, "./d/x", "/etc/passwd").unwrap();
            } else {
                b.append_data(&mut h, "./d/x", io::empty()).unwrap();
            }
            let root = t.path().join(format!("root-{second:?}"));
            let err = unpack(b.into_inner().unwrap(), &root).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains("archive entry `d/x` in t.tar"), "{msg}");
            assert!(msg.contains("is a symbolic link"), "{msg}");
            assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "{second:?}");
        }
    }

    #[test]
    fn identical_files_are_linked_to_donors_and_the_rest_written() {
        use tar::EntryType as T;
        let t = tempfile::tempdir().unwrap();
        let (uid, gid) = (
            u64::from(nix::unistd::geteuid().as_raw()),
            u64::from(nix::unistd::getegid().as_raw()),
        );
        // A file longer than the copy buffer that differs only at its end.
        let long: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut long_old = long.clone();
        *long_old.last_mut().unwrap() ^= 1;
        let files: [(&str, &[u8], &[u8]); 6] = [
            ("usr/same", b"same bytes", b"same bytes"),
            ("usr/differs", b"new!", b"old!"),
            ("usr/long", &long, &long_old),
            ("etc/same", b"private", b"private"),
            ("usr/lib/f", b"outside", b"outside"),
            // Same bytes, but the donor's has an xattr the entry lacks.
            ("usr/xattr", b"same bytes", b"same bytes"),
        ];
        let donor = t.path().join("donor");
        let outside = t.path().join("outside");
        fs::create_dir_all(donor.join("usr")).unwrap();
        fs::create_dir_all(donor.join("etc")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        // A node's own symlink must not lead the deploy out of its tree.
        std::os::unix::fs::symlink(&outside, donor.join("usr/lib")).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (name, new, old) in files {
            let mut h = header(T::Regular, 0o644, new.len() as u64);
            h.set_uid(uid);
            h.set_gid(gid);
            b.append_data(&mut h, name, new).unwrap();
            let at = match name {
                "usr/lib/f" => outside.join("f"),
                n => donor.join(n),
            };
            fs::write(&at, old).unwrap();
            fs::set_permissions(&at, fs::Permissions::from_mode(0o644)).unwrap();
            let when = FileTime::from_unix_time(1_700_000_000, 0);
            filetime::set_file_mtime(&at, when).unwrap();
        }
        xattr::set(donor.join("usr/xattr"), "user.extra", b"x").unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let data = b.into_inner().unwrap();
        let donors = Donors::open(
            &[t.path().join("missing"), donor.clone()],
            crate::fs::LinkPolicy::link_top(["usr"]),
        )
        .unwrap();
        let stats = unpack_tar_with(
            Unpacker::new(&root).sharing(donors),
            &mut tar::Archive::new(&data[..]),
            Path::new("t.tar"),
            |_| Ok(()),
        )
        .unwrap();
        let ino = |p: &Path| p.symlink_metadata().unwrap().ino();
        assert_eq!(ino(&root.join("usr/same")), ino(&donor.join("usr/same")));
        assert_eq!(stats.linked, 1);
        for (name, new, _) in files {
            assert_eq!(fs::read(root.join(name)).unwrap(), new, "{name}");
            if name != "usr/same" {
                assert_eq!(root.join(name).symlink_metadata().unwrap().nlink(), 1);
            }
        }
        assert_eq!(fs::read(donor.join("usr/differs")).unwrap(), b"old!");
    }

    /// Everything a tree holds, by path: kind, mode, owner, mtime, xattrs,
    /// bytes or target.
    fn snapshot(root: &Path) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        for e in walkdir::WalkDir::new(root).follow_links(false) {
            let e = e.unwrap();
            let m = e.path().symlink_metadata().unwrap();
            let what = if m.is_file() {
                format!("{:?}", fs::read(e.path()).unwrap())
            } else if m.file_type().is_symlink() {
                fs::read_link(e.path()).unwrap().display().to_string()
            } else {
                format!("rdev {}", m.rdev())
            };
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            out.insert(
                rel,
                format!(
                    "{:o} {}:{} {}.{} {:?} {what}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.mtime(),
                    m.mtime_nsec(),
                    crate::fs::read_xattrs(e.path()).unwrap()
                ),
            );
        }
        out
    }

    #[test]
    fn refresh_writes_what_differs_and_ends_as_a_fresh_unpack() {
        use tar::EntryType as T;
        let t = tempfile::tempdir().unwrap();
        let (uid, gid) = (
            u64::from(nix::unistd::geteuid().as_raw()),
            u64::from(nix::unistd::getegid().as_raw()),
        );
        let hdr = |kind, mode, size| {
            let mut h = header(kind, mode, size);
            h.set_uid(uid);
            h.set_gid(gid);
            h
        };
        let mut b = tar::Builder::new(Vec::new());
        for d in ["./", "usr/", "etc/", "var/", "var/log/", "run/"] {
            b.append_data(&mut hdr(T::Directory, 0o755, 0), d, io::empty())
                .unwrap();
        }
        let files: [(&str, &[u8]); 9] = [
            ("usr/same", b"same bytes"),
            ("usr/xattr", b"same bytes, an xattr more in the old tree"),
            ("usr/changed", b"new bytes"),
            ("usr/live", b"shared with the live tree"),
            ("usr/was-a-dir", b"a file now"),
            ("etc/same", b"private"),
            ("etc/linked", b"private, but one inode with the live tree"),
            ("etc/mode", b"same bytes, other mode"),
            ("var/log/x", b"below what was a symlink"),
        ];
        for (name, data) in files {
            b.append_data(&mut hdr(T::Regular, 0o644, data.len() as u64), name, data)
                .unwrap();
        }
        b.append_link(&mut hdr(T::Link, 0o644, 0), "usr/same2", "usr/same")
            .unwrap();
        b.append_link(&mut hdr(T::Symlink, 0o777, 0), "etc/keep", "/usr/same")
            .unwrap();
        b.append_link(&mut hdr(T::Symlink, 0o777, 0), "etc/retarget", "/new")
            .unwrap();
        b.append_data(&mut hdr(T::Fifo, 0o600, 0), "run/fifo", io::empty())
            .unwrap();
        let data = b.into_inner().unwrap();
        let archive = |root: &Path, refresh: bool| {
            let donors = Donors::open(&[], crate::fs::LinkPolicy::link_top(["usr"])).unwrap();
            let ar = &mut tar::Archive::new(&data[..]);
            let name = Path::new("t.tar");
            let unpacker = if refresh {
                Unpacker::refresh(root, donors)?
            } else {
                fs::create_dir(root).unwrap();
                Unpacker::new(root).sharing(donors)
            };
            unpack_tar_with(unpacker, ar, name, |_| Ok(()))
        };
        let fresh = t.path().join("fresh");
        archive(&fresh, false).unwrap();

        // The old tree: an earlier unpack of the same archive, then changed
        // the ways a node, an older build or a hostile one could leave it.
        let old = t.path().join("old");
        let live = t.path().join("live");
        let outside = t.path().join("outside");
        fs::create_dir_all(&live).unwrap();
        fs::create_dir_all(&outside).unwrap();
        archive(&old, false).unwrap();
        let o = |p: &str| old.join(p);
        let stamp = |p: &Path| {
            let when = FileTime::from_unix_time(1_700_000_000, 0);
            filetime::set_symlink_file_times(p, when, when).unwrap();
        };
        fs::remove_file(o("usr/changed")).unwrap();
        fs::write(o("usr/changed"), b"old bytes").unwrap(); // same size
        fs::set_permissions(o("usr/changed"), fs::Permissions::from_mode(0o644)).unwrap();
        stamp(&o("usr/changed"));
        fs::hard_link(o("usr/live"), live.join("usr-live")).unwrap();
        fs::hard_link(o("etc/linked"), live.join("etc-linked")).unwrap();
        fs::set_permissions(o("etc/mode"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::remove_file(o("usr/was-a-dir")).unwrap();
        fs::create_dir_all(o("usr/was-a-dir/deep")).unwrap();
        fs::write(o("usr/was-a-dir/deep/f"), b"stale").unwrap();
        fs::remove_dir_all(o("var/log")).unwrap();
        std::os::unix::fs::symlink(&outside, o("var/log")).unwrap();
        fs::remove_file(o("etc/retarget")).unwrap();
        std::os::unix::fs::symlink("/old", o("etc/retarget")).unwrap();
        fs::write(o("usr/gone"), b"no longer in the archive").unwrap();
        fs::create_dir_all(o("olddir/sub")).unwrap();
        std::os::unix::fs::symlink(&outside, o("olddir/sub/out")).unwrap();
        xattr::set(o("etc"), "user.stale", b"x").unwrap();
        xattr::set(o("usr/xattr"), "user.stale", b"x").unwrap();
        let ino = |p: &Path| p.symlink_metadata().unwrap().ino();
        let kept =
            ["usr/same", "usr/live", "etc/same", "etc/keep", "run/fifo"].map(|p| (p, ino(&o(p))));

        // As unpacked, atime is mtime: under relatime a plain read or
        // listing would set it (and write the inode back).
        let atime = |p: &str| o(p).symlink_metadata().unwrap().atime();
        let atimes = ["usr/same", "run", "etc/same"].map(|p| (p, atime(p)));

        let stats = archive(&old, true).unwrap();
        for (p, a) in atimes {
            assert_eq!(atime(p), a, "{p}: comparing changed its atime");
        }
        assert_eq!(snapshot(&old), snapshot(&fresh));
        for (p, i) in kept {
            assert_eq!(ino(&o(p)), i, "{p} was rewritten");
        }
        assert_eq!(ino(&o("usr/same2")), ino(&o("usr/same")));
        // Files one inode with the live tree: a shareable one kept, a
        // private one written anew; the live tree's are untouched.
        assert_eq!(ino(&o("usr/live")), ino(&live.join("usr-live")));
        assert_ne!(ino(&o("etc/linked")), ino(&live.join("etc-linked")));
        assert_eq!(
            fs::read(live.join("etc-linked")).unwrap(),
            b"private, but one inode with the live tree"
        );
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        assert_eq!((stats.kept, stats.linked), (3, 0), "{stats:?}");
        assert_eq!(stats.pruned, 2, "{stats:?}"); // usr/gone, olddir
    }

    #[test]
    fn refresh_still_refuses_writing_through_the_archives_own_symlink() {
        use tar::EntryType as T;
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        let root = t.path().join("root");
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir_all(root.join("d")).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        b.append_link(&mut header(T::Symlink, 0o777, 0), "./d", &outside)
            .unwrap();
        b.append_data(&mut header(T::Regular, 0o644, 1), "./d/x", &b"x"[..])
            .unwrap();
        let err = refresh(b.into_inner().unwrap(), &root).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("archive entry `d/x` in t.tar"), "{msg}");
        assert!(msg.contains("is a symbolic link"), "{msg}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn refresh_replaces_an_old_symlink_where_a_parent_is_implied() {
        use tar::EntryType as T;
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        let root = t.path().join("root");
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir_all(root.join("a")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/b")).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        // No directory entries: `a/b` is only implied by the file's name.
        b.append_data(&mut header(T::Regular, 0o644, 1), "a/b/f", &b"x"[..])
            .unwrap();
        refresh(b.into_inner().unwrap(), &root).unwrap();
        assert!(root.join("a/b").symlink_metadata().unwrap().is_dir());
        assert_eq!(fs::read(root.join("a/b/f")).unwrap(), b"x");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn normalize_refuses_escapes() {
        assert_eq!(normalize(Path::new("./a/./b")).unwrap(), Path::new("a/b"));
        assert_eq!(normalize(Path::new("./")).unwrap(), Path::new(""));
        assert!(normalize(Path::new("a/../../x")).is_err());
        assert!(normalize(Path::new("/etc/passwd")).is_err());
    }
}
