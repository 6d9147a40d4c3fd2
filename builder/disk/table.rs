//! Partition tables: MBR (`mbrman`) or GPT (`gpt`), written into the image
//! file with fixed identifiers, then read back so the PARTUUIDs that
//! cmdline.txt and fstab name are the ones the table really has.

use super::layout::TableKind;
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

pub const SECTOR: u64 = 512;

/// One partition, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub size: u64,
}

/// Fixed identifiers of the table, derived from the node (see `Ids`).
#[derive(Debug, Clone)]
pub struct TableIds {
    /// MBR disk signature.
    pub mbr_signature: u32,
    /// GPT disk GUID and partition GUIDs (text form).
    pub disk_guid: String,
    pub part_guids: [String; 2],
}

/// MBR type of the boot partition: FAT32 with LBA, what the Pi firmware looks for.
const MBR_FAT32_LBA: u8 = 0x0c;
const MBR_LINUX: u8 = 0x83;

/// Write the table for a boot (FAT) and a root (Linux) partition into an
/// image file whose length is already set, and return the PARTUUIDs of
/// the two partitions as read back from the file.
pub fn write_table(
    image: &Path,
    kind: TableKind,
    parts: [Extent; 2],
    ids: &TableIds,
) -> Result<[String; 2]> {
    let mut f = File::options()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    match kind {
        TableKind::Mbr => write_mbr(&mut f, parts, ids.mbr_signature),
        TableKind::Gpt => write_gpt(&mut f, parts, ids),
    }
    .with_context(|| format!("writing the partition table of {}", image.display()))?;
    f.sync_data()
        .with_context(|| format!("flushing {}", image.display()))?;
    drop(f);
    read_partuuids(image, kind)
}

fn write_mbr(f: &mut File, parts: [Extent; 2], signature: u32) -> Result<()> {
    let mut mbr = mbrman::MBR::new_from(f, SECTOR as u32, signature.to_le_bytes())
        .context("creating the MBR")?;
    for (i, (p, sys)) in parts.iter().zip([MBR_FAT32_LBA, MBR_LINUX]).enumerate() {
        let lba = |b: u64| -> Result<u32> {
            u32::try_from(b / SECTOR).context("the image is too big for an MBR (2 TiB)")
        };
        mbr[i + 1] = mbrman::MBRPartitionEntry {
            boot: mbrman::BOOT_INACTIVE,
            first_chs: mbrman::CHS::empty(),
            sys,
            last_chs: mbrman::CHS::empty(),
            starting_lba: lba(p.start)?,
            sectors: lba(p.size)?,
        };
    }
    mbr.write_into(f).context("writing the MBR")?;
    Ok(())
}

fn write_gpt(f: &mut File, parts: [Extent; 2], ids: &TableIds) -> Result<()> {
    let len = f.metadata().context("reading the image size")?.len();
    let total_lba = len / SECTOR;
    // The gpt crate does not write the protective MBR: do it first.
    let pmbr =
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(total_lba - 1).unwrap_or(u32::MAX));
    pmbr.overwrite_lba0(f)
        .context("writing the protective MBR")?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(&mut *f, Some(ids.disk_guid.parse()?))
        .context("creating the GPT")?;
    let types = [gpt::partition_types::BASIC, gpt::partition_types::LINUX_FS];
    let names = ["bootfs", "rootfs"];
    let mut table = BTreeMap::new();
    for (i, p) in parts.iter().enumerate() {
        let mut e = gpt::partition::Partition::zero();
        e.part_type_guid = types[i].clone();
        e.part_guid = ids.part_guids[i].parse()?;
        e.first_lba = p.start / SECTOR;
        e.last_lba = (p.start + p.size) / SECTOR - 1;
        e.name = names[i].to_string();
        table.insert(i as u32 + 1, e);
    }
    // The table keeps the standard 128 entries so every tool reads it.
    for id in 3..=128u32 {
        table.insert(id, gpt::partition::Partition::zero());
    }
    disk.update_partitions(table)
        .context("setting the GPT partitions")?;
    disk.write().context("writing the GPT")?;
    Ok(())
}

/// PARTUUIDs as the kernel (and blkid) name them: `<signature>-0N` on MBR,
/// the partition GUID on GPT.
pub fn read_partuuids(image: &Path, kind: TableKind) -> Result<[String; 2]> {
    let mut f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    match kind {
        TableKind::Mbr => {
            let mbr = mbrman::MBR::read_from(&mut f, SECTOR as u32)
                .with_context(|| format!("reading the MBR of {}", image.display()))?;
            let sig = u32::from_le_bytes(mbr.header.disk_signature);
            ensure!(
                mbr[1].is_used() && mbr[2].is_used(),
                "{}: the MBR lacks partition 1 or 2",
                image.display()
            );
            Ok([format!("{sig:08x}-01"), format!("{sig:08x}-02")])
        }
        TableKind::Gpt => {
            let disk = gpt::GptConfig::new()
                .writable(false)
                .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
                .open_from_device(&mut f)
                .with_context(|| format!("reading the GPT of {}", image.display()))?;
            let p = disk.partitions();
            match (p.get(&1), p.get(&2)) {
                (Some(a), Some(b)) if a.is_used() && b.is_used() => Ok([
                    a.part_guid.hyphenated().to_string(),
                    b.part_guid.hyphenated().to_string(),
                ]),
                _ => bail!("{}: the GPT lacks partition 1 or 2", image.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> TableIds {
        TableIds {
            mbr_signature: 0x1234abcd,
            disk_guid: "11111111-2222-4333-8444-555555555555".into(),
            part_guids: [
                "aaaaaaaa-2222-4333-8444-555555555555".into(),
                "bbbbbbbb-2222-4333-8444-555555555555".into(),
            ],
        }
    }

    fn parts() -> [Extent; 2] {
        [
            Extent {
                start: 1 << 20,
                size: 4 << 20,
            },
            Extent {
                start: 5 << 20,
                size: 2 << 20,
            },
        ]
    }

    #[test]
    fn both_tables_round_trip_and_are_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        for kind in [TableKind::Mbr, TableKind::Gpt] {
            let mut digests = Vec::new();
            for n in 0..2 {
                let img = dir.path().join(format!("{kind:?}{n}.img"));
                File::create(&img).unwrap().set_len(8 << 20).unwrap();
                let ids = write_table(&img, kind, parts(), &ids()).unwrap();
                match kind {
                    TableKind::Mbr => assert_eq!(ids, ["1234abcd-01", "1234abcd-02"]),
                    TableKind::Gpt => assert_eq!(ids[1], "bbbbbbbb-2222-4333-8444-555555555555"),
                }
                digests.push(std::fs::read(&img).unwrap());
            }
            assert!(digests[0] == digests[1], "{kind:?} table not reproducible");
        }
    }
}
