//! File listings of a node tree, from a directory or from a tarball, and the
//! difference between two of them (`deploy --diff`). A tarball's listing is
//! read while its sha256 is computed, so verifying a bundle costs one pass.

use crate::unpack::normalize;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// What `--diff` compares: type, permissions, owner and content (file hash,
/// link target or device number). Times are left out on purpose: a rebuilt
/// but identical file is not a change a reader wants to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub content: String,
}

/// Relative path (no `./` prefix) to entry; the tree root itself is left out.
pub type Listing = BTreeMap<String, Entry>;

fn hash_reader(r: &mut impl Read) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

use crate::artifact::sha256_file;

/// Listing of a directory tree; `with_content` also hashes every file.
pub fn of_dir(root: &Path, with_content: bool) -> Result<Listing> {
    let mut out = Listing::new();
    for e in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
    {
        let e = e.with_context(|| format!("walking {}", root.display()))?;
        let rel = e
            .path()
            .strip_prefix(root)
            .expect("walkdir stays under its root")
            .to_string_lossy()
            .into_owned();
        let m = e
            .path()
            .symlink_metadata()
            .with_context(|| format!("reading {}", e.path().display()))?;
        let ft = m.file_type();
        let (kind, content) = if ft.is_dir() {
            ('d', String::new())
        } else if ft.is_symlink() {
            let t = std::fs::read_link(e.path())
                .with_context(|| format!("reading link {}", e.path().display()))?;
            ('l', t.to_string_lossy().into_owned())
        } else if ft.is_char_device() {
            ('c', m.rdev().to_string())
        } else if ft.is_block_device() {
            ('b', m.rdev().to_string())
        } else if ft.is_fifo() {
            ('p', String::new())
        } else if ft.is_file() {
            let c = if with_content {
                sha256_file(e.path())?
            } else {
                String::new()
            };
            ('f', c)
        } else {
            ('s', String::new())
        };
        out.insert(
            rel,
            Entry {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: if kind == 'f' { m.len() } else { 0 },
                content,
            },
        );
    }
    Ok(out)
}

/// Passes bytes through while hashing them.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// The sha256 of a `.tar.zst` file and the listing of its entries, in one
/// pass over the file.
pub fn of_tarball(path: &Path) -> Result<(String, Listing)> {
    let ctx = || format!("reading {}", path.display());
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let hashing = HashingReader {
        inner: f,
        hash: Sha256::new(),
    };
    let mut dec = zstd::stream::read::Decoder::new(hashing).with_context(ctx)?;
    dec.window_log_max(31).with_context(ctx)?;
    let mut ar = tar::Archive::new(dec);
    let mut out = Listing::new();
    let mut file_hashes: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for entry in ar.entries().with_context(ctx)? {
        let mut e = entry.with_context(ctx)?;
        let name = e.path().with_context(ctx)?.into_owned();
        let rel = normalize(&name)
            .with_context(|| format!("archive entry `{}` in {}", name.display(), path.display()))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let rel = rel.to_string_lossy().into_owned();
        let h = e.header().clone();
        let t = h.entry_type();
        let (kind, content, size) = if t.is_dir() {
            ('d', String::new(), 0)
        } else if t.is_symlink() {
            let target = e.link_name().with_context(ctx)?.unwrap_or_default();
            ('l', target.to_string_lossy().into_owned(), 0)
        } else if t.is_hard_link() {
            // A hard link has the content of its target, seen earlier.
            let target = e.link_name().with_context(ctx)?.unwrap_or_default();
            let target = normalize(&target)?;
            let (c, s) = file_hashes
                .get(&*target.to_string_lossy())
                .cloned()
                .unwrap_or_default();
            ('f', c, s)
        } else if t.is_character_special() || t.is_block_special() {
            let dev = nix::sys::stat::makedev(
                h.device_major().with_context(ctx)?.unwrap_or(0).into(),
                h.device_minor().with_context(ctx)?.unwrap_or(0).into(),
            );
            (
                if t.is_character_special() { 'c' } else { 'b' },
                dev.to_string(),
                0,
            )
        } else if t.is_fifo() {
            ('p', String::new(), 0)
        } else {
            let size = e.size();
            let c = hash_reader(&mut e).with_context(ctx)?;
            file_hashes.insert(rel.clone(), (c.clone(), size));
            ('f', c, size)
        };
        out.insert(
            rel,
            Entry {
                kind,
                mode: h.mode().with_context(ctx)? & 0o7777,
                uid: h.uid().with_context(ctx)? as u32,
                gid: h.gid().with_context(ctx)? as u32,
                size,
                content,
            },
        );
    }
    // Whatever follows the tar end marker is part of the file's hash too.
    let mut rest = ar.into_inner().finish();
    std::io::copy(&mut rest, &mut std::io::sink()).with_context(ctx)?;
    let hashing = rest.into_inner();
    Ok((hex::encode(hashing.hash.finalize()), out))
}

/// Lines `+ path` (added), `- path` (removed), `~ path` (changed), sorted
/// by path. Paths listed in `ignore` (chbuild's own marker) are skipped.
pub fn diff(current: &Listing, new: &Listing, ignore: &[&str]) -> Vec<String> {
    let mut paths: Vec<&String> = current.keys().chain(new.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter(|p| !ignore.contains(&p.as_str()))
        .filter_map(|p| match (current.get(p), new.get(p)) {
            (None, Some(_)) => Some(format!("+ {p}")),
            (Some(_), None) => Some(format!("- {p}")),
            (Some(a), Some(b)) if a != b => Some(format!("~ {p}")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_marks_added_removed_changed() {
        let e = |c: &str| Entry {
            kind: 'f',
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 1,
            content: c.into(),
        };
        let a: Listing = [("a", e("1")), ("b", e("1")), ("m", e("x"))]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let b: Listing = [("b", e("2")), ("c", e("1")), ("m", e("y"))]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(diff(&a, &b, &["m"]), vec!["- a", "~ b", "+ c"]);
    }
}
