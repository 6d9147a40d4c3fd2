//! Writing a file as a new inode: created under a temporary name beside its
//! destination (0600 until complete, so a secret is never briefly readable
//! by others), given its owner, mode and time, then renamed over the old
//! name. The old inode is never opened for writing: it may be a hardlink
//! shared with the store or a sibling node, and a rename leaves it as it
//! was. Readers see the old file or the whole new one, never a part.
//!
//! The one fsync rule: a new inode is flushed before the rename and its
//! directory after it exactly when that rename publishes it
//! ([`Durability::Publish`]: a secret, a manifest, a tarball, an image, a
//! deploy journal, a file in a live tree), because after a crash the name
//! may be there while the data is not. A file written into a tree that is
//! still being built ([`Durability::InStagedTree`]) is not flushed on its
//! own: nobody reads that tree until the rename that publishes the whole
//! tree, and the stage doing that rename flushes the tree first in one
//! `syncfs` (store ingest, deploy) or rebuilds it after a crash (node
//! trees), which is one flush instead of one per file.

use super::{is_root, sync_dir};
use anyhow::{Context, Result};
use filetime::FileTime;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Whether the rename of a new inode publishes it (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the file before the rename, its directory after.
    Publish,
    /// No flush: the enclosing tree is flushed as a whole before it is
    /// published.
    InStagedTree,
}

/// What a new inode gets besides its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inode {
    pub mode: u32,
    /// (uid, gid); `None` keeps the writer's own. Set only when root.
    pub owner: Option<(u32, u32)>,
    /// `None` keeps the time of writing.
    pub mtime: Option<FileTime>,
    pub durability: Durability,
}

impl Inode {
    pub fn new(mode: u32, durability: Durability) -> Inode {
        Inode {
            mode,
            owner: None,
            mtime: None,
            durability,
        }
    }

    pub fn owner(self, uid: u32, gid: u32) -> Inode {
        Inode {
            owner: Some((uid, gid)),
            ..self
        }
    }

    pub fn mtime(self, t: Option<FileTime>) -> Inode {
        Inode { mtime: t, ..self }
    }

    /// Owner and mode of the file being replaced (`meta`), when there is
    /// one; else `mode`, owned by the writer.
    pub fn like(meta: Option<&fs::Metadata>, mode: u32, durability: Durability) -> Inode {
        match meta {
            Some(m) => Inode::new(m.mode() & 0o7777, durability).owner(m.uid(), m.gid()),
            None => Inode::new(mode, durability),
        }
    }
}

/// A new inode being written beside `dest`; removed unless committed.
pub struct NewFile {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
    inode: Inode,
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

impl NewFile {
    pub fn create(dest: &Path, inode: Inode) -> Result<NewFile> {
        let dir = parent_of(dest);
        let name = dest
            .file_name()
            .with_context(|| format!("{} names no file", dest.display()))?
            .to_string_lossy();
        // tempfile creates it 0600 with O_EXCL under a fresh random name.
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".chbuild-new")
            .tempfile_in(dir)
            .with_context(|| format!("creating a new file for {}", dest.display()))?;
        Ok(NewFile {
            tmp,
            dest: dest.to_path_buf(),
            inode,
        })
    }

    pub fn file(&self) -> &File {
        self.tmp.as_file()
    }

