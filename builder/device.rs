//! The only code that writes block devices. It accepts a whole, unused,
//! removable block device at least as big as the image, asks before it
//! destroys anything, writes only the bmap's ranges (the first MiB last, so
//! a half-written card does not boot), flushes, re-reads the partition
//! table and verifies by reading back.

use crate::disk::bmap::{self, BlockMap};
use crate::progress::Progress;
use crate::tools;
use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufRead, IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// Do not ask for confirmation.
    pub yes: bool,
    /// Allow a non-removable device.
    pub force: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct WriteReport {
    pub device: PathBuf,
    pub image_size: u64,
    pub bytes_written: u64,
    pub ranges_verified: usize,
    pub seconds: f64,
}

/// What the checks found out about the target.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub path: PathBuf,
    /// Kernel name (sdb, mmcblk0, loop3).
    pub name: String,
    pub size: u64,
    pub removable: bool,
    pub model: String,
}

// Block device ioctls from <linux/fs.h>. nix generates `unsafe fn`s for
// them; the crate denies unsafe code everywhere else, and here the calls
// only pass a valid fd and a pointer to a local u64.
#[allow(unsafe_code)]
mod ioctl {
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    nix::ioctl_none!(blkrrpart, 0x12, 95);

    pub fn size(fd: std::os::fd::RawFd) -> nix::Result<u64> {
        let mut n: u64 = 0;
        // SAFETY: fd is open and `n` outlives the call.
        unsafe { blkgetsize64(fd, &mut n) }?;
        Ok(n)
    }

    pub fn reread_partitions(fd: std::os::fd::RawFd) -> nix::Result<()> {
        // SAFETY: fd is open; the ioctl takes no argument.
        unsafe { blkrrpart(fd) }?;
        Ok(())
    }
}

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The sysfs directory of a device number.
fn sysfs_of(rdev: u64) -> Result<PathBuf> {
    let (maj, min) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let link = PathBuf::from(format!("/sys/dev/block/{maj}:{min}"));
    link.canonicalize()
        .with_context(|| format!("resolving {}", link.display()))
}

/// Device numbers ("maj:min") of a disk and all its partitions, and the
/// kernel names of its partitions.
fn disk_members(sys: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let mut devs = vec![read_trim(&sys.join("dev")).unwrap_or_default()];
    let mut parts = Vec::new();
    for e in std::fs::read_dir(sys).with_context(|| format!("reading {}", sys.display()))? {
        let e = e.with_context(|| format!("reading {}", sys.display()))?;
        if e.path().join("partition").exists() {
            parts.push(e.file_name().to_string_lossy().into_owned());
            if let Some(d) = read_trim(&e.path().join("dev")) {
                devs.push(d);
            }
        }
    }
    parts.sort();
    Ok((devs, parts))
}

/// Whole disks under a device: itself, or its parent if a partition, and
/// through device-mapper/md `slaves` down to the disks.
fn underlying_disks(sys: &Path, out: &mut Vec<PathBuf>) {
    let slaves = sys.join("slaves");
    let mut had = false;
    if let Ok(rd) = std::fs::read_dir(&slaves) {
        for e in rd.flatten() {
            if let Ok(p) = e.path().canonicalize() {
                had = true;
                underlying_disks(&p, out);
            }
        }
    }
    if !had {
        let disk = if sys.join("partition").exists() {
            sys.parent().map(Path::to_path_buf).unwrap_or_default()
        } else {
            sys.to_path_buf()
        };
        if !out.contains(&disk) {
            out.push(disk);
        }
    }
}

/// Disks that hold the running system: / and the usual system mounts.
fn system_disks() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in ["/", "/usr", "/boot", "/boot/firmware", "/boot/efi", "/var"] {
        if let Ok(m) = std::fs::metadata(p) {
            if let Ok(sys) = sysfs_of(m.dev()) {
                underlying_disks(&sys, &mut out);
            }
        }
    }
    out
}

