//! Block maps in bmaptool's XML format (version 2.0, SHA256): the ranges
//! of the image that hold data, found with SEEK_DATA/SEEK_HOLE. Only those
//! are written to a card (by `chbuild sd --dev` or `bmaptool copy`).
//! One pass over the image hashes the ranges and the whole image.

use anyhow::{bail, ensure, Context, Result};
use nix::unistd::{lseek, Whence};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

pub const BLOCK_SIZE: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// First and last block, inclusive (as in the XML).
    pub first: u64,
    pub last: u64,
    /// SHA256 of the range's bytes, hex.
    pub sha256: String,
}

impl Range {
    pub fn offset(&self, block_size: u64) -> u64 {
        self.first * block_size
    }
    pub fn len(&self, block_size: u64) -> u64 {
        (self.last - self.first + 1) * block_size
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMap {
    pub image_size: u64,
    pub block_size: u64,
    pub ranges: Vec<Range>,
}

impl BlockMap {
    pub fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }
    pub fn mapped_blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.last - r.first + 1).sum()
    }
    /// Bytes a bmap copy writes (the last block may be short).
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| {
                let end = ((r.last + 1) * self.block_size).min(self.image_size);
                end - r.first * self.block_size
            })
            .sum()
    }
}

/// The data ranges of a sparse file, in whole blocks.
fn data_ranges(f: &File, size: u64) -> Result<Vec<(u64, u64)>> {
    let fd = f.as_raw_fd();
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match lseek(fd, pos as i64, Whence::SeekData) {
            Ok(s) => s as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e).context("SEEK_DATA"),
        };
        let end = lseek(fd, start as i64, Whence::SeekHole).context("SEEK_HOLE")? as u64;
        let first = start / BLOCK_SIZE;
        let last = (end.min(size) - 1) / BLOCK_SIZE;
        match out.last_mut() {
            Some(prev) if prev.1 + 1 >= first => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
        pos = end;
    }
    Ok(out)
}

/// Feed `[from, to)` of the image to `h`, reading only the data spans and
/// feeding zeros for holes (no read syscalls for the empty parts).
fn hash_span(
    f: &File,
    h: &mut Sha256,
    spans: &[(u64, u64)],
    from: u64,
    to: u64,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = from;
    let feed_zeros = |h: &mut Sha256, mut n: u64| {
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            h.update(&ZEROS[..k]);
            n -= k as u64;
        }
    };
    for &(first, last) in spans {
        let start = (first * BLOCK_SIZE).max(from);
        let end = ((last + 1) * BLOCK_SIZE).min(to);
        if start >= end {
            continue;
        }
        feed_zeros(h, start - pos);
        pos = start;
        while pos < end {
            let n = (end - pos).min(buf.len() as u64) as usize;
            f.read_exact_at(&mut buf[..n], pos)?;
            h.update(&buf[..n]);
            pos += n as u64;
        }
    }
    feed_zeros(h, to.saturating_sub(pos));
    Ok(())
}

/// The hash of the image's first `end` bytes, computed while the rest of
/// the image is still being made (the builder overlaps it with mke2fs).
pub struct PrefixHash {
    end: u64,
    state: Sha256,
}

pub fn hash_prefix(image: &Path, end: u64) -> Result<PrefixHash> {
    let f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let spans = data_ranges(&f, end).with_context(|| format!("mapping {}", image.display()))?;
    let mut state = Sha256::new();
    hash_span(&f, &mut state, &spans, 0, end)
        .with_context(|| format!("reading {}", image.display()))?;
    Ok(PrefixHash { end, state })
}