    /// The temporary name, for tools that write by path.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Owner, then mode (chown clears setuid), then time; flush per the
    /// rule above; rename over the destination.
    pub fn commit(self) -> Result<()> {
        let (f, dest, inode) = (self.tmp.as_file(), &self.dest, self.inode);
        if let (Some((uid, gid)), true) = (inode.owner, is_root()) {
            nix::unistd::fchown(
                f.as_raw_fd(),
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .with_context(|| format!("changing the owner of {}", dest.display()))?;
        }
        f.set_permissions(fs::Permissions::from_mode(inode.mode))
            .with_context(|| format!("changing the mode of {}", dest.display()))?;
        if let Some(t) = inode.mtime {
            filetime::set_file_handle_times(f, Some(t), Some(t))
                .with_context(|| format!("setting the times of {}", dest.display()))?;
        }
        if inode.durability == Durability::Publish {
            f.sync_all()
                .with_context(|| format!("flushing {}", dest.display()))?;
        }
        self.tmp
            .persist(dest)
            .map_err(|e| e.error)
            .with_context(|| format!("renaming a new file into {}", dest.display()))?;
        if inode.durability == Durability::Publish {
            sync_dir(parent_of(dest))?;
        }
        Ok(())
    }
}

/// Write `data` as a new inode at `dest`.
pub fn write_new(dest: &Path, data: &[u8], inode: Inode) -> Result<()> {
    let nf = NewFile::create(dest, inode)?;
    nf.file()
        .write_all(data)
        .with_context(|| format!("writing {}", dest.display()))?;
    nf.commit()
}

/// Create or replace a symlink the same way (the mode of `inode` is
/// meaningless for a symlink and ignored).
pub fn symlink_new(dest: &Path, target: &Path, inode: Inode) -> Result<()> {
    let dir = parent_of(dest);
    let name = dest
        .file_name()
        .with_context(|| format!("{} names no file", dest.display()))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.chbuild-link", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("creating the symlink {}", tmp.display()))?;
    let finish = || -> Result<()> {
        if let (Some((uid, gid)), true) = (inode.owner, is_root()) {
            std::os::unix::fs::lchown(&tmp, Some(uid), Some(gid))
                .with_context(|| format!("changing the owner of {}", tmp.display()))?;
        }
        if let Some(t) = inode.mtime {
            filetime::set_symlink_file_times(&tmp, t, t)
                .with_context(|| format!("setting the times of {}", tmp.display()))?;
        }
        fs::rename(&tmp, dest).with_context(|| format!("renaming into {}", dest.display()))
    };
    if let Err(e) = finish() {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if inode.durability == Durability::Publish {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_a_hardlinked_file_without_touching_the_other_link() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::write(&a, b"shared").unwrap();
        fs::set_permissions(&a, fs::Permissions::from_mode(0o640)).unwrap();
        fs::hard_link(&a, &b).unwrap();
        let old = fs::metadata(&a).unwrap();
        let t0 = FileTime::from_unix_time(1_700_000_000, 0);
        for d in [Durability::InStagedTree, Durability::Publish] {
            write_new(
                &a,
                b"mine",
                Inode::like(Some(&old), 0o644, d).mtime(Some(t0)),
            )
            .unwrap();
            assert_eq!(fs::read(&a).unwrap(), b"mine");
            assert_eq!(fs::read(&b).unwrap(), b"shared");
            let m = fs::metadata(&a).unwrap();
            assert_ne!(m.ino(), old.ino());
            assert_eq!(m.mode() & 0o7777, 0o640);
            assert_eq!(m.mtime(), 1_700_000_000);
            assert_eq!(fs::metadata(&b).unwrap().nlink(), 1);
        }
        // Nothing left behind under a temporary name.
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 2);
    }

    #[test]
    fn setuid_survives_the_owner_change() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("tool");
        let inode = Inode::new(0o4755, Durability::InStagedTree).owner(12, 34);
        write_new(&p, b"#!/bin/sh\n", inode).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o4755);
        if is_root() {
            assert_eq!((m.uid(), m.gid()), (12, 34));
        }
    }

    #[test]
    fn an_uncommitted_file_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        let nf = NewFile::create(&p, Inode::new(0o600, Durability::Publish)).unwrap();
        nf.file().write_all(b"half").unwrap();
        drop(nf);
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[test]
    fn symlinks_are_replaced_by_rename() {
        let t = tempfile::tempdir().unwrap();
        let l = t.path().join("l");
        let inode =
            Inode::new(0o777, Durability::Publish).mtime(Some(FileTime::from_unix_time(5, 0)));
        symlink_new(&l, Path::new("/one"), inode).unwrap();
        symlink_new(&l, Path::new("/two"), inode).unwrap();
        assert_eq!(fs::read_link(&l).unwrap(), Path::new("/two"));
        assert_eq!(l.symlink_metadata().unwrap().mtime(), 5);
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
    }
}
