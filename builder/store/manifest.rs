//! What a store entry holds, written beside its tree: `manifest.jsonl`
//! (one line per archive entry, in archive order) and `meta.json` (where the
//! entry came from and its totals). The manifest records what the archive
//! asked for, so later stages can check a tree without trusting the disk.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "manifest.jsonl";
pub const META: &str = "meta.json";
pub const TREE: &str = "tree";

pub use crate::unpack::EntryKind;

/// One archive entry as unpacked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative to the tree root, without `./`; the root itself is `.`.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    /// Sub-second part of the mtime (pax archives carry it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtime_nsec: u32,
    /// Symlink target, or the path a hardlink points to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Device numbers (major, minor) of character and block devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<(u32, u32)>,
    /// Extended attributes, values in hex.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Summary of a store entry (`meta.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// The store key: sha256 of the archive, or of the Debian recipe.
    pub digest: String,
    /// Human description of the source (path, URL or recipe).
    pub source: String,
    /// sha256 of the archive bytes that were unpacked.
    pub archive_sha256: String,
    /// Compression detected from the archive's first bytes.
    pub compression: String,
    pub entries: u64,
    /// Sum of regular file sizes.
    pub size: u64,
}

/// Streams manifest lines to disk so memory does not grow with the archive.
pub struct ManifestWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl ManifestWriter {
    pub fn create(path: &Path) -> Result<ManifestWriter> {
        let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(ManifestWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 16, f),
        })
    }

    pub fn push(&mut self, e: &ManifestEntry) -> Result<()> {
        serde_json::to_writer(&mut self.out, e)
            .map_err(std::io::Error::from)
            .and_then(|_| self.out.write_all(b"\n"))
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// No fsync of its own: the store flushes the whole entry (syncfs)
    /// before the rename that publishes it (the rule in `crate::fs`).
    pub fn finish(self) -> Result<()> {
        self.out
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }
}

/// Read a manifest back (tests and later stages).
pub fn read_manifest(path: &Path) -> Result<Vec<ManifestEntry>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut v = vec![];
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        v.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: bad manifest line", path.display(), i + 1))?,
        );
    }
    Ok(v)
}

pub fn write_meta(path: &Path, meta: &Meta) -> Result<()> {
    let text = serde_json::to_vec_pretty(meta)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub fn read_meta(path: &Path) -> Result<Meta> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
}
