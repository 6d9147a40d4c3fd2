//! Single files kept by their sha256 (the k3s binary and images of an
//! air-gap bundle): `<store>/blobs/<sha256>`, read-only. A local file is
//! copied in while it is hashed, a URL is downloaded into `downloads/`
//! (resumable, see `fetch`); either way the file gets its name only once
//! its sha256 is the profile's, and a mismatch leaves nothing behind.

use super::{fetch, Store};
use crate::fs::{Durability, Inode, NewFile};
use crate::profile::{Blob, BlobSource, Checksum, ChecksumAlgorithm, Profile};
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::path::PathBuf;

pub(super) const BLOBS: &str = "blobs";

impl Store {
    /// The stored copy of `blob`, ingested first when the store lacks it.
    pub fn ensure_blob(&self, blob: &Blob) -> Result<PathBuf> {
        let dir = self.root.join(BLOBS);
        let dest = dir.join(&blob.sha256);
        if dest.is_file() {
            return Ok(dest);
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let _lock = self.lock()?;
        if dest.is_file() {
            return Ok(dest);
        }
        let want = Checksum {
            algorithm: ChecksumAlgorithm::Sha256,
            hex: blob.sha256.clone(),
        };
        match &blob.source {
            BlobSource::Url(url) => {
                let file = fetch::download(url, Some(&want), &self.root.join(super::DOWNLOADS))
                    .with_context(|| format!("fetching {} = {url}", blob.key))?;
                fs::rename(&file, &dest).with_context(|| {
                    format!("renaming {} to {}", file.display(), dest.display())
                })?;
                crate::fs::sync_dir(&dir)?;
            }
            BlobSource::Path(path) => {
                let mut input = fs::File::open(path)
                    .with_context(|| format!("{}: opening {}", blob.key, path.display()))?;
                // Dropped unless committed: a mismatch leaves no file.
                let new = NewFile::create(&dest, Inode::new(0o444, Durability::Publish))?;
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = input
                        .read(&mut buf)
                        .with_context(|| format!("{}: reading {}", blob.key, path.display()))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    new.file()
                        .write_all(&buf[..n])
                        .with_context(|| format!("writing {}", new.path().display()))?;
                }
                fetch::verify(
                    &path.display().to_string(),
                    &want,
                    &hex::encode(h.finalize()),
                )
                .with_context(|| format!("{}: the file was not stored", blob.key))?;
                new.commit()?;
            }
        }
        tracing::info!(
            "stored {} ({}) as {}",
            blob.key,
            blob.source,
            dest.display()
        );
        Ok(dest)
    }

    /// Remove the stored files whose sha256 is not in `keep`. Only after
    /// [`Store::gc`], which leaves this process holding the store alone.
    pub fn gc_blobs(&self, keep: &[String]) -> Result<Vec<String>> {
        let dir = self.root.join(BLOBS);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        let mut removed = vec![];
        for e in entries {
            let e = e.with_context(|| format!("reading {}", dir.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                fs::remove_file(e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
                removed.push(format!("{BLOBS}/{name}"));
            }
        }
        removed.sort();
        Ok(removed)
    }

    /// The profile with its k3s bundle's files in the store (each
    /// `Blob::stored` set), ready for the roles to bake.
    pub fn with_k3s_bundle(&self, profile: &Profile) -> Result<Profile> {
        let mut p = profile.clone();
        if let Some(b) = &mut p.features.k3s_bundle {
            for blob in [&mut b.binary, &mut b.images] {
                blob.stored = Some(self.ensure_blob(blob)?);
            }
        }
        Ok(p)
    }
}
