//! Streaming ingest: archive bytes -> hash -> decompress -> tar entries ->
//! safe unpack. One pass over the data; memory stays bounded whatever the
//! archive size (buffers, the xz block cache and one record per directory).

use super::manifest::{EntryKind, ManifestEntry, ManifestWriter, MANIFEST, TREE};
use super::unpack::{display_name, normalize, Attrs, Unpacker};
use crate::progress::Progress;
use anyhow::{bail, Context, Result};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use tar::EntryType;

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
                    .memlimit_threading(4 << 30)
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
    let decoder = Decoder::new(compression, raw).with_context(context_of(archive))?;

    let tree = dest.join(TREE);
    std::fs::create_dir(&tree).with_context(|| format!("creating {}", tree.display()))?;
    let mut manifest = ManifestWriter::create(&dest.join(MANIFEST))?;
    let mut unpacker = Unpacker::new(&tree);
    let mut tar = tar::Archive::new(EofWatch {
        inner: decoder,
        hit_eof: false,
    });
    let (mut entries, mut size) = (0u64, 0u64);
    let context = || format!("reading the archive {}", archive.display());
    for entry in tar.entries().with_context(context)? {
        let mut entry = entry.with_context(context)?;
        let raw_name = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_name).into_owned();
        let record = unpack_entry(&mut unpacker, &mut entry)
            .with_context(|| format!("archive entry `{shown}` in {}", archive.display()))?;
        if let Some(rec) = record {
            if rec.kind == EntryKind::File {
                size += rec.size;
            }
            entries += 1;
            manifest.push(&rec)?;
        }
    }
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
    // Directory metadata is applied last: its errors need the name too.
    let skipped = unpacker.finish().with_context(context_of(archive))?;
    if skipped.devices + skipped.xattrs > 0 {
        tracing::warn!(
            "not running as root: left out {} device nodes and {} extended attributes",
            skipped.devices,
            skipped.xattrs
        );
    }
    manifest.finish()?;
    Ok(Ingested {
        hashes,
        compression,
        entries,
        size,
    })
}

fn context_of(archive: &Path) -> impl Fn() -> String + '_ {
    move || format!("unpacking {}", archive.display())
}

/// Unpack one entry; returns its manifest record (None for pax globals).
fn unpack_entry<R: Read>(
    un: &mut Unpacker,
    entry: &mut tar::Entry<'_, R>,
) -> Result<Option<ManifestEntry>> {
    let etype = entry.header().entry_type();
    if matches!(etype, EntryType::XGlobalHeader) {
        return Ok(None);
    }
    let rel = normalize(&entry.path()?)?;
    let h = entry.header().clone();
    let mut attrs = Attrs {
        mode: h.mode()? & 0o7777,
        uid: h.uid()?,
        gid: h.gid()?,
        mtime: h.mtime()? as i64,
        mtime_nsec: 0,
        xattrs: vec![],
    };
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            let key = ext.key()?;
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                attrs
                    .xattrs
                    .push((name.to_string(), ext.value_bytes().to_vec()));
            } else if key == "mtime" {
                (attrs.mtime, attrs.mtime_nsec) = parse_pax_time(ext.value()?)?;
            } else if key == "uid" {
                attrs.uid = ext.value()?.parse().context("pax uid")?;
            } else if key == "gid" {
                attrs.gid = ext.value()?.parse().context("pax gid")?;
            }
        }
    }
    let link = entry.link_name()?.map(|l| l.to_string_lossy().into_owned());
    let mut rec = ManifestEntry {
        path: display_name(&rel),
        kind: EntryKind::File,
        mode: attrs.mode,
        uid: attrs.uid,
        gid: attrs.gid,
        size: 0,
        mtime: attrs.mtime,
        mtime_nsec: attrs.mtime_nsec,
        link: None,
        rdev: None,
        xattrs: attrs
            .xattrs
            .iter()
            .map(|(k, v)| (k.clone(), hex::encode(v)))
            .collect::<BTreeMap<_, _>>(),
    };
    match etype {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            if rel.as_os_str().is_empty() {
                bail!("a regular file cannot be the tree root");
            }
            rec.size = entry.size();
            un.file(&rel, &attrs, rec.size, entry)?;
        }
        EntryType::Directory => {
            rec.kind = EntryKind::Dir;
            un.directory(&rel, attrs)?;
        }
        EntryType::Symlink => {
            let target = link.clone().context("symlink without a target")?;
            rec.kind = EntryKind::Symlink;
            rec.link = link;
            un.symlink(&rel, Path::new(&target), &attrs)?;
        }
        EntryType::Link => {
            let target = entry.link_name()?.context("hardlink without a target")?;
            rec.kind = EntryKind::Hardlink;
            rec.link = Some(display_name(&normalize(&target)?));
            un.hardlink(&rel, &target)?;
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            rec.kind = match etype {
                EntryType::Char => EntryKind::Char,
                EntryType::Block => EntryKind::Block,
                _ => EntryKind::Fifo,
            };
            // Only device entries carry device numbers.
            let rdev = if rec.kind == EntryKind::Fifo {
                (0, 0)
            } else {
                (
                    h.device_major()?.unwrap_or(0),
                    h.device_minor()?.unwrap_or(0),
                )
            };
            if rec.kind != EntryKind::Fifo {
                rec.rdev = Some(rdev);
            }
            un.special(&rel, rec.kind, rdev, &attrs)?;
        }
        other => bail!("unsupported entry type {other:?}"),
    }
    Ok(Some(rec))
}

/// pax times are decimal seconds with an optional fraction ("123.456").
fn parse_pax_time(s: &str) -> Result<(i64, u32)> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs
        .parse()
        .with_context(|| format!("bad pax time `{s}`"))?;
    let mut nanos = 0u32;
    for (i, c) in frac.chars().take(9).enumerate() {
        let d = c
            .to_digit(10)
            .with_context(|| format!("bad pax time `{s}`"))?;
        nanos += d * 10u32.pow(8 - i as u32);
    }
    // Negative times count the fraction away from zero.
    if (secs < 0 || s.starts_with('-')) && nanos > 0 {
        return Ok((secs - 1, 1_000_000_000 - nanos));
    }
    Ok((secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time("12").unwrap(), (12, 0));
        assert_eq!(
            parse_pax_time("1795553984.319322883").unwrap(),
            (1795553984, 319322883)
        );
        assert_eq!(parse_pax_time("1.5").unwrap(), (1, 500_000_000));
        assert_eq!(parse_pax_time("-1.5").unwrap(), (-2, 500_000_000));
    }

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
