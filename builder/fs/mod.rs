//! The one owner of low-level file-system work: copying a tree with a link
//! policy ([`copy_tree`]), folding an overlayfs upper directory into a
//! tree ([`merge_upper`]), writing a file as a new inode renamed into place
//! ([`NewFile`], [`write_new`], [`symlink_new`]), removing a tree
//! ([`remove_tree`]) and exchanging two paths atomically ([`Dir::exchange`]).
//! Every stage (store, tree, deploy, disk, artifact, secrets, the overlay
//! writer) goes through here, so owners, modes, xattrs, times and fsyncs
//! are handled one way.
//!
//! The order in which a node gets its metadata is fixed by [`Attrs::apply`]:
//! owner, then mode, then xattrs, times last. chown clears setuid/setgid
//! bits and the `security.capability` xattr of a file, so mode and xattrs
//! must come after it; anything but the times changes the ctime only, and
//! setting the times last keeps the mtime as asked.

mod copy;
mod merge;
mod new;

pub use copy::{copy_tree, CopyStats, LinkPolicy};
pub use merge::{link_identical, merge_upper, MergeStats};
pub use new::{symlink_new, write_new, Durability, Inode, NewFile};

use anyhow::{Context, Result};
use filetime::FileTime;
use nix::fcntl::{renameat2, RenameFlags};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use xattr::FileExt;

/// Only root may give files away or set `trusted.*`/`security.*` xattrs;
/// a rootless run keeps its own owner, like the rest of the tree it made.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Owner, mode, xattrs and times of one node, to be applied in one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attrs {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub mtime: FileTime,
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Attrs {
    /// The attributes of an existing node (`meta` is its lstat).
    pub fn of(path: &Path, meta: &fs::Metadata) -> Result<Attrs> {
        Ok(Attrs {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
            mtime: FileTime::from_last_modification_time(meta),
            xattrs: if meta.file_type().is_symlink() {
                Vec::new()
            } else {
                read_xattrs(path)?
            },
        })
    }

    /// Apply to the node at `path`, never following a symlink there.
    /// Returns how many xattrs a rootless run had to leave out.
    pub fn apply(&self, path: &Path, symlink: bool) -> Result<u64> {
        if is_root() {
            std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
                .with_context(|| format!("changing the owner of {}", path.display()))?;
        }
        if !symlink {
            // chmod follows symlinks; this node is not one.
            fs::set_permissions(path, fs::Permissions::from_mode(self.mode))
                .with_context(|| format!("changing the mode of {}", path.display()))?;
        }
        let mut skipped = 0;
        for (name, value) in &self.xattrs {
            // xattr::set does not follow symlinks (lsetxattr).
            skipped += xattr_result(xattr::set(path, name, value), name, path)?;
        }
        filetime::set_symlink_file_times(path, self.mtime, self.mtime)
            .with_context(|| format!("setting the times of {}", path.display()))?;
        Ok(skipped)
    }

    /// Apply to an open regular file (no path lookups at all).
    pub fn apply_to_file(&self, f: &File, path: &Path) -> Result<u64> {
        if is_root() {
            nix::unistd::fchown(
                f.as_raw_fd(),
                Some(nix::unistd::Uid::from_raw(self.uid)),
                Some(nix::unistd::Gid::from_raw(self.gid)),
            )
            .with_context(|| format!("changing the owner of {}", path.display()))?;
        }
        f.set_permissions(fs::Permissions::from_mode(self.mode))
            .with_context(|| format!("changing the mode of {}", path.display()))?;
        let mut skipped = 0;
        for (name, value) in &self.xattrs {
            skipped += xattr_result(f.set_xattr(name, value), name, path)?;
        }
        filetime::set_file_handle_times(f, Some(self.mtime), Some(self.mtime))
            .with_context(|| format!("setting the times of {}", path.display()))?;
        Ok(skipped)
    }
}

/// Unprivileged users may not set `security.*`/`trusted.*` names: a
/// rootless run counts them (1) instead of failing; root fails.
fn xattr_result(r: io::Result<()>, name: &std::ffi::OsStr, path: &Path) -> Result<u64> {
    match r {
        Ok(()) => Ok(0),
        Err(_) if !is_root() => Ok(1),
        Err(e) => Err(e).with_context(|| {
            format!(
                "setting the xattr {} on {}",
                name.to_string_lossy(),
                path.display()
            )
        }),
    }
}

/// Every xattr of a node (not followed if a symlink), sorted by name;
/// none on a file system without xattrs.
pub fn read_xattrs(path: &Path) -> Result<Vec<(OsString, Vec<u8>)>> {
    collect_xattrs(path, xattr::list(path), |n| xattr::get(path, n))
}

