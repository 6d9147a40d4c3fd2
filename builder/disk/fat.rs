//! The FAT32 boot partition, built with `fatfs` in memory (file by file on
//! the image is ~10x slower: one syscall per small write) and copied into
//! the image at its offset. Only the chunks fatfs touched are copied, so
//! the image stays sparse and the bmap small.

use anyhow::{bail, Context, Result};
use fatfs::{Date, DateTime, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

const CHUNK: usize = 64 << 10;

/// A sparse in-memory disk: chunks that were never written read as zeros.
struct SparseBuf {
    len: u64,
    pos: u64,
    chunks: BTreeMap<u64, Box<[u8]>>,
}

impl SparseBuf {
    fn new(len: u64) -> SparseBuf {
        SparseBuf {
            len,
            pos: 0,
            chunks: BTreeMap::new(),
        }
    }

    fn read_at(&self, buf: &mut [u8], at: u64) -> usize {
        let n = buf.len().min(self.len.saturating_sub(at) as usize);
        let mut done = 0;
        while done < n {
            let p = at + done as u64;
            let (idx, off) = (p / CHUNK as u64, (p % CHUNK as u64) as usize);
            let take = (CHUNK - off).min(n - done);
            match self.chunks.get(&idx) {
                Some(c) => buf[done..done + take].copy_from_slice(&c[off..off + take]),
                None => buf[done..done + take].fill(0),
            }
            done += take;
        }
        n
    }

    fn write_at(&mut self, buf: &[u8], at: u64) -> usize {
        let n = buf.len().min(self.len.saturating_sub(at) as usize);
        let mut done = 0;
        while done < n {
            let p = at + done as u64;
            let (idx, off) = (p / CHUNK as u64, (p % CHUNK as u64) as usize);
            let take = (CHUNK - off).min(n - done);
            let c = self
                .chunks
                .entry(idx)
                .or_insert_with(|| vec![0u8; CHUNK].into_boxed_slice());
            c[off..off + take].copy_from_slice(&buf[done..done + take]);
            done += take;
        }
        n
    }
}

impl Read for SparseBuf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(buf, self.pos);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for SparseBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() && self.pos >= self.len {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "end of partition"));
        }
        let n = self.write_at(buf, self.pos);
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for SparseBuf {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if p < 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "seek before 0"));
        }
        self.pos = p as u64;
        Ok(self.pos)
    }
}

/// Every timestamp fatfs writes: SOURCE_DATE_EPOCH in UTC (FAT has no zone).
#[derive(Debug)]
struct FixedTime(DateTime);

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn fat_time(epoch: u64) -> DateTime {
    // FAT dates run from 1980 to 2107.
    let epoch = epoch.clamp(315_532_800, 4_354_819_199) as i64;
    let (y, m, d) = civil(epoch.div_euclid(86_400));
    let s = epoch.rem_euclid(86_400);
    DateTime {
        date: Date {
            year: y as u16,
            month: m as u16,
            day: d as u16,
        },
        time: Time {
            hour: (s / 3600) as u16,
            min: (s / 60 % 60) as u16,
            sec: (s % 60) as u16,
            millis: 0,
        },
    }
}

/// Build a FAT32 file system of `size` bytes holding the files of `src`
/// and write it into `image` at `offset`. Returns the bytes written.
pub fn write_fat(
    image: &Path,
    offset: u64,
    size: u64,
    src: &Path,
    volume_id: u32,
    label: &str,
    epoch: u64,
) -> Result<u64> {
    let mut disk = SparseBuf::new(size);
    let mut label_bytes = [b' '; 11];
    for (d, s) in label_bytes
        .iter_mut()
        .zip(label.to_ascii_uppercase().bytes())
    {
        *d = s;
    }
    // Clusters as mkfs.fat picks them: 4 KiB from 260 MiB up, else 512 B,
    // so FAT32 always has its minimum of 65525 clusters.
    let cluster = if size >= 260 << 20 { 4096 } else { 512 };
    fatfs::format_volume(
        &mut disk,
        FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .bytes_per_cluster(cluster)
            .volume_id(volume_id)
            .volume_label(label_bytes),
    )
    .context("formatting the FAT32 boot partition")?;
    disk.seek(SeekFrom::Start(0))?;
    // fatfs wants a &'static provider; one small leak per image built.
    let time: &'static FixedTime = Box::leak(Box::new(FixedTime(fat_time(epoch))));
    {
        let fs = FileSystem::new(&mut disk, FsOptions::new().time_provider(time))
            .context("opening the new FAT file system")?;
        copy_dir(&fs.root_dir(), src, src)?;
        // Fills the FSInfo free-cluster count before unmounting.
        fs.stats().context("counting free FAT clusters")?;
        fs.unmount().context("closing the FAT file system")?;
    }
    fix_dot_entries(&mut disk).context("fixing FAT directory entries")?;
    set_hidden_sectors(&mut disk, offset)?;

    let out = File::options()
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    let mut written = 0;
    for (idx, c) in &disk.chunks {
        let at = idx * CHUNK as u64;
        let n = (size - at).min(CHUNK as u64) as usize;
        out.write_all_at(&c[..n], offset + at)
            .with_context(|| format!("writing the boot partition into {}", image.display()))?;
        written += n as u64;
    }
    Ok(written)
}