/// Map the image and hash it: the block map with a checksum per range, and
/// the SHA256 of the whole image (holes read as zeros). The two hashes run
/// on two threads; `prefix` is a head start on the whole-image hash.
/// `then` runs on the range thread once its checksums are done: the
/// whole-image hash takes longest and cannot start before mke2fs ends, so
/// other work waits for a CPU the hash does not need (a third thread would
/// take turns with it on a two-core machine).
pub fn map_image<T: FnOnce() -> Result<()> + Send>(
    image: &Path,
    prefix: Option<PrefixHash>,
    then: T,
) -> Result<(BlockMap, String)> {
    let f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let size = f
        .metadata()
        .with_context(|| format!("reading {}", image.display()))?
        .len();
    let spans = data_ranges(&f, size).with_context(|| format!("mapping {}", image.display()))?;
    let (from, mut whole) = match prefix {
        Some(p) if p.end <= size => (p.end, p.state),
        _ => (0, Sha256::new()),
    };
    let (ranges, whole) = std::thread::scope(|s| -> Result<_> {
        let ranges = s.spawn(|| -> Result<Vec<Range>> {
            let mut out = Vec::with_capacity(spans.len());
            for &(first, last) in &spans {
                let mut h = Sha256::new();
                let end = ((last + 1) * BLOCK_SIZE).min(size);
                hash_span(&f, &mut h, &[(first, last)], first * BLOCK_SIZE, end)
                    .with_context(|| format!("reading {}", image.display()))?;
                out.push(Range {
                    first,
                    last,
                    sha256: hex::encode(h.finalize()),
                });
            }
            then()?;
            Ok(out)
        });
        hash_span(&f, &mut whole, &spans, from, size)
            .with_context(|| format!("reading {}", image.display()))?;
        let ranges = ranges
            .join()
            .map_err(|_| anyhow::anyhow!("the hashing thread panicked"))??;
        Ok((ranges, hex::encode(whole.finalize())))
    })?;
    let map = BlockMap {
        image_size: size,
        block_size: BLOCK_SIZE,
        ranges,
    };
    Ok((map, whole))
}

const ZERO_SUM: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The XML text, with its own checksum filled in as bmaptool does: the
/// SHA256 of the file with the checksum field all zeros.
pub fn render_bmap(map: &BlockMap) -> String {
    let mapped = map.mapped_blocks();
    let mut x = String::new();
    x.push_str("<?xml version=\"1.0\" ?>\n");
    x.push_str("<!-- Block map of an image made by chbuild: only the listed block\n");
    x.push_str("     ranges hold data and have to be written to the card. -->\n");
    x.push_str("<bmap version=\"2.0\">\n");
    let _ = writeln!(x, "    <ImageSize> {} </ImageSize>", map.image_size);
    let _ = writeln!(x, "    <BlockSize> {} </BlockSize>", map.block_size);
    let _ = writeln!(x, "    <BlocksCount> {} </BlocksCount>", map.blocks_count());
    let _ = writeln!(x, "    <MappedBlocksCount> {mapped} </MappedBlocksCount>");
    x.push_str("    <ChecksumType> sha256 </ChecksumType>\n");
    let _ = writeln!(x, "    <BmapFileChecksum> {ZERO_SUM} </BmapFileChecksum>");
    x.push_str("    <BlockMap>\n");
    for r in &map.ranges {
        if r.first == r.last {
            let _ = writeln!(
                x,
                "        <Range chksum=\"{}\"> {} </Range>",
                r.sha256, r.first
            );
        } else {
            let _ = writeln!(
                x,
                "        <Range chksum=\"{}\"> {}-{} </Range>",
                r.sha256, r.first, r.last
            );
        }
    }
    x.push_str("    </BlockMap>\n</bmap>\n");
    let sum = hex::encode(Sha256::digest(x.as_bytes()));
    x.replacen(ZERO_SUM, &sum, 1)
}

fn tag<'a>(text: &'a str, name: &str) -> Result<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let a = text
        .find(&open)
        .with_context(|| format!("no <{name}> element"))?
        + open.len();
    let b = text[a..]
        .find(&close)
        .with_context(|| format!("no </{name}>"))?;
    Ok(text[a..a + b].trim())
}

