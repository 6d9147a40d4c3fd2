//! Streaming ingest: archive bytes -> hash -> decompress -> tar entries ->
//! safe unpack. One pass over the data; memory stays bounded whatever the
//! archive size (buffers, the xz block cache and one record per directory).

use super::manifest::{EntryKind, ManifestEntry, ManifestWriter, MANIFEST, TREE};
use crate::progress::Progress;
use crate::unpack::{display_name, unpack_tar, Entry};
use anyhow::{bail, Context, Result};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

/// Compression formats, told apart by their first bytes, not by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Zstd,
    Gzip,
}

impl Compression {
    pub fn detect(magic: &[u8]) -> Result<Compression> {
        Ok(if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(b"BZh") {
            bail!("bzip2 archives are not supported: recompress with xz or zstd")
        } else {
            Compression::None
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
        }
    }
}

/// Digests of the raw archive bytes, computed while they stream past.
pub struct Hashes {
    pub sha256: String,
    pub md5: String,
}

struct HashingReader<R> {
    inner: R,
    sha256: Sha256,
    md5: Option<Md5>,
    progress: Progress,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha256.update(&buf[..n]);
        if let Some(m) = &mut self.md5 {
            m.update(&buf[..n]);
        }
        self.progress.inc(n as u64);
        Ok(n)
    }
}

impl<R> HashingReader<R> {
    fn finish(self) -> Hashes {
        self.progress.finish();
        Hashes {
            sha256: hex::encode(self.sha256.finalize()),
            md5: self
                .md5
                .map(|m| hex::encode(m.finalize()))
                .unwrap_or_default(),
        }
    }
}

/// Memory the threaded xz decoder may use for its threads' blocks. Each
/// thread holds a whole block, compressed and decoded (24 MiB decoded for
/// the Pi fixture's blocks); past this limit liblzma runs fewer threads, down
/// to one, instead of growing: every command stays under 150 MiB whatever
/// the archive's block size (issue 16).
const XZ_THREADING_MEMLIMIT: u64 = 96 << 20;

enum Decoder<R: BufRead> {
    Plain(R),
    Xz(liblzma::bufread::XzDecoder<R>),
    Zstd(zstd::stream::read::Decoder<'static, R>),
    Gzip(flate2::bufread::MultiGzDecoder<R>),
}

impl<R: BufRead> Decoder<R> {
    fn new(c: Compression, r: R) -> Result<Decoder<R>> {
        Ok(match c {
            Compression::None => Decoder::Plain(r),
            Compression::Xz => {
                let threads = std::thread::available_parallelism()
                    .map(|n| n.get() as u32)
                    .unwrap_or(1);
                // The threading memlimit must be set, or liblzma silently
                // decodes with one thread; multi-block archives then decode
                // in parallel with our writing.
                let stream = liblzma::stream::MtStreamBuilder::new()
                    .threads(threads)
                    .memlimit_threading(XZ_THREADING_MEMLIMIT)
                    .memlimit_stop(u64::MAX)
                    .decoder()
                    .context("starting the xz decoder")?;
                Decoder::Xz(liblzma::bufread::XzDecoder::new_stream(r, stream))
            }
            Compression::Zstd => {
                let mut d = zstd::stream::read::Decoder::with_buffer(r)
                    .context("starting the zstd decoder")?;
                d.window_log_max(31)
                    .context("configuring the zstd decoder")?;
                Decoder::Zstd(d)
            }
            Compression::Gzip => Decoder::Gzip(flate2::bufread::MultiGzDecoder::new(r)),
        })
    }

    /// Read the compressed stream to its end (so its integrity checks run)
    /// and give back the raw reader.
    fn finish(mut self) -> io::Result<R> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(match self {
            Decoder::Plain(r) => r,
            Decoder::Xz(d) => d.into_inner(),
            Decoder::Zstd(d) => d.finish(),
            Decoder::Gzip(d) => d.into_inner(),
        })
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Xz(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Gzip(d) => d.read(buf),
        }
    }
}

