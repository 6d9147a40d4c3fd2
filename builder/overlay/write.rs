//! Writing into a node tree without touching shared inodes.
//!
//! A node tree's read-mostly directories (`usr`, `bin`, `lib*`, `opt`...)
//! are hardlinked to the base store and to every sibling node. So nothing
//! here ever opens an existing file for writing or changes an existing
//! file's owner or mode: every file is written under a temporary name in
//! its final directory, given its owner and mode, then renamed over the
//! old name. The old inode (shared or not) is left as it was.
//!
//! Paths are resolved inside the tree as a chroot would (an absolute
//! symlink such as `etc/resolv.conf -> /run/...` points into the tree,
//! never at the build machine), so no tree content can make chbuild write
//! outside the tree.

use crate::fs::{symlink_new, Durability, Inode, NewFile};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Numeric owner of a file in the tree (names are resolved against the
/// tree's own `etc/passwd`, never the build machine's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub const ROOT: Owner = Owner { uid: 0, gid: 0 };
}

/// Writes files into one node tree and records what it wrote.
pub struct TreeWriter {
    root: PathBuf,
    mtime: Option<filetime::FileTime>,
    written: BTreeSet<PathBuf>,
}

const MAX_SYMLINK_HOPS: usize = 40;

impl TreeWriter {
    /// A writer for the tree at `root`. With `SOURCE_DATE_EPOCH` set, every
    /// file written gets that modification time, for reproducible outputs.
    pub fn new(root: &Path) -> Result<TreeWriter> {
        let mtime = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => Some(filetime::FileTime::from_unix_time(
                v.trim()
                    .parse()
                    .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number"))?,
                0,
            )),
            Err(_) => None,
        };
        if !root.is_dir() {
            bail!("node tree {} is not a directory", root.display());
        }
        Ok(TreeWriter {
            root: root.to_path_buf(),
            mtime,
            written: BTreeSet::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Tree-relative paths written so far, sorted, each once.
    pub fn written(&self) -> Vec<PathBuf> {
        self.written.iter().cloned().collect()
    }

    /// Resolve `rel` inside the tree, following symlinks as a chroot would.
    /// The last component is followed only when `follow_last`. Returns the
    /// resolved tree-relative path (no symlinks left in its directories).
    pub fn resolve(&self, rel: &Path, follow_last: bool) -> Result<PathBuf> {
        let mut cur = PathBuf::new();
        let mut queue: VecDeque<OsString> = VecDeque::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => queue.push_back(n.to_os_string()),
                Component::ParentDir => queue.push_back("..".into()),
                _ => {}
            }
        }
        let mut hops = 0;
        while let Some(name) = queue.pop_front() {
            if name == ".." {
                cur.pop();
                continue;
            }
            let cand = cur.join(&name);
            if queue.is_empty() && !follow_last {
                cur = cand;
                break;
            }
            let host = self.root.join(&cand);
            match fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        bail!("too many symlinks resolving {} in the tree", rel.display());
                    }
                    let target = fs::read_link(&host)
                        .with_context(|| format!("reading link {}", host.display()))?;
                    if target.is_absolute() {
                        cur.clear();
                    }
                    let mut parts: Vec<OsString> = Vec::new();
                    for c in target.components() {
                        match c {
                            Component::Normal(n) => parts.push(n.to_os_string()),
                            Component::ParentDir => parts.push("..".into()),
                            _ => {}
                        }
                    }
                    for p in parts.into_iter().rev() {
                        queue.push_front(p);
                    }
                }
                _ => cur = cand,
            }
        }
        Ok(cur)
    }

    /// Host path of a tree-relative path (directories resolved in the tree).
    pub fn host_path(&self, rel: impl AsRef<Path>) -> Result<PathBuf> {
        Ok(self.root.join(self.resolve(rel.as_ref(), false)?))
    }

    /// Whether the path exists in the tree (symlinks followed in the tree).
    pub fn exists(&self, rel: impl AsRef<Path>) -> bool {
        self.resolve(rel.as_ref(), true)
            .map(|p| self.root.join(p).symlink_metadata().is_ok())
            .unwrap_or(false)
    }

    /// Read a file of the tree; `None` when it does not exist.
    pub fn read(&self, rel: impl AsRef<Path>) -> Result<Option<Vec<u8>>> {
        let p = self.root.join(self.resolve(rel.as_ref(), true)?);
        match fs::read(&p) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Read a text file of the tree; `None` when it does not exist.
    pub fn read_string(&self, rel: impl AsRef<Path>) -> Result<Option<String>> {
        Ok(self
            .read(rel)?
            .map(|d| String::from_utf8_lossy(&d).into_owned()))
    }

    /// Create a directory and its missing parents. New directories get
    /// `mode`/`owner` (parents 0755 root); an existing final directory is
    /// given them too (directories are never hardlinked, so this cannot
    /// reach a sibling node).
    pub fn mkdir(&mut self, rel: impl AsRef<Path>, mode: u32, owner: Owner) -> Result<()> {
        let resolved = self.resolve(rel.as_ref(), true)?;
        self.mkdir_parents(&resolved)?;
        let host = self.root.join(&resolved);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("{} exists and is not a directory", host.display()),
            Err(_) => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&host)
                    .with_context(|| format!("creating {}", host.display()))?;
            }
        }
        std::os::unix::fs::lchown(&host, Some(owner.uid), Some(owner.gid))
            .with_context(|| format!("chown {}", host.display()))?;
        fs::set_permissions(&host, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", host.display()))?;
        Ok(())
    }

    fn mkdir_parents(&self, resolved: &Path) -> Result<()> {
        let mut cur = self.root.clone();
        let parent = resolved.parent().unwrap_or(Path::new(""));
        for c in parent.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => bail!("{} exists and is not a directory", cur.display()),
                Err(_) => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&cur)
                        .with_context(|| format!("creating {}", cur.display()))?;
                    fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                        .with_context(|| format!("chmod {}", cur.display()))?;
                }
            }
        }
        Ok(())
    }

    /// Prepare the final host path of a new entry: parents exist, and it
    /// is not a directory. Returns (resolved rel, final path).
    fn prepare(&self, rel: &Path) -> Result<(PathBuf, PathBuf)> {
        let resolved = self.resolve(rel, false)?;
        if resolved.file_name().is_none() {
            bail!("{} names no file", rel.display());
        }
        self.mkdir_parents(&resolved)?;
        let host = self.root.join(&resolved);
        if fs::symlink_metadata(&host).is_ok_and(|m| m.is_dir()) {
            bail!("{} is a directory, not a file", host.display());
        }
        Ok((resolved, host))
    }

    /// Owner, mode and time of what this writer makes. The tree is still
    /// being built: its publisher flushes it (see `crate::fs`).
    fn inode(&self, mode: u32, owner: Owner) -> Inode {
        Inode::new(mode, Durability::InStagedTree)
            .owner(owner.uid, owner.gid)
            .mtime(self.mtime)
    }

    /// Write a file as a new inode with the given mode and owner, replacing
    /// whatever was at that name (file or symlink) by rename.
    pub fn write(
        &mut self,
        rel: impl AsRef<Path>,
        data: &[u8],
        mode: u32,
        owner: Owner,
    ) -> Result<()> {
        self.write_with(rel.as_ref(), mode, owner, |f, tmp| {
            f.write_all(data)
                .with_context(|| format!("writing {}", tmp.display()))
        })
    }

    /// Copy a file from outside the tree (streamed, for large bundles).
    pub fn copy_from(
        &mut self,
        rel: impl AsRef<Path>,
        src: &Path,
        mode: u32,
        owner: Owner,
    ) -> Result<()> {
        let mut input =
            fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
        self.write_with(rel.as_ref(), mode, owner, |f, tmp| {
            std::io::copy(&mut input, f)
                .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
            Ok(())
        })
    }

    fn write_with(
        &mut self,
        rel: &Path,
        mode: u32,
        owner: Owner,
        fill: impl FnOnce(&mut &fs::File, &Path) -> Result<()>,
    ) -> Result<()> {
        let (resolved, host) = self.prepare(rel)?;
        let new = NewFile::create(&host, self.inode(mode, owner))?;
        let mut f = new.file();
        fill(&mut f, &host)?;
        new.commit()?;
        self.written.insert(resolved);
        Ok(())
    }

    /// Create (or replace) a symlink, owned by root.
    pub fn symlink(&mut self, rel: impl AsRef<Path>, target: impl AsRef<Path>) -> Result<()> {
        let (resolved, host) = self.prepare(rel.as_ref())?;
        symlink_new(&host, target.as_ref(), self.inode(0o777, Owner::ROOT))?;
        self.written.insert(resolved);
        Ok(())
    }

    /// Remove a file or symlink of the tree if it exists (unlinking a name
    /// never changes a shared inode). Returns whether it existed.
    pub fn remove(&mut self, rel: impl AsRef<Path>) -> Result<bool> {
        let host = self.host_path(rel.as_ref())?;
        match fs::remove_file(&host) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing {}", host.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Owners can only be set by root; CI runs as root.
    fn root_or_skip() -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            eprintln!("SKIP: setting owners needs root");
        }
        root
    }

    #[test]
    fn write_replaces_a_hardlinked_file_without_touching_its_inode() {
        if !root_or_skip() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("tree");
        fs::create_dir_all(root.join("usr/share")).unwrap();
        fs::write(t.path().join("store-file"), b"shared\n").unwrap();
        fs::hard_link(t.path().join("store-file"), root.join("usr/share/f")).unwrap();
        let mut w = TreeWriter::new(&root).unwrap();
        w.write("usr/share/f", b"mine\n", 0o640, Owner::ROOT)
            .unwrap();
        assert_eq!(fs::read(t.path().join("store-file")).unwrap(), b"shared\n");
        assert_eq!(
            fs::metadata(t.path().join("store-file")).unwrap().nlink(),
            1
        );
        assert_eq!(fs::read(root.join("usr/share/f")).unwrap(), b"mine\n");
        let m = fs::metadata(root.join("usr/share/f")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(w.written(), vec![PathBuf::from("usr/share/f")]);
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/lib/x", root.join("etc/evil")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("etc/up")).unwrap();
        let w = TreeWriter::new(root).unwrap();
        assert_eq!(
            w.resolve(Path::new("etc/evil/y"), false).unwrap(),
            PathBuf::from("usr/lib/x/y")
        );
        assert_eq!(
            w.resolve(Path::new("etc/up/etc/passwd"), false).unwrap(),
            PathBuf::from("etc/passwd")
        );
        // The last component is replaced, not followed, when writing.
        assert_eq!(
            w.resolve(Path::new("etc/evil"), false).unwrap(),
            PathBuf::from("etc/evil")
        );
    }

    #[test]
    fn symlink_and_mkdir() {
        if !root_or_skip() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let mut w = TreeWriter::new(t.path()).unwrap();
        w.mkdir(
            "home/pi/.ssh",
            0o700,
            Owner {
                uid: 1000,
                gid: 1000,
            },
        )
        .unwrap();
        let m = fs::metadata(t.path().join("home/pi/.ssh")).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (1000, 0o700));
        w.symlink("etc/systemd/system/a.wants/b.service", "/lib/b.service")
            .unwrap();
        w.symlink("etc/systemd/system/a.wants/b.service", "/lib/c.service")
            .unwrap();
        assert_eq!(
            fs::read_link(t.path().join("etc/systemd/system/a.wants/b.service")).unwrap(),
            PathBuf::from("/lib/c.service")
        );
        assert!(w.remove("etc/systemd/system/a.wants/b.service").unwrap());
        assert!(!w.remove("etc/systemd/system/a.wants/b.service").unwrap());
    }
}
