//! One deploy, rollback or uninstall at a time per NFS directory.

use anyhow::{Context, Result};
use fs4::fs_std::FileExt;
use std::fs::{File, OpenOptions};
use std::path::Path;

/// Held for the life of the value; the kernel drops the lock if chbuild dies.
pub struct DeployLock {
    _file: File,
}

pub const LOCK_NAME: &str = ".chbuild-deploy.lock";

pub fn acquire(nfs_dir: &Path) -> Result<DeployLock> {
    let path = nfs_dir.join(LOCK_NAME);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.try_lock_exclusive().map_err(|_| {
        anyhow::anyhow!(
            "another chbuild deploy, rollback or uninstall is running (it holds the lock {})",
            path.display()
        )
    })?;
    Ok(DeployLock { _file: file })
}