/// Copy a directory's entries in name order (the FAT order is then
/// reproducible). Symlinks are followed inside the tree only.
fn copy_dir<T: fatfs::ReadWriteSeek>(dir: &fatfs::Dir<T>, src: &Path, root: &Path) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .with_context(|| format!("reading {}", src.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", src.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            bail!("{}: FAT names must be UTF-8", path.display());
        };
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let real = if meta.file_type().is_symlink() {
            resolve_link(&path, root)?
        } else {
            path.clone()
        };
        let meta =
            std::fs::metadata(&real).with_context(|| format!("reading {}", real.display()))?;
        if meta.is_dir() {
            let sub = dir
                .create_dir(name)
                .with_context(|| format!("creating {name} on the FAT partition"))?;
            copy_dir(&sub, &real, root)?;
        } else if meta.is_file() {
            let mut f = dir
                .create_file(name)
                .with_context(|| format!("creating {name} on the FAT partition"))?;
            let mut input =
                File::open(&real).with_context(|| format!("opening {}", real.display()))?;
            io::copy(&mut input, &mut f).with_context(|| {
                format!(
                    "copying {} to the FAT partition (is the boot partition big enough?)",
                    path.display()
                )
            })?;
        } else {
            bail!(
                "{}: only files and directories can go on the FAT boot partition",
                path.display()
            );
        }
    }
    Ok(())
}

/// A symlink in the boot directory, resolved against the tree, not the host.
fn resolve_link(link: &Path, root: &Path) -> Result<std::path::PathBuf> {
    let mut cur = link.to_path_buf();
    for _ in 0..16 {
        let target =
            std::fs::read_link(&cur).with_context(|| format!("reading {}", cur.display()))?;
        let next = if target.is_absolute() {
            // `root` is the boot directory; its tree root is two levels up
            // at most, but an absolute link may point anywhere in the tree.
            bail!(
                "{}: absolute symlinks cannot be copied to the FAT partition",
                link.display()
            );
        } else {
            cur.parent().unwrap_or(root).join(target)
        };
        let next = next
            .canonicalize()
            .with_context(|| format!("resolving {}", link.display()))?;
        let root = root
            .canonicalize()
            .with_context(|| format!("resolving {}", root.display()))?;
        if !next.starts_with(&root) {
            bail!("{}: symlink leaves the boot directory", link.display());
        }
        if !std::fs::symlink_metadata(&next)?.file_type().is_symlink() {
            return Ok(next);
        }
        cur = next;
    }
    bail!("{}: too many levels of symlinks", link.display())
}

/// Boot sector fields the fix-ups need.
struct Geometry {
    bytes_per_sector: u64,
    cluster_size: u64,
    fat_start: u64,
    data_start: u64,
    root_cluster: u32,
}

fn geometry(disk: &SparseBuf) -> Geometry {
    let mut b = [0u8; 512];
    disk.read_at(&mut b, 0);
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let bps = u16_at(11);
    let spc = b[13] as u64;
    let reserved = u16_at(14);
    let fats = b[16] as u64;
    let fat_sectors = u32_at(36) as u64;
    Geometry {
        bytes_per_sector: bps,
        cluster_size: bps * spc,
        fat_start: reserved * bps,
        data_start: (reserved + fats * fat_sectors) * bps,
        root_cluster: u32_at(44),
    }
}

impl Geometry {
    fn chain(&self, disk: &SparseBuf, first: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut c = first;
        while (2..0x0fff_fff7).contains(&c) && out.len() < 1 << 22 {
            out.push(c);
            let mut e = [0u8; 4];
            disk.read_at(&mut e, self.fat_start + 4 * c as u64);
            c = u32::from_le_bytes(e) & 0x0fff_ffff;
        }
        out
    }
    fn cluster_pos(&self, c: u32) -> u64 {
        self.data_start + (c as u64 - 2) * self.cluster_size
    }
}

