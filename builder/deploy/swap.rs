//! The atomic part of a deploy. Names in ClusterCTRL's NFS directory:
//!
//! - `pN`: the live tree; `pN.prev`: the one before it (for rollback);
//! - `.pN.staging-<pid>`: a tree being built, or after the swap the old tree
//!   until the deploy is committed;
//! - `.pN.discard-<pid>`: a tree being deleted;
//! - `.pN.chbuild-txn`: the journal of a deploy between swap and commit.
//!
//! The swap (`renameat2(RENAME_EXCHANGE)`) is the one step that changes
//! which tree is `pN`. Between the swap and the commit, `usbboot-init`
//! edits the new tree in place; if chbuild dies there, the journal tells
//! the next run to swap the old tree back. Staging and discard directories
//! left by a dead run are deleted on startup.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The journal written before the swap.
#[derive(Debug, Serialize, Deserialize)]
pub struct Txn {
    /// Name of the staging directory (the old tree after the swap).
    pub staging: String,
    /// Inode of the new tree: `pN` has it exactly when the swap happened.
    pub new_ino: u64,
    /// Whether a tree was there before (first deploy: plain rename).
    pub had_old: bool,
    pub build: String,
    /// Set once the new tree is verified; recovery then finishes the
    /// deploy instead of undoing it.
    pub committed: bool,
}

/// What recovery found and did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovered {
    /// The swap never happened; the staged tree was dropped.
    NotSwapped,
    /// The swap happened but the deploy was not committed: old tree back.
    SwappedBack,
    /// The deploy was committed; `pN.prev` was put in place.
    Finished,
}

/// ClusterCTRL's NFS directory, opened once: renames and exchanges go
/// through [`crate::fs::Dir`], which flushes the directory after each.
pub struct NfsDir {
    dir: crate::fs::Dir,
    pub path: PathBuf,
}

impl NfsDir {
    pub fn open(path: &Path) -> Result<NfsDir> {
        Ok(NfsDir {
            dir: crate::fs::Dir::open(path)?,
            path: path.to_path_buf(),
        })
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn exists(&self, name: &str) -> bool {
        self.join(name).symlink_metadata().is_ok()
    }

    /// Make removals in the directory durable.
    pub fn sync(&self) -> Result<()> {
        self.dir.sync()
    }

    /// Flush the whole file system (staged data before the swap).
    pub fn syncfs(&self) -> Result<()> {
        self.dir.syncfs()
    }

    /// Exchange two entries atomically.
    pub fn exchange(&self, a: &str, b: &str) -> Result<()> {
        self.dir.exchange(a, b)
    }

    /// Rename, refusing to replace an existing entry.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.dir.rename(from, to)
    }

    pub fn ino(&self, name: &str) -> Option<u64> {
        self.join(name).symlink_metadata().ok().map(|m| m.ino())
    }

    /// Delete a tree: first renamed to a hidden discard name (so a crash
    /// never leaves a half-deleted `pN`), then removed.
    pub fn discard(&self, name: &str) -> Result<()> {
        if !self.exists(name) {
            return Ok(());
        }
        let d = format!(".{name}.discard-{}", std::process::id());
        self.rename(name, &d)?;
        remove_tree(&self.join(&d))
    }

    pub fn txn_name(pname: &str) -> String {
        format!(".{pname}.chbuild-txn")
    }

    pub fn write_txn(&self, pname: &str, txn: &Txn) -> Result<()> {
        let path = self.join(&Self::txn_name(pname));
        let text = serde_json::to_vec_pretty(txn)?;
        // Published: flushed with its directory before this returns.
        super::stage::write_file_atomic(&path, &text)
    }

