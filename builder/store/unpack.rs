//! Writing archive entries under a root directory without ever leaving it.
//!
//! Every entry name is normalized first (`..` and absolute names refused),
//! then its parent is resolved component by component: a component must be a
//! real directory (never a symlink), which is what `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` would enforce. Directories this
//! unpacker created or checked are remembered, so a rootfs with ten thousand
//! entries costs no extra `lstat` per entry. A directory is never replaced by
//! anything else, so a remembered directory stays a directory.
//!
//! Final components are created with calls that do not follow symlinks
//! (`O_CREAT|O_EXCL`, `symlink`, `link`, `mknod`, `lchown`, `lsetxattr`,
//! `lutimes`). Directory metadata is applied last, deepest first, because
//! writing into a directory changes its mtime (and a read-only directory
//! could not be written into at all).

use super::manifest::EntryKind;
use anyhow::{bail, Context, Result};
use filetime::FileTime;
use nix::sys::stat::{Mode, SFlag};
use std::collections::HashSet;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use xattr::FileExt;

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
    fn filetime(&self) -> FileTime {
        FileTime::from_unix_time(self.mtime, self.mtime_nsec)
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
            privileged: nix::unistd::geteuid().is_root(),
            buf: vec![0; 1 << 17],
            skipped: Skipped::default(),
        }
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
    /// same name is replaced, but never a directory.
    fn remove_existing(&self, rel: &Path) -> Result<()> {
        let full = self.root.join(rel);
        match fs::symlink_metadata(&full) {
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
        // chown clears setuid bits and file capabilities, so it goes first,
        // then the mode, then xattrs; times last.
        if self.privileged {
            nix::unistd::fchown(f.as_raw_fd(), Some(uid(attrs.uid)), Some(gid(attrs.gid)))
                .with_context(|| format!("changing the owner of {}", full.display()))?;
        }
        f.set_permissions(Permissions::from_mode(attrs.mode & 0o7777))
            .with_context(|| format!("changing the mode of {}", full.display()))?;
        for (name, value) in &attrs.xattrs {
            let r = f.set_xattr(name, value);
            self.xattr_result(r, name, &full)?;
        }
        filetime::set_file_handle_times(&f, Some(attrs.filetime()), Some(attrs.filetime()))
            .with_context(|| format!("setting the times of {}", full.display()))?;
        Ok(())
    }

    pub fn symlink(&mut self, rel: &Path, target: &Path, attrs: &Attrs) -> Result<()> {
        self.prepare_parent(rel, true)?;
        let full = self.root.join(rel);
        let r = match std::os::unix::fs::symlink(target, &full) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                self.remove_existing(rel)?;
                std::os::unix::fs::symlink(target, &full)
            }
            r => r,
        };
        r.with_context(|| format!("creating the symlink {}", full.display()))?;
        self.finish_node(&full, attrs, false)
    }

    /// A hardlink to an earlier entry; the target must be a non-directory
    /// reached without symlinks in its parents, inside the tree.
    pub fn hardlink(&mut self, rel: &Path, target: &Path) -> Result<()> {
        let target = normalize(target).context("hardlink target")?;
        self.prepare_parent(&target, false)
            .context("hardlink target")?;
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
        // link(2) does not follow a symlink given as the target.
        let r = match fs::hard_link(&from, &full) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                self.remove_existing(rel)?;
                fs::hard_link(&from, &full)
            }
            r => r,
        };
        r.with_context(|| format!("linking {} to {}", full.display(), from.display()))
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
        let perm = Mode::from_bits_truncate((attrs.mode & 0o777) as libc::mode_t);
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
                return Ok(());
            }
            Err(e) => {
                return Err(io::Error::from(e))
                    .with_context(|| format!("creating {}", full.display()))
            }
        }
        self.finish_node(&full, attrs, true)
    }

    /// Owner, mode, xattrs and times of a node created by path, none of
    /// which follows a symlink.
    fn finish_node(&mut self, full: &Path, attrs: &Attrs, chmod: bool) -> Result<()> {
        if self.privileged {
            std::os::unix::fs::lchown(full, Some(attrs.uid as u32), Some(attrs.gid as u32))
                .with_context(|| format!("changing the owner of {}", full.display()))?;
        }
        if chmod {
            // The node was just created by us and is not a symlink: chmod
            // (which follows symlinks) is safe; umask applied at mknod.
            fs::set_permissions(full, Permissions::from_mode(attrs.mode & 0o7777))
                .with_context(|| format!("changing the mode of {}", full.display()))?;
        }
        for (name, value) in &attrs.xattrs {
            let r = xattr::set(full, name, value);
            self.xattr_result(r, name, full)?;
        }
        filetime::set_symlink_file_times(full, attrs.filetime(), attrs.filetime())
            .with_context(|| format!("setting the times of {}", full.display()))
    }

    fn xattr_result(&mut self, r: io::Result<()>, name: &str, full: &Path) -> Result<()> {
        match r {
            Ok(()) => Ok(()),
            // Unprivileged users may not set security.*/trusted.* names.
            Err(_) if !self.privileged => {
                self.skipped.xattrs += 1;
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("setting {name} on {}", full.display())),
        }
    }

    /// Apply directory metadata, deepest first, then return what was skipped.
    pub fn finish(mut self) -> Result<Skipped> {
        let mut deferred = std::mem::take(&mut self.deferred);
        // Stable sort: a directory listed twice gets its last entry's attrs.
        deferred.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.components().count()));
        for (rel, attrs) in &deferred {
            let full = self.root.join(rel);
            self.finish_node(&full, attrs, true)
                .with_context(|| format!("entry `{}`", display_name(rel)))?;
        }
        Ok(self.skipped)
    }
}

pub fn display_name(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        ".".into()
    } else {
        rel.display().to_string()
    }
}

fn uid(n: u64) -> nix::unistd::Uid {
    nix::unistd::Uid::from_raw(n as u32)
}

fn gid(n: u64) -> nix::unistd::Gid {
    nix::unistd::Gid::from_raw(n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_refuses_escapes() {
        assert_eq!(normalize(Path::new("./a/./b")).unwrap(), Path::new("a/b"));
        assert_eq!(normalize(Path::new("./")).unwrap(), Path::new(""));
        assert!(normalize(Path::new("a/../../x")).is_err());
        assert!(normalize(Path::new("/etc/passwd")).is_err());
    }
}