/// fatfs 0.3.6 writes a directory's long-name entries before `.` and `..`
/// and points `..` of a root child at the root cluster; fsck.fat rejects
/// both (rust-fatfs issue #117, fix unreleased). Move `.` and `..` to the
/// first two slots, drop long names attached to them, and make `..` of a
/// root child cluster 0, as the FAT specification says.
fn fix_dot_entries(disk: &mut SparseBuf) -> Result<()> {
    let g = geometry(disk);
    let mut todo = vec![(g.root_cluster, true)];
    while let Some((first, is_root)) = todo.pop() {
        let chain = g.chain(disk, first);
        let mut raw = vec![0u8; chain.len() * g.cluster_size as usize];
        for (i, c) in chain.iter().enumerate() {
            let cs = g.cluster_size as usize;
            disk.read_at(&mut raw[i * cs..(i + 1) * cs], g.cluster_pos(*c));
        }
        let entries: Vec<[u8; 32]> = raw
            .chunks(32)
            .take_while(|e| e[0] != 0)
            .map(|e| e.try_into().unwrap())
            .collect();
        let is_lfn = |e: &[u8; 32]| e[11] == 0x0f && e[0] != 0xe5;
        let name = |e: &[u8; 32]| -> [u8; 11] { e[..11].try_into().unwrap() };
        let (mut dot, mut dotdot, mut rest) = (None, None, Vec::new());
        let mut pending_lfn: Vec<[u8; 32]> = Vec::new();
        for e in entries {
            if is_lfn(&e) {
                pending_lfn.push(e);
                continue;
            }
            match &name(&e) {
                b".          " if !is_root => {
                    pending_lfn.clear();
                    dot = Some(e);
                }
                b"..         " if !is_root => {
                    pending_lfn.clear();
                    dotdot = Some(e);
                }
                _ => {
                    rest.append(&mut pending_lfn);
                    rest.push(e);
                }
            }
        }
        let mut ordered = Vec::new();
        if !is_root {
            let (Some(dot), Some(mut dotdot)) = (dot, dotdot) else {
                bail!("a FAT directory at cluster {first} lacks `.` or `..`");
            };
            let parent = u32::from_le_bytes([dotdot[26], dotdot[27], dotdot[20], dotdot[21]]);
            if parent == g.root_cluster {
                for o in [20, 21, 26, 27] {
                    dotdot[o] = 0;
                }
            }
            ordered.push(dot);
            ordered.push(dotdot);
        }
        for e in &rest {
            let attr = e[11];
            if e[0] != 0xe5 && !is_lfn(e) && attr & 0x10 != 0 && attr & 0x08 == 0 {
                let c = u32::from_le_bytes([e[26], e[27], e[20], e[21]]);
                todo.push((c, false));
            }
        }
        ordered.extend(rest);
        let mut new_raw = vec![0u8; raw.len()];
        for (i, e) in ordered.iter().enumerate() {
            new_raw[i * 32..(i + 1) * 32].copy_from_slice(e);
        }
        if new_raw != raw {
            for (i, c) in chain.iter().enumerate() {
                let cs = g.cluster_size as usize;
                disk.write_at(&new_raw[i * cs..(i + 1) * cs], g.cluster_pos(*c));
            }
        }
    }
    Ok(())
}

/// The BPB's hidden-sectors field holds the partition start; fatfs always
/// writes 0. Set it in the boot sector and its backup (sector 6).
fn set_hidden_sectors(disk: &mut SparseBuf, offset: u64) -> Result<()> {
    let g = geometry(disk);
    let hidden = u32::try_from(offset / g.bytes_per_sector).context("boot partition too far")?;
    for sector in [0, 6] {
        disk.write_at(&hidden.to_le_bytes(), sector * g.bytes_per_sector + 28);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        // 2023-11-14T22:13:20Z
        let t = fat_time(1_700_000_000);
        assert_eq!((t.date.year, t.date.month, t.date.day), (2023, 11, 14));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (22, 13, 20));
        assert_eq!(fat_time(0).date.year, 1980);
    }

    #[test]
    fn sparse_buf_reads_zeros_and_writes_across_chunks() {
        let mut b = SparseBuf::new(3 * CHUNK as u64);
        b.seek(SeekFrom::Start(CHUNK as u64 - 2)).unwrap();
        b.write_all(&[1, 2, 3, 4]).unwrap();
        assert_eq!(b.chunks.len(), 2);
        let mut r = [9u8; 6];
        b.seek(SeekFrom::Start(CHUNK as u64 - 3)).unwrap();
        b.read_exact(&mut r).unwrap();
        assert_eq!(r, [0, 1, 2, 3, 4, 0]);
        b.seek(SeekFrom::End(0)).unwrap();
        assert!(b.write(&[1]).is_err());
    }
}