    pub fn read_txn(&self, pname: &str) -> Result<Option<Txn>> {
        let path = self.join(&Self::txn_name(pname));
        match fs::read(&path) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b)
                    .with_context(|| format!("parsing {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn remove_txn(&self, pname: &str) -> Result<()> {
        let path = self.join(&Self::txn_name(pname));
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        self.sync()
    }

    /// Put the staged tree in place of `pN`: exchange with the old tree,
    /// or a plain rename on a first deploy.
    pub fn swap_into_place(&self, pname: &str, txn: &Txn) -> Result<()> {
        if txn.had_old {
            self.exchange(&txn.staging, pname)
        } else {
            self.rename(&txn.staging, pname)
        }
    }

    /// Undo a swap that was not committed: the old tree goes back to `pN`,
    /// the new one is deleted.
    pub fn swap_back(&self, pname: &str, txn: &Txn) -> Result<()> {
        if txn.had_old {
            self.exchange(&txn.staging, pname)?;
        } else {
            self.rename(pname, &txn.staging)?;
        }
        remove_tree(&self.join(&txn.staging))?;
        self.remove_txn(pname)
    }

    /// Mark the deploy committed, then keep the old tree as `pN.prev`.
    pub fn commit(&self, pname: &str, txn: &mut Txn) -> Result<()> {
        txn.committed = true;
        self.write_txn(pname, txn)?;
        self.finish_commit(pname, txn)
    }

    fn finish_commit(&self, pname: &str, txn: &Txn) -> Result<()> {
        if self.exists(&txn.staging) {
            let prev = format!("{pname}.prev");
            self.discard(&prev)?;
            self.rename(&txn.staging, &prev)?;
        }
        self.remove_txn(pname)
    }

    /// Bring `pN` back to a complete tree after a run that died.
    pub fn recover(&self, pname: &str) -> Result<Option<Recovered>> {
        let Some(txn) = self.read_txn(pname)? else {
            return Ok(None);
        };
        if txn.committed {
            self.finish_commit(pname, &txn)?;
            return Ok(Some(Recovered::Finished));
        }
        if self.ino(pname) == Some(txn.new_ino) {
            self.swap_back(pname, &txn)?;
            return Ok(Some(Recovered::SwappedBack));
        }
        if self.exists(&txn.staging) {
            remove_tree(&self.join(&txn.staging))?;
        }
        self.remove_txn(pname)?;
        Ok(Some(Recovered::NotSwapped))
    }

    /// Every `pN` with a journal, for startup recovery.
    pub fn pending(&self) -> Result<Vec<String>> {
        Ok(self
            .hidden_entries()?
            .into_iter()
            .filter_map(|n| {
                n.strip_prefix('.')
                    .and_then(|n| n.strip_suffix(".chbuild-txn"))
                    .map(str::to_string)
            })
            .collect())
    }

    /// Staging and discard directories left by dead runs (run after
    /// `recover`, which may still need a staging directory).
    pub fn stale(&self) -> Result<Vec<String>> {
        Ok(self
            .hidden_entries()?
            .into_iter()
            .filter(|n| n.contains(".staging-") || n.contains(".discard-"))
            .collect())
    }

    fn hidden_entries(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in
            fs::read_dir(&self.path).with_context(|| format!("listing {}", self.path.display()))?
        {
            let e = e.with_context(|| format!("listing {}", self.path.display()))?;
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(".p") {
                out.push(n);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The deployed trees (`pN`, `pN.prev`), those of `pname` first: the
    /// trees a new one shares identical files with.
    pub fn trees(&self, pname: &str) -> Result<Vec<PathBuf>> {
        let is_tree = |n: &str| {
            let n = n.strip_suffix(".prev").unwrap_or(n);
            n.strip_prefix('p')
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        };
        let mut names = Vec::new();
        for e in
            fs::read_dir(&self.path).with_context(|| format!("listing {}", self.path.display()))?
        {
            let e = e.with_context(|| format!("listing {}", self.path.display()))?;
            let n = e.file_name().to_string_lossy().into_owned();
            if is_tree(&n) && e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                names.push(n);
            }
        }
        let own = [pname.to_string(), format!("{pname}.prev")];
        names.sort_by_key(|n| (!own.contains(n), n.clone()));
        Ok(names.iter().map(|n| self.join(n)).collect())
    }

    pub fn remove_stale(&self, name: &str) -> Result<()> {
        remove_tree(&self.join(name))
    }
}

pub use crate::fs::remove_tree;

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path, name: &str, content: &str) {
        fs::create_dir_all(dir.join(name)).unwrap();
        fs::write(dir.join(name).join("id"), content).unwrap();
    }

    fn id(dir: &Path, name: &str) -> String {
        fs::read_to_string(dir.join(name).join("id")).unwrap()
    }

    fn staged(d: &NfsDir, had_old: bool) -> Txn {
        tree(&d.path, ".p1.staging-1", "new");
        Txn {
            staging: ".p1.staging-1".into(),
            new_ino: d.ino(".p1.staging-1").unwrap(),
            had_old,
            build: "b".into(),
            committed: false,
        }
    }

    #[test]
    fn swap_commit_and_recover_paths() {
        let t = tempfile::tempdir().unwrap();
        let d = NfsDir::open(t.path()).unwrap();
        tree(t.path(), "p1", "old");
        tree(t.path(), "p1.prev", "older");

        // Died after writing the journal, before the swap.
        let txn = staged(&d, true);
        d.write_txn("p1", &txn).unwrap();
        assert_eq!(d.recover("p1").unwrap(), Some(Recovered::NotSwapped));
        assert_eq!(id(t.path(), "p1"), "old");
        assert!(!d.exists(".p1.staging-1"));

        // Died after the swap, before the commit: old tree comes back.
        let txn = staged(&d, true);
        d.write_txn("p1", &txn).unwrap();
        d.swap_into_place("p1", &txn).unwrap();
        assert_eq!(id(t.path(), "p1"), "new");
        assert_eq!(d.recover("p1").unwrap(), Some(Recovered::SwappedBack));
        assert_eq!(id(t.path(), "p1"), "old");
        assert_eq!(d.recover("p1").unwrap(), None);

        // Died after the commit mark: the rotation is finished.
        let mut txn = staged(&d, true);
        d.write_txn("p1", &txn).unwrap();
        d.swap_into_place("p1", &txn).unwrap();
        txn.committed = true;
        d.write_txn("p1", &txn).unwrap();
        assert_eq!(d.recover("p1").unwrap(), Some(Recovered::Finished));
        assert_eq!(id(t.path(), "p1"), "new");
        assert_eq!(id(t.path(), "p1.prev"), "old");
        assert!(d.pending().unwrap().is_empty());
        assert!(d.stale().unwrap().is_empty());
    }

    #[test]
    fn first_deploy_renames_and_swaps_back_to_nothing() {
        let t = tempfile::tempdir().unwrap();
        let d = NfsDir::open(t.path()).unwrap();
        let txn = staged(&d, false);
        d.write_txn("p1", &txn).unwrap();
        d.swap_into_place("p1", &txn).unwrap();
        assert_eq!(d.pending().unwrap(), vec!["p1".to_string()]);
        d.swap_back("p1", &txn).unwrap();
        assert!(!d.exists("p1"));
        assert!(!d.exists(".p1.staging-1"));
    }
}