/// [`read_xattrs`] through an open file: those of the inode that was
/// opened, whatever its path names now (`path` only names it in errors).
pub fn read_xattrs_of(f: &File, path: &Path) -> Result<Vec<(OsString, Vec<u8>)>> {
    collect_xattrs(path, f.list_xattr(), |n| f.get_xattr(n))
}

fn collect_xattrs(
    path: &Path,
    names: io::Result<xattr::XAttrs>,
    get: impl Fn(&std::ffi::OsStr) -> io::Result<Option<Vec<u8>>>,
) -> Result<Vec<(OsString, Vec<u8>)>> {
    let names = match names {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing xattrs of {}", path.display())),
    };
    let mut out = Vec::new();
    for name in names {
        if let Some(v) = get(&name).with_context(|| {
            format!(
                "reading the xattr {} of {}",
                name.to_string_lossy(),
                path.display()
            )
        })? {
            out.push((name, v));
        }
    }
    out.sort();
    Ok(out)
}

/// Stream a file through `each`, a MiB at a time (hashing, mostly).
pub fn read_chunks(path: &Path, mut each: impl FnMut(&[u8])) -> Result<()> {
    use std::io::Read;
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        each(&buf[..n]);
    }
}

/// Remove a tree, tolerating one that is not there and directories an
/// archive made read-only (which stop a rootless removal).
pub fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    for e in walkdir::WalkDir::new(path)
        .follow_links(false)
        .into_iter()
        .flatten()
    {
        if e.file_type().is_dir() {
            let _ = fs::set_permissions(e.path(), fs::Permissions::from_mode(0o700));
        }
    }
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Flush a directory, so the renames and creations in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// A directory opened once, so that renames of its entries go through one
/// handle and are made durable with one fsync.
pub struct Dir {
    pub path: PathBuf,
    handle: File,
}

impl Dir {
    pub fn open(path: &Path) -> Result<Dir> {
        let handle = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Dir {
            path: path.to_path_buf(),
            handle,
        })
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Make the renames in the directory durable.
    pub fn sync(&self) -> Result<()> {
        self.handle
            .sync_all()
            .with_context(|| format!("syncing {}", self.path.display()))
    }

    /// Flush the whole file system (a staged tree before its rename).
    pub fn syncfs(&self) -> Result<()> {
        nix::unistd::syncfs(self.handle.as_raw_fd())
            .with_context(|| format!("syncing the file system of {}", self.path.display()))
    }

    fn rename_flags(&self, from: &str, to: &str, flags: RenameFlags) -> Result<()> {
        let fd = Some(self.handle.as_raw_fd());
        renameat2(fd, from, fd, to, flags).with_context(|| {
            let what = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                "exchanging"
            } else {
                "renaming"
            };
            format!(
                "{what} {} and {} (the file system must support renameat2)",
                self.join(from).display(),
                self.join(to).display()
            )
        })?;
        self.sync()
    }

    /// Exchange two entries atomically (`renameat2(RENAME_EXCHANGE)`),
    /// then flush the directory: at no moment is either name missing.
    pub fn exchange(&self, a: &str, b: &str) -> Result<()> {
        self.rename_flags(a, b, RenameFlags::RENAME_EXCHANGE)
    }

    /// Rename, refusing to replace an existing entry, then flush.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.rename_flags(from, to, RenameFlags::RENAME_NOREPLACE)
    }
}

/// Exchange two siblings atomically and flush their directory.
pub fn exchange(a: &Path, b: &Path) -> Result<()> {
    let parent = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = parent(b);
    if parent(a) != dir {
        anyhow::bail!(
            "{} and {} are not in one directory",
            a.display(),
            b.display()
        );
    }
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("{} names no entry", p.display()))
    };
    Dir::open(&dir)?.exchange(&name(a)?, &name(b)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_swaps_two_trees_in_one_step() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::write(a.join("id"), "a").unwrap();
        fs::write(&b, "b is a file").unwrap();
        exchange(&a, &b).unwrap();
        assert_eq!(fs::read_to_string(b.join("id")).unwrap(), "a");
        assert_eq!(fs::read_to_string(&a).unwrap(), "b is a file");
        let d = Dir::open(t.path()).unwrap();
        assert!(d.rename("a", "b").is_err(), "rename must not replace");
        d.rename("a", "c").unwrap();
        assert!(exchange(&t.path().join("c"), Path::new("/tmp/elsewhere")).is_err());
    }

    #[test]
    fn remove_tree_handles_missing_and_read_only_trees() {
        let t = tempfile::tempdir().unwrap();
        remove_tree(&t.path().join("nothing")).unwrap();
        let r = t.path().join("r");
        fs::create_dir_all(r.join("sub")).unwrap();
        fs::write(r.join("sub/f"), "x").unwrap();
        fs::set_permissions(r.join("sub"), fs::Permissions::from_mode(0o500)).unwrap();
        remove_tree(&r).unwrap();
        assert!(!r.exists());
    }
}