/// Notes whether the tar reader ever hit the end of the data: a complete
/// archive ends with its zero blocks before that, so hitting it means the
/// archive was cut short.
struct EofWatch<R> {
    inner: R,
    hit_eof: bool,
}

impl<R: Read> Read for EofWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.hit_eof = true;
        }
        Ok(n)
    }
}

/// What one ingest produced.
pub struct Ingested {
    pub hashes: Hashes,
    pub compression: Compression,
    pub entries: u64,
    pub size: u64,
}

/// Unpack `archive` into `dest/tree` and write `dest/manifest.jsonl`.
/// `dest` must be a new directory; on error its content is garbage and the
/// caller removes it.
pub fn ingest_archive(archive: &Path, dest: &Path, want_md5: bool) -> Result<Ingested> {
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let len = file.metadata().ok().map(|m| m.len());
    let label = format!(
        "unpacking {}",
        archive
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let hashing = HashingReader {
        inner: file,
        sha256: Sha256::new(),
        md5: want_md5.then(Md5::new),
        progress: Progress::bytes(&label, len),
    };
    let mut raw = BufReader::with_capacity(1 << 20, hashing);
    let magic = raw
        .fill_buf()
        .with_context(|| format!("reading {}", archive.display()))?;
    let compression = Compression::detect(magic).with_context(|| archive.display().to_string())?;
    let decoder = Decoder::new(compression, raw)
        .with_context(|| format!("unpacking {}", archive.display()))?;

    let tree = dest.join(TREE);
    std::fs::create_dir(&tree).with_context(|| format!("creating {}", tree.display()))?;
    let mut manifest = ManifestWriter::create(&dest.join(MANIFEST))?;
    let mut tar = tar::Archive::new(EofWatch {
        inner: decoder,
        hit_eof: false,
    });
    let (mut entries, mut size) = (0u64, 0u64);
    let context = || format!("reading the archive {}", archive.display());
    unpack_tar(&mut tar, &tree, archive, |e| {
        if e.kind == EntryKind::File {
            size += e.size;
        }
        entries += 1;
        manifest.push(&record(e))
    })?;
    let watch = tar.into_inner();
    if watch.hit_eof {
        bail!(
            "{} is truncated: it ends without the tar end-of-archive blocks",
            archive.display()
        );
    }
    let mut raw = watch
        .inner
        .finish()
        .with_context(|| format!("checking the compressed stream of {}", archive.display()))?;
    // Trailing bytes after the compressed stream still count in the digest.
    io::copy(&mut raw, &mut io::sink()).with_context(context)?;
    let hashes = raw.into_inner().finish();
    manifest.finish()?;
    Ok(Ingested {
        hashes,
        compression,
        entries,
        size,
    })
}

/// The manifest line of an unpacked entry.
fn record(e: Entry) -> ManifestEntry {
    ManifestEntry {
        path: display_name(&e.path),
        kind: e.kind,
        mode: e.attrs.mode,
        uid: e.attrs.uid,
        gid: e.attrs.gid,
        size: e.size,
        mtime: e.attrs.mtime,
        mtime_nsec: e.attrs.mtime_nsec,
        link: e.link,
        rdev: e.rdev,
        xattrs: e
            .attrs
            .xattrs
            .iter()
            .map(|(k, v)| (k.clone(), hex::encode(v)))
            .collect::<BTreeMap<_, _>>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_content() {
        assert_eq!(
            Compression::detect(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1]).unwrap(),
            Compression::Xz
        );
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]).unwrap(),
            Compression::Zstd
        );
        assert_eq!(
            Compression::detect(&[0x1f, 0x8b, 8]).unwrap(),
            Compression::Gzip
        );
        assert_eq!(Compression::detect(b"./etc").unwrap(), Compression::None);
        assert!(Compression::detect(b"BZh91AY").is_err());
    }
}