/// Why a disk is busy: mounted partitions, active swap, holders (LVM,
/// dm-crypt, md). Empty when it is free.
fn busy_reasons(sys: &Path, name: &str, devs: &[String], parts: &[String]) -> Vec<String> {
    let mut why = Vec::new();
    let mut names: Vec<String> = vec![name.to_string()];
    names.extend(parts.iter().cloned());
    if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in mi.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let source = line
                .split(" - ")
                .nth(1)
                .and_then(|r| r.split_whitespace().nth(1))
                .unwrap_or("");
            let by_source = names.iter().any(|n| source == format!("/dev/{n}"));
            if f.len() > 4 && (devs.iter().any(|d| d == f[2]) || by_source) {
                why.push(format!("{} is mounted on {}", source, f[4]));
            }
        }
    }
    if let Ok(sw) = std::fs::read_to_string("/proc/swaps") {
        for line in sw.lines().skip(1) {
            if let Some(src) = line.split_whitespace().next() {
                let real = Path::new(src).canonicalize().unwrap_or_else(|_| src.into());
                if names.iter().any(|n| real == Path::new("/dev").join(n)) {
                    why.push(format!("{src} is in use as swap"));
                }
            }
        }
    }
    let mut holder_dirs = vec![sys.join("holders")];
    holder_dirs.extend(parts.iter().map(|p| sys.join(p).join("holders")));
    for h in holder_dirs {
        if let Ok(rd) = std::fs::read_dir(&h) {
            for e in rd.flatten() {
                why.push(format!(
                    "{} is held by {}",
                    h.parent()
                        .and_then(|p| p.file_name())
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    e.file_name().to_string_lossy()
                ));
            }
        }
    }
    why
}

/// Every refusal, checked before anything is opened for writing.
pub fn check_target(dev: &Path, image_size: u64, force: bool) -> Result<Target> {
    let meta = std::fs::metadata(dev).with_context(|| format!("reading {}", dev.display()))?;
    if !meta.file_type().is_block_device() {
        bail!(
            "refusing {}: it is not a block device (give a whole disk such as /dev/sdX)",
            dev.display()
        );
    }
    let sys = sysfs_of(meta.rdev())?;
    let name = sys
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if sys.join("partition").exists() {
        let disk = sys
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        bail!(
            "refusing {}: it is a partition ({name}), not a whole disk; give /dev/{disk}",
            dev.display()
        );
    }
    let (devs, parts) = disk_members(&sys)?;
    let busy = busy_reasons(&sys, &name, &devs, &parts);
    if !busy.is_empty() {
        bail!(
            "refusing {}: it is in use: {}. Unmount it first.",
            dev.display(),
            busy.join("; ")
        );
    }
    if system_disks().contains(&sys) {
        bail!(
            "refusing {}: it holds the running system (/)",
            dev.display()
        );
    }
    let f = File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let size = ioctl::size(f.as_raw_fd())
        .with_context(|| format!("reading the size of {}", dev.display()))?;
    if size < image_size {
        bail!(
            "refusing {}: the device is smaller than the image ({} MiB < {} MiB)",
            dev.display(),
            size >> 20,
            image_size.div_ceil(1 << 20)
        );
    }
    // Built-in SD slots (mmcblk) report removable=0 though the card is.
    let removable = read_trim(&sys.join("removable")).as_deref() == Some("1")
        || (name.starts_with("mmcblk")
            && read_trim(&sys.join("device/type")).as_deref() == Some("SD"));
    if !removable && !force {
        bail!(
            "refusing {}: it is not a removable device (pass --force if it really is the card)",
            dev.display()
        );
    }
    let model = [
        read_trim(&sys.join("device/vendor")),
        read_trim(&sys.join("device/model")),
        read_trim(&sys.join("device/name")),
    ]
    .into_iter()
    .flatten()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(" ");
    Ok(Target {
        path: dev.to_path_buf(),
        name,
        size,
        removable,
        model: if model.is_empty() {
            "unknown model".into()
        } else {
            model
        },
    })
}

/// Ask on the terminal; refuse when there is no terminal to ask on.
pub fn confirm(
    target: &Target,
    image: &Path,
    partitions: &str,
    interactive: bool,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<()> {
    if !interactive {
        bail!(
            "refusing to write {} without confirmation: stdin is not a terminal (pass --yes)",
            target.path.display()
        );
    }
    writeln!(
        out,
        "About to overwrite {} ({}, {:.1} GB{}) with {}.\nCurrent partitions:\n{partitions}",
        target.path.display(),
        target.model,
        target.size as f64 / 1e9,
        if target.removable { ", removable" } else { "" },
        image.display()
    )?;
    write!(
        out,
        "Everything on {} will be lost. Type yes to go on: ",
        target.path.display()
    )?;
    out.flush()?;
    let mut answer = String::new();
    input.read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!(
            "not confirmed: nothing was written to {}",
            target.path.display()
        );
    }
    Ok(())
}