/// Parse a bmap written by chbuild or bmaptool (version 2.x, sha256), and
/// check its own checksum.
pub fn parse_bmap(text: &str) -> Result<BlockMap> {
    ensure!(
        text.contains("<bmap version=\"2."),
        "only bmap format version 2 is supported"
    );
    let num = |name: &str| -> Result<u64> {
        tag(text, name)?
            .parse()
            .with_context(|| format!("<{name}> is not a number"))
    };
    ensure!(
        tag(text, "ChecksumType")? == "sha256",
        "only sha256 block maps are supported"
    );
    let sum = tag(text, "BmapFileChecksum")?;
    let zeroed = text.replacen(sum, ZERO_SUM, 1);
    ensure!(
        hex::encode(Sha256::digest(zeroed.as_bytes())) == sum,
        "the bmap file's own checksum does not match: it is damaged"
    );
    let map_text = tag(text, "BlockMap")?;
    let mut ranges = Vec::new();
    for part in map_text.split("</Range>") {
        let Some(i) = part.find("<Range") else {
            continue;
        };
        let el = &part[i..];
        let q = el.find("chksum=\"").context("a <Range> without chksum")? + 8;
        let sha = &el[q..q + 64.min(el.len() - q)];
        let body = el[el.find('>').context("bad <Range>")? + 1..].trim();
        let (first, last) = match body.split_once('-') {
            Some((a, b)) => (a.trim().parse()?, b.trim().parse()?),
            None => {
                let v = body.parse()?;
                (v, v)
            }
        };
        ensure!(first <= last, "bad range {body}");
        ranges.push(Range {
            first,
            last,
            sha256: sha.to_string(),
        });
    }
    let map = BlockMap {
        image_size: num("ImageSize")?,
        block_size: num("BlockSize")?,
        ranges,
    };
    ensure!(map.block_size > 0, "block size 0");
    if map.blocks_count() != num("BlocksCount")? || map.mapped_blocks() != num("MappedBlocksCount")?
    {
        bail!("the bmap's block counts do not match its ranges");
    }
    Ok(map)
}

/// Write `<image>.bmap` and `<image>.sha256` (sha256sum format) beside the
/// image, each through a temp file and a rename.
pub fn write_sidecars(
    image: &Path,
    map: &BlockMap,
    sha256: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let name = image
        .file_name()
        .context("the image path has no file name")?
        .to_string_lossy()
        .into_owned();
    let bmap = image.with_file_name(format!("{name}.bmap"));
    let sums = super::sha256_path(image);
    super::write_atomic(&bmap, render_bmap(map).as_bytes())?;
    super::write_atomic(&sums, format!("{sha256}  {name}\n").as_bytes())?;
    Ok((bmap, sums))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn sparse_file_maps_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("x.img");
        let f = File::create(&img).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1u8; 10], 0).unwrap();
        f.write_all_at(&[2u8; 8192], 32 << 20).unwrap();
        drop(f);
        let (map, whole) = map_image(&img, None, || Ok(())).unwrap();
        assert_eq!(map.ranges.len(), 2);
        let prefix = hash_prefix(&img, 16 << 20).unwrap();
        assert_eq!(
            map_image(&img, Some(prefix), || Ok(())).unwrap(),
            (map.clone(), whole.clone())
        );
        assert_eq!(map.ranges[0].first, 0);
        assert!(map.mapped_bytes() >= 8192 + 10 && map.mapped_bytes() < (4 << 20));
        let expect = hex::encode(Sha256::digest(std::fs::read(&img).unwrap()));
        assert_eq!(whole, expect);
        let text = render_bmap(&map);
        assert_eq!(parse_bmap(&text).unwrap(), map);
        let broken = text.replacen("<BlockSize> 4096", "<BlockSize> 4097", 1);
        assert!(parse_bmap(&broken).is_err());
    }
}
