//! The entry loop of a tar archive: each entry's name normalized once, its
//! metadata read from the header and pax records, and handed to the
//! [`Unpacker`]. What was unpacked is reported entry by entry, so the store
//! can write its manifest and deploy can count.

use super::{display_name, normalize, Attrs, EntryKind, Unpacker};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use tar::EntryType;

/// One unpacked entry, as the archive gave it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Normalized, relative to the root; the root itself is "".
    pub path: PathBuf,
    pub kind: EntryKind,
    pub attrs: Attrs,
    /// Bytes of a regular file.
    pub size: u64,
    /// Symlink target, or the normalized path a hardlink points to.
    pub link: Option<String>,
    /// (major, minor) of a device node.
    pub rdev: Option<(u32, u32)>,
}

/// Unpack every entry of `ar` under `root` (a new, empty directory of this
/// process), calling `each` after each one. `archive` names the archive in
/// errors. Directory metadata is applied at the end.
pub fn unpack_tar<R: Read>(
    ar: &mut tar::Archive<R>,
    root: &Path,
    archive: &Path,
    each: impl FnMut(Entry) -> Result<()>,
) -> Result<()> {
    unpack_tar_with(Unpacker::new(root), ar, archive, each).map(|_| ())
}

/// Unpack with an [`Unpacker`] the caller set up: one that shares files
/// with donor trees ([`Unpacker::sharing`]) or that refreshes an old tree
/// ([`Unpacker::refresh`]).
pub fn unpack_tar_with<R: Read>(
    mut unpacker: Unpacker,
    ar: &mut tar::Archive<R>,
    archive: &Path,
    mut each: impl FnMut(Entry) -> Result<()>,
) -> Result<super::ShareStats> {
    let context = || format!("reading the archive {}", archive.display());
    for entry in ar.entries().with_context(context)? {
        let mut entry = entry.with_context(context)?;
        let raw_name = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_name).into_owned();
        let record = unpack_entry(&mut unpacker, &mut entry)
            .with_context(|| format!("archive entry `{shown}` in {}", archive.display()))?;
        if let Some(rec) = record {
            each(rec)?;
        }
    }
    // Directory metadata is applied last: its errors need the name too.
    let (shared, skipped) = unpacker
        .finish()
        .with_context(|| format!("unpacking {}", archive.display()))?;
    if skipped.devices + skipped.xattrs > 0 {
        tracing::warn!(
            "not running as root: left out {} device nodes and {} extended attributes",
            skipped.devices,
            skipped.xattrs
        );
    }
    Ok(shared)
}

/// Unpack one entry; None for pax global headers.
fn unpack_entry<R: Read>(
    un: &mut Unpacker,
    entry: &mut tar::Entry<'_, R>,
) -> Result<Option<Entry>> {
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
    let mut rec = Entry {
        path: rel.clone(),
        kind: EntryKind::File,
        attrs: attrs.clone(),
        size: 0,
        link: None,
        rdev: None,
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
}
