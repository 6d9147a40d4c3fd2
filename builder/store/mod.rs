//! Base store: each base root filesystem is unpacked once into a
//! content-addressed directory; node trees are hardlinked from it.
//!
//! Layout of the store directory:
//!
//! ```text
//! <store>/<digest>/tree/            the unpacked root filesystem
//! <store>/<digest>/manifest.jsonl   one line per archive entry
//! <store>/<digest>/meta.json        source, archive sha256, totals
//! <store>/index/<key>               md5 checksums and local archives -> digest
//! <store>/blobs/<sha256>            single files (k3s bundles), see `blob`
//! <store>/downloads/                downloads (kept partial for resuming)
//! <store>/layers/<key>/             package layers (see [`layer`]) and
//!                                   Zero boot layers (see [`zero_boot`])
//! <store>/apt/                      apt's downloads and indexes, a cache
//! <store>/.tmp-*/                   ingests and layer builds in progress
//! <store>/.lock                     held while ingesting or pruning
//! <store>/.use                      shared by every run, exclusive for gc
//! ```
//!
//! An entry is built in a `.tmp-*` sibling and renamed to its digest only
//! when complete, so whatever is named by a digest is whole.

mod blob;
mod debian;
mod fetch;
mod ingest;
pub mod layer;
pub mod manifest;
pub mod zero_boot;

use crate::fs::{remove_tree, sync_dir};
use crate::profile::{Base, BaseSource, Checksum, ChecksumAlgorithm};
use anyhow::{Context, Result};
use fs4::fs_std::FileExt;
use manifest::{Meta, META, TREE};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub struct Store {
    pub root: PathBuf,
    /// Shared lock on `.use` for as long as this process uses the store:
    /// `gc` takes it exclusively, so it never removes a base under a build.
    in_use: File,
    /// The exclusive lock on `.lock`, shared by this process's threads (see
    /// [`Store::lock`]).
    lock: std::sync::Mutex<Held>,
}

/// The open `.lock` while any thread of this process holds it, and how
/// many do.
#[derive(Default)]
struct Held {
    file: Option<File>,
    holders: usize,
}

/// One thread's share of the store's exclusive lock; the last one dropped
/// unlocks.
pub(crate) struct StoreLock<'a> {
    store: &'a Store,
}

impl Drop for StoreLock<'_> {
    fn drop(&mut self) {
        let mut held = self.store.lock.lock().unwrap_or_else(|e| e.into_inner());
        held.holders -= 1;
        if held.holders == 0 {
            held.file = None;
        }
    }
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

