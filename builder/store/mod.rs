//! Base store: each base root filesystem is unpacked once into a
//! content-addressed directory; node trees are hardlinked from it.

use crate::profile::Base;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

pub struct Store {
    pub root: PathBuf,
}

/// An unpacked base, ready to be linked into node trees.
#[derive(Debug, Clone)]
pub struct BaseTree {
    /// sha256 of the archive (or of the Debian recipe).
    pub digest: String,
    /// The unpacked root filesystem.
    pub root: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct StoreEntry {
    pub digest: String,
    pub source: String,
    pub size: u64,
}

impl Store {
    /// `~/.cache/chbuild/store` (XDG_CACHE_HOME respected).
    pub fn default_dir() -> PathBuf {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from("/var/cache"));
        cache.join("chbuild").join("store")
    }

    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Store {
            root: dir.to_path_buf(),
        })
    }

    /// The store key of a base, when it can be known without work.
    pub fn digest_of(&self, _base: &Base) -> Option<String> {
        None
    }

    /// Ingest the base unless it is already stored; return its tree.
    pub fn ensure_base(&self, _base: &Base) -> Result<BaseTree> {
        bail!("the base store is not yet implemented")
    }

    pub fn list(&self) -> Result<Vec<StoreEntry>> {
        Ok(vec![])
    }

    pub fn gc(&self, _keep: &[String]) -> Result<Vec<String>> {
        Ok(vec![])
    }
}