fn describe_partitions(dev: &Path) -> String {
    let listing = tools::LSBLK.command().and_then(|mut c| {
        tools::run_json(
            c.args(["-J", "-b", "-o", "NAME,SIZE,FSTYPE,LABEL"])
                .arg(dev),
        )
    });
    let Ok(v) = listing else {
        return "  (lsblk could not list them)".into();
    };
    let mut lines = Vec::new();
    fn walk(v: &serde_json::Value, depth: usize, lines: &mut Vec<String>) {
        for d in v.as_array().into_iter().flatten() {
            let s = |k: &str| d[k].as_str().map(str::to_string).unwrap_or_default();
            let size = d["size"].as_u64().unwrap_or(0);
            lines.push(format!(
                "  {}{} {:.1} GB {} {}",
                "  ".repeat(depth),
                s("name"),
                size as f64 / 1e9,
                s("fstype"),
                s("label")
            ));
            walk(&d["children"], depth + 1, lines);
        }
    }
    walk(&v["blockdevices"], 0, &mut lines);
    if lines.len() <= 1 {
        lines.push("  (none)".into());
    }
    lines.join("\n")
}

const FIRST: u64 = 1 << 20;

/// Write `image` to the whole block device `dev` following its bmap.
pub fn write_image(
    image: &Path,
    bmap_path: &Path,
    dev: &Path,
    opts: &WriteOptions,
) -> Result<WriteReport> {
    let started = std::time::Instant::now();
    let text = std::fs::read_to_string(bmap_path)
        .with_context(|| format!("reading {}", bmap_path.display()))?;
    let map =
        bmap::parse_bmap(&text).with_context(|| format!("parsing {}", bmap_path.display()))?;
    let img = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let img_len = img
        .metadata()
        .with_context(|| format!("reading {}", image.display()))?
        .len();
    ensure!(
        img_len == map.image_size,
        "{} does not belong to {}: sizes differ",
        bmap_path.display(),
        image.display()
    );
    let target = check_target(dev, map.image_size, opts.force)?;
    if !opts.yes {
        let stdin = std::io::stdin();
        confirm(
            &target,
            image,
            &describe_partitions(dev),
            stdin.is_terminal(),
            &mut stdin.lock(),
            &mut std::io::stderr(),
        )?;
    }
    // O_EXCL on a block device: the kernel refuses if anything mounted or
    // claimed it since the checks.
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(dev)
        .with_context(|| format!("opening {} for writing (is it in use?)", dev.display()))?;
    match copy_ranges(&img, &out, &map, dev, image) {
        Ok(written) => {
            // Re-read through a plain handle: the kernel refuses BLKRRPART
            // (EBUSY) while the device is held exclusively.
            drop(out);
            let back = File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
            if let Err(e) = ioctl::reread_partitions(back.as_raw_fd()) {
                // Loop devices without partition scanning say EINVAL: the
                // image is written all the same.
                tracing::warn!(
                    "could not re-read the partition table of {}: {e}",
                    dev.display()
                );
            }
            let verified = verify(&back, &map, dev)?;
            Ok(WriteReport {
                device: dev.to_path_buf(),
                image_size: map.image_size,
                bytes_written: written,
                ranges_verified: verified,
                seconds: started.elapsed().as_secs_f64(),
            })
        }
        Err(e) => {
            // Leave no half-valid table behind.
            let _ = out.write_all_at(&vec![0u8; FIRST as usize], 0);
            let _ = out.sync_all();
            Err(e)
        }
    }
}