const INDEX: &str = "index";
const DOWNLOADS: &str = "downloads";
const TMP_PREFIX: &str = ".tmp-";
const USE_LOCK: &str = ".use";

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
        for d in [dir.to_path_buf(), dir.join(INDEX), dir.join(DOWNLOADS)] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let path = dir.join(USE_LOCK);
        let in_use = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        if FileExt::try_lock_shared(&in_use).is_err() {
            tracing::info!(
                "waiting for `chbuild store gc` to finish with {}",
                dir.display()
            );
            FileExt::lock_shared(&in_use).with_context(|| format!("locking {}", path.display()))?;
        }
        Ok(Store {
            root: dir.to_path_buf(),
            in_use,
            lock: Default::default(),
        })
    }

    /// The store key of a base, when it can be known without work.
    pub fn digest_of(&self, base: &Base) -> Option<String> {
        match &base.source {
            BaseSource::Archive { path, checksum } => match checksum {
                Some(c) if c.algorithm == ChecksumAlgorithm::Sha256 => Some(c.hex.clone()),
                Some(c) => self.index_get(&md5_key(c)),
                None => self.index_get(&file_key(path).ok()?),
            },
            BaseSource::Url { checksum, url } => match checksum {
                Some(c) if c.algorithm == ChecksumAlgorithm::Sha256 => Some(c.hex.clone()),
                Some(c) => self.index_get(&md5_key(c)),
                None => self.index_get(&url_key(url)),
            },
            BaseSource::Debian(r) => Some(debian::recipe_digest(r)),
        }
    }

    /// Ingest the base unless it is already stored; return its tree.
    pub fn ensure_base(&self, base: &Base) -> Result<BaseTree> {
        if let Some(t) = self.digest_of(base).and_then(|d| self.complete(&d)) {
            tracing::debug!("base {} is already in the store", t.digest);
            return Ok(t);
        }
        let _lock = self.lock()?;
        // Another process may have finished it while we waited.
        if let Some(t) = self.digest_of(base).and_then(|d| self.complete(&d)) {
            return Ok(t);
        }
        match &base.source {
            BaseSource::Archive { path, checksum } => {
                let t = self.ingest(path, checksum.as_ref(), path.display().to_string(), None)?;
                self.index_put(&file_key(path)?, &t.digest)?;
                if let Some(c) = checksum
                    .as_ref()
                    .filter(|c| c.algorithm == ChecksumAlgorithm::Md5)
                {
                    self.index_put(&md5_key(c), &t.digest)?;
                }
                Ok(t)
            }
            BaseSource::Url { url, checksum } => {
                let file = fetch::download(url, checksum.as_ref(), &self.root.join(DOWNLOADS))?;
                let t = self.ingest(&file, checksum.as_ref(), url.clone(), None)?;
                match checksum {
                    Some(c) if c.algorithm == ChecksumAlgorithm::Md5 => {
                        self.index_put(&md5_key(c), &t.digest)?
                    }
                    Some(_) => {}
                    None => {
                        // The URL is the only name an unverified base has.
                        self.index_put(&url_key(url), &t.digest)?;
                        tracing::warn!(
                            "UNVERIFIED base: {url} was not checked against any checksum; \
                             pin it in the profile with checksum = \"sha256:{}\"",
                            t.digest
                        );
                    }
                }
                // The tree is what is kept; the archive was only the way in.
                fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
                Ok(t)
            }
            BaseSource::Debian(r) => {
                debian::check_tools(r)?;
                let work = self.tempdir()?;
                let tar = work.path().join("base.tar");
                debian::build_tar(r, &tar)?;
                self.ingest(
                    &tar,
                    None,
                    debian::describe(r),
                    Some(debian::recipe_digest(r)),
                )
            }
        }
    }

    /// Unpack `archive` into a temporary entry and rename it to its digest
    /// (`key`, or the archive's sha256). Called with the lock held.
    fn ingest(
        &self,
        archive: &Path,
        checksum: Option<&Checksum>,
        source: String,
        key: Option<String>,
    ) -> Result<BaseTree> {
        let started = std::time::Instant::now();
        let tmp = self.tempdir()?;
        let want_md5 = checksum.is_some_and(|c| c.algorithm == ChecksumAlgorithm::Md5);
        let done = ingest::ingest_archive(archive, tmp.path(), want_md5)?;
        if let Some(c) = checksum {
            let actual = match c.algorithm {
                ChecksumAlgorithm::Sha256 => &done.hashes.sha256,
                ChecksumAlgorithm::Md5 => &done.hashes.md5,
            };
            fetch::verify(&archive.display().to_string(), c, actual)?;
        }
        let digest = key.unwrap_or_else(|| done.hashes.sha256.clone());
        if let Some(t) = self.complete(&digest) {
            // The same bytes under another name: keep the entry we have.
            return Ok(t);
        }
        let meta = Meta {
            digest: digest.clone(),
            source,
            archive_sha256: done.hashes.sha256.clone(),
            compression: done.compression.name().into(),
            entries: done.entries,
            size: done.size,
        };
        manifest::write_meta(&tmp.path().join(META), &meta)?;
        // Everything on disk before the name says it is complete.
        let dir =
            File::open(tmp.path()).with_context(|| format!("opening {}", tmp.path().display()))?;
        nix::unistd::syncfs(dir.as_raw_fd())
            .with_context(|| format!("syncing {}", tmp.path().display()))?;
        let dest = self.root.join(&digest);
        fs::rename(tmp.path(), &dest)
            .with_context(|| format!("renaming {} to {}", tmp.path().display(), dest.display()))?;
        let _ = tmp.keep();
        sync_dir(&self.root)?;
        tracing::info!(
            "stored {} ({} entries, {} MiB) in {:.1} s",
            digest,
            done.entries,
            done.size >> 20,
            started.elapsed().as_secs_f64()
        );
        Ok(BaseTree {
            digest: digest.clone(),
            root: dest.join(TREE),
        })
    }

    /// The stored base with this digest, if complete.
    pub fn stored(&self, digest: &str) -> Option<BaseTree> {
        self.complete(digest)
    }

    /// The tree of a complete entry.
    fn complete(&self, digest: &str) -> Option<BaseTree> {
        let dir = self.root.join(digest);
        (is_digest(digest) && dir.join(META).is_file()).then(|| BaseTree {
            digest: digest.to_string(),
            root: dir.join(TREE),
        })
    }

    pub fn list(&self) -> Result<Vec<StoreEntry>> {
        let mut v = vec![];
        for name in self.names()? {
            if self.complete(&name).is_none() {
                continue;
            }
            let meta = manifest::read_meta(&self.root.join(&name).join(META))?;
            v.push(StoreEntry {
                digest: name,
                source: meta.source,
                size: meta.size,
            });
        }
        Ok(v)
    }

    /// Remove every entry and layer whose digest is not in `keep`, with
    /// unfinished ingests, partial downloads, apt's cache and index keys
    /// left pointing nowhere.
    pub fn gc(&self, keep: &[String]) -> Result<Vec<String>> {
        // Every other chbuild using the store must finish first (and the
        // ones started meanwhile wait for this one): builds hardlink from
        // the entries gc removes.
        if self.in_use.try_lock_exclusive().is_err() {
            tracing::info!(
                "waiting for other chbuild runs using {} to finish",
                self.root.display()
            );
            self.in_use
                .lock_exclusive()
                .with_context(|| format!("locking {}", self.root.join(USE_LOCK).display()))?;
        }
        let _lock = self.lock()?;
        let mut removed = vec![];
        for name in self.names()? {
            let path = self.root.join(&name);
            if name.starts_with(TMP_PREFIX) {
                continue;
            } else if self.complete(&name).is_some() && !keep.contains(&name) {
                // Renamed first so a half-removed entry never looks whole.
                let doomed = self.root.join(format!("{TMP_PREFIX}gc-{name}"));
                fs::rename(&path, &doomed)
                    .with_context(|| format!("renaming {}", path.display()))?;
                remove_tree(&doomed)?;
                removed.push(name);
            }
        }
        removed.extend(self.gc_layers(keep)?);
        self.remove_abandoned()?;
        for dir in [INDEX, DOWNLOADS] {
            let dir = self.root.join(dir);
            for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
                let e = e.with_context(|| format!("reading {}", dir.display()))?;
                let stale = dir.ends_with(DOWNLOADS)
                    || fs::read_to_string(e.path())
                        .map(|d| self.complete(d.trim()).is_none())
                        .unwrap_or(true);
                if stale {
                    fs::remove_file(e.path())
                        .with_context(|| format!("removing {}", e.path().display()))?;
                }
            }
        }
        Ok(removed)
    }

    /// Remove unfinished ingests (and entries gc renamed for removal);
    /// only with the lock held, when none can be in progress.
    fn remove_abandoned(&self) -> Result<()> {
        for name in self.names()? {
            if name.starts_with(TMP_PREFIX) {
                tracing::debug!("removing {name}, left by an interrupted run");
                remove_tree(&self.root.join(name))?;
            }
        }
        Ok(())
    }

    fn names(&self) -> Result<Vec<String>> {
        let mut names = vec![];
        for e in
            fs::read_dir(&self.root).with_context(|| format!("reading {}", self.root.display()))?
        {
            let e = e.with_context(|| format!("reading {}", self.root.display()))?;
            names.push(e.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn tempdir(&self) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempdir_in(&self.root)
            .with_context(|| format!("creating a temporary directory in {}", self.root.display()))
    }

    /// Exclusive lock on the store: one chbuild process builds into it (or
    /// collects its garbage) at a time. Threads of this process share it,
    /// so that independent store entries of one run (a Zero boot layer and
    /// the next package layer) are built at once; they never build the
    /// same key (see `pipeline::start_trees`). The thread that takes it
    /// first removes what killed runs left (`.tmp-*`, which would only fill
    /// the disk): no build of this process can be in progress then.
    pub(crate) fn lock(&self) -> Result<StoreLock<'_>> {
        let mut held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if held.holders == 0 {
            let path = self.root.join(".lock");
            let f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            if f.try_lock_exclusive().is_err() {
                tracing::info!("waiting for another chbuild using {}", self.root.display());
                f.lock_exclusive()
                    .with_context(|| format!("locking {}", path.display()))?;
            }
            self.remove_abandoned()?;
            held.file = Some(f);
        }
        held.holders += 1;
        Ok(StoreLock { store: self })
    }

    fn index_get(&self, key: &str) -> Option<String> {
        let d = fs::read_to_string(self.root.join(INDEX).join(key)).ok()?;
        let d = d.trim();
        is_digest(d).then(|| d.to_string())
    }

    fn index_put(&self, key: &str, digest: &str) -> Result<()> {
        let path = self.root.join(INDEX).join(key);
        let inode = crate::fs::Inode::new(0o644, crate::fs::Durability::Publish);
        crate::fs::write_new(&path, digest.as_bytes(), inode)
    }
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Index key of a URL downloaded without a checksum.
fn url_key(url: &str) -> String {
    format!("url-{}", hex::encode(sha2::Sha256::digest(url.as_bytes())))
}

fn md5_key(c: &Checksum) -> String {
    format!("md5-{}", c.hex)
}

/// Identity of a local archive without reading it: a changed file (new
/// size, mtime, ctime or inode) gets a new key and is ingested again.
fn file_key(path: &Path) -> Result<String> {
    let abs = fs::canonicalize(path).with_context(|| format!("opening {}", path.display()))?;
    let md = fs::metadata(&abs).with_context(|| format!("inspecting {}", abs.display()))?;
    let id = format!(
        "{}\0{}\0{}\0{}\0{}.{}\0{}.{}",
        abs.display(),
        md.dev(),
        md.ino(),
        md.size(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec()
    );
    Ok(format!(
        "file-{}",
        hex::encode(Sha256::digest(id.as_bytes()))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_share_the_lock_and_only_the_first_clears_leftovers() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        // What a killed run left.
        fs::create_dir(t.path().join(".tmp-killed")).unwrap();
        let first = store.lock().unwrap();
        assert!(!t.path().join(".tmp-killed").exists());
        // A build of this process in progress...
        let live = store.tempdir().unwrap();
        // ...survives another thread taking the lock too, without waiting.
        std::thread::scope(|s| {
            s.spawn(|| drop(store.lock().unwrap())).join().unwrap();
        });
        assert!(live.path().is_dir());
        // Another process waits for it until the last holder lets go.
        let other = File::create(t.path().join(".lock")).unwrap();
        assert!(other.try_lock_exclusive().is_err());
        drop(first);
        assert!(other.try_lock_exclusive().is_ok());
    }
}