/// Copy the bmap ranges, checking each against its checksum as it is read;
/// the first MiB is wiped first and written last.
fn copy_ranges(img: &File, out: &File, map: &BlockMap, dev: &Path, image: &Path) -> Result<u64> {
    let bs = map.block_size;
    let total = map.mapped_bytes();
    out.write_all_at(&vec![0u8; FIRST.min(map.image_size) as usize], 0)
        .with_context(|| format!("wiping the start of {}", dev.display()))?;
    out.sync_data()
        .with_context(|| format!("flushing {}", dev.display()))?;
    let mut progress = Progress::bytes(&format!("writing {}", dev.display()), Some(total));
    let mut head: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut written = 0u64;
    for r in &map.ranges {
        let start = r.offset(bs);
        let end = (start + r.len(bs)).min(map.image_size);
        let mut h = Sha256::new();
        let mut pos = start;
        while pos < end {
            let n = (end - pos).min(buf.len() as u64) as usize;
            img.read_exact_at(&mut buf[..n], pos)
                .with_context(|| format!("reading {}", image.display()))?;
            h.update(&buf[..n]);
            // Split off what falls in the first MiB: written last.
            let mut from = 0usize;
            if pos < FIRST {
                let k = ((FIRST - pos) as usize).min(n);
                head.push((pos, buf[..k].to_vec()));
                from = k;
            }
            if from < n {
                out.write_all_at(&buf[from..n], pos + from as u64)
                    .with_context(|| format!("writing {}", dev.display()))?;
            }
            written += n as u64;
            progress.inc(n as u64);
            pos += n as u64;
        }
        if hex::encode(h.finalize()) != r.sha256 {
            bail!(
                "{} does not match its bmap at blocks {}-{}: the image is damaged",
                image.display(),
                r.first,
                r.last
            );
        }
    }
    out.sync_all()
        .with_context(|| format!("flushing {}", dev.display()))?;
    for (at, data) in head {
        out.write_all_at(&data, at)
            .with_context(|| format!("writing {}", dev.display()))?;
    }
    out.sync_all()
        .with_context(|| format!("flushing {}", dev.display()))?;
    progress.finish();
    Ok(written)
}

/// Read every range back from the device (not from the page cache) and
/// compare its checksum with the bmap's.
fn verify(dev_file: &File, map: &BlockMap, dev: &Path) -> Result<usize> {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    // Drop cached pages so the reads come from the device.
    let _ = posix_fadvise(
        dev_file.as_raw_fd(),
        0,
        0,
        PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
    let bs = map.block_size;
    let mut progress = Progress::bytes(
        &format!("verifying {}", dev.display()),
        Some(map.mapped_bytes()),
    );
    let mut buf = vec![0u8; 4 << 20];
    for r in &map.ranges {
        let start = r.offset(bs);
        let end = (start + r.len(bs)).min(map.image_size);
        let mut h = Sha256::new();
        let mut pos = start;
        while pos < end {
            let n = (end - pos).min(buf.len() as u64) as usize;
            dev_file
                .read_exact_at(&mut buf[..n], pos)
                .with_context(|| format!("reading back {}", dev.display()))?;
            h.update(&buf[..n]);
            progress.inc(n as u64);
            pos += n as u64;
        }
        if hex::encode(h.finalize()) != r.sha256 {
            bail!(
                "verification failed: {} differs from the image at blocks {}-{}",
                dev.display(),
                r.first,
                r.last
            );
        }
    }
    progress.finish();
    Ok(map.ranges.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            path: "/dev/sdz".into(),
            name: "sdz".into(),
            size: 32_000_000_000,
            removable: true,
            model: "Card Reader".into(),
        }
    }

    #[test]
    fn confirmation_needs_a_terminal_and_a_yes() {
        let mut out = Vec::new();
        let e = confirm(
            &target(),
            Path::new("p5.img"),
            "",
            false,
            &mut &b"yes\n"[..],
            &mut out,
        )
        .unwrap_err();
        assert!(e.to_string().contains("--yes"), "{e}");
        let e = confirm(
            &target(),
            Path::new("p5.img"),
            "",
            true,
            &mut &b"y\n"[..],
            &mut out,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not confirmed"), "{e}");
        let mut out = Vec::new();
        confirm(
            &target(),
            Path::new("p5.img"),
            "  sdz1",
            true,
            &mut &b"yes\n"[..],
            &mut out,
        )
        .unwrap();
        let shown = String::from_utf8(out).unwrap();
        assert!(
            shown.contains("Card Reader") && shown.contains("32.0 GB") && shown.contains("sdz1")
        );
    }

    #[test]
    fn regular_files_are_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = check_target(f.path(), 1, true).unwrap_err();
        assert!(e.to_string().contains("not a block device"), "{e}");
    }
}
