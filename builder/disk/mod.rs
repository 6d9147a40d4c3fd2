//! SD card images for LAN Pis, built rootless: a partition table (MBR or
//! GPT), a FAT32 boot partition made in memory with `fatfs`, an ext4 root
//! made by `mke2fs -d` straight into the image, then a bmap and sha256.
//! No loop device, no mount, no root.

pub mod bmap;
mod ext4;
mod fat;
mod layout;
mod table;
mod treefix;

pub use layout::{
    default_layout_path, load_layout, parse_layout, resolve_layout, Layout, TableKind,
};

use crate::fs::{Durability, Inode, NewFile};
use crate::profile::plan::NodePlan;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::{Path, PathBuf};
use table::Extent;

/// An image and the files written beside it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SdImage {
    pub image: PathBuf,
    pub bmap: PathBuf,
    pub sha256_file: PathBuf,
    /// SHA256 of the image, hex.
    pub sha256: String,
    /// Image size in bytes.
    pub size: u64,
}

/// Identifiers fixed per node, so two builds are byte-identical and a
/// rebuilt card keeps its PARTUUIDs (fstab and cmdline stay valid), while
/// two nodes' cards never share them.
struct Ids {
    seed: [u8; 32],
}

impl Ids {
    fn new(plan: &NodePlan) -> Ids {
        let mut h = Sha256::new();
        for part in ["chbuild-sd", &plan.cluster, &plan.name] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        Ids {
            seed: h.finalize().into(),
        }
    }

    fn bytes(&self, what: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.seed);
        h.update(what.as_bytes());
        h.finalize().into()
    }

    fn u32(&self, what: &str) -> u32 {
        let b = self.bytes(what);
        // Never 0: a zero MBR signature or volume id reads as "unset".
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]).max(1)
    }

    /// A random-looking (version 4, RFC 4122 variant) UUID.
    fn uuid(&self, what: &str) -> String {
        let mut b = self.bytes(what);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h = hex::encode(&b[..16]);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

/// Write a published file (bmap, sha256 sidecar) as a new inode.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    crate::fs::write_new(path, data, Inode::new(0o644, Durability::Publish))
}

/// The partitions for a root file system of `root_size` bytes.
fn geometry(layout: &Layout, root_size: u64) -> ([Extent; 2], u64) {
    let boot = Extent {
        start: layout.alignment,
        size: layout.boot_size,
    };
    let root = Extent {
        start: boot.start + boot.size,
        size: root_size,
    };
    // GPT keeps a backup table in the last 33 sectors: leave an aligned gap.
    let tail = match layout.table {
        TableKind::Mbr => 0,
        TableKind::Gpt => layout.alignment,
    };
    ([boot, root], root.start + root.size + tail)
}

/// Build the SD card image of `plan` from its finished tree. `tree` is the
/// caller's: files there may be hardlinks shared with other nodes, so
/// nothing in it is opened for writing, only replaced by rename. The boot
/// directory goes to the FAT partition and is an empty mount point in ext4.
pub fn build_sd_image(
    plan: &NodePlan,
    tree: &Path,
    layout: &Layout,
    out: &Path,
    epoch: u64,
) -> Result<SdImage> {
    build_sd_image_from(plan, tree, layout, out, epoch, false)
}

/// [`build_sd_image`], and with `discard_tree` the tree (made for this
/// image alone) is removed once the image holds it, while the image is
/// hashed, instead of after.
pub fn build_sd_image_from(
    plan: &NodePlan,
    tree: &Path,
    layout: &Layout,
    out: &Path,
    epoch: u64,
    discard_tree: bool,
) -> Result<SdImage> {
    let started = std::time::Instant::now();
    let boot_rel = Path::new(plan.boot_dir.trim_matches('/'));
    if boot_rel.as_os_str().is_empty() {
        bail!("node {}: boot_dir is empty", plan.name);
    }
    let boot_dir = tree.join(boot_rel);
    if !boot_dir.is_dir() {
        bail!(
            "node {}: the tree has no boot directory {}",
            plan.name,
            boot_dir.display()
        );
    }
    let ids = Ids::new(plan);
    let fs_uuid = ids.uuid("ext4");
    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    // Size: the tree (without the boot files) plus the layout's margin.
    let usage = ext4::measure(tree, &boot_dir)?;
    let mut root_size = ext4::fs_size(usage, layout.root_margin, layout.alignment);
    tracing::debug!(elapsed = ?started.elapsed(), ?usage, root_size, "measured the tree");

    // The image holds the node's secrets (munge key, host key, shadow).
    let tmp = NewFile::create(out, Inode::new(0o600, Durability::Publish))?;
    let img = tmp.path().to_path_buf();
    let table_ids = table::TableIds {
        mbr_signature: ids.u32("mbr"),
        disk_guid: ids.uuid("gpt-disk"),
        part_guids: [ids.uuid("gpt-boot"), ids.uuid("gpt-root")],
    };
    // A misestimated size is retried larger: deterministic, so two builds
    // still agree.
    let mut head = None;
    for attempt in 0.. {
        let (parts, total) = geometry(layout, root_size);
        let f = tmp.file();
        f.set_len(0)
            .and_then(|_| f.set_len(total))
            .with_context(|| format!("sizing {}", img.display()))?;
        let partuuids = table::write_table(&img, layout.table, parts, &table_ids)?;
        tracing::debug!(?partuuids, "partition table written");
        treefix::point_tree_at(tree, boot_rel, &partuuids, epoch)?;
        // The boot files are moved aside (ext4 gets an empty mount point)
        // and make the FAT partition from there, while mke2fs makes the
        // root partition (it uses about one core of two); then the image
        // before the root partition is final and is hashed, still while
        // mke2fs runs.
        let aside = treefix::BootAside::new(tree, boot_rel)?;
        let boot_files = aside.files();
        // Both threads are joined when the scope ends, before the boot
        // files go back (`aside` is dropped after it).
        let (fitted, prefix) = std::thread::scope(|sc| {
            let prefix = sc.spawn(|| -> Result<_> {
                fat::write_fat(
                    &img,
                    parts[0].start,
                    parts[0].size,
                    &boot_files,
                    ids.u32("fat"),
                    "bootfs",
                    epoch,
                )?;
                tracing::debug!(elapsed = ?started.elapsed(), "boot partition written");
                bmap::hash_prefix(&img, parts[1].start)
            });
            let inodes = ext4::inode_count(usage, root_size);
            let fitted = ext4::make_ext4(
                &img,
                parts[1].start,
                parts[1].size,
                inodes,
                tree,
                &fs_uuid,
                epoch,
            );
            let prefix = prefix
                .join()
                .map_err(|_| anyhow::anyhow!("the hashing thread panicked"));
            (fitted, prefix)
        });
        drop(aside);
        let (fitted, prefix) = (fitted?, prefix??);
        if fitted {
            // mke2fs must not have touched the table it was given.
            let again = table::read_partuuids(&img, layout.table)?;
            if again != partuuids {
                bail!(
                    "the partition table changed while building {}",
                    img.display()
                );
            }
            head = Some(prefix);
            break;
        }
        if attempt >= 3 {
            bail!(
                "node {}: the tree does not fit in a {} MiB root partition",
                plan.name,
                root_size >> 20
            );
        }
        root_size = (root_size + root_size / 4).div_ceil(layout.alignment) * layout.alignment;
        tracing::info!(
            "root file system too small, retrying with {} MiB",
            root_size >> 20
        );
    }
    tracing::debug!(elapsed = ?started.elapsed(), "root partition written");
    let (map, sha256) = bmap::map_image(&img, head, || match discard_tree {
        true => crate::fs::remove_tree(tree),
        false => Ok(()),
    })?;
    tracing::debug!(elapsed = ?started.elapsed(), "image mapped and hashed");
    let size = map.image_size;
    tmp.commit()?;
    let (bmap_path, sha_path) = bmap::write_sidecars(out, &map, &sha256)?;
    tracing::info!(
        "{}: {} MiB image, {} MiB of data, in {:.1} s",
        out.display(),
        size >> 20,
        map.mapped_bytes() >> 20,
        started.elapsed().as_secs_f64()
    );
    Ok(SdImage {
        image: out.to_path_buf(),
        bmap: bmap_path,
        sha256_file: sha_path,
        sha256,
        size,
    })
}

/// `<image>.sha256`, the checksum file written beside an image.
pub fn sha256_path(image: &Path) -> PathBuf {
    let name = image.file_name().unwrap_or_default().to_string_lossy();
    image.with_file_name(format!("{name}.sha256"))
}

impl SdImage {
    /// Describe an image built earlier, from its sidecar files.
    pub fn existing(image: &Path) -> Result<SdImage> {
        let sha256_file = sha256_path(image);
        let text = std::fs::read_to_string(&sha256_file)
            .with_context(|| format!("reading {}", sha256_file.display()))?;
        let sha256 = text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let name = image.file_name().unwrap_or_default().to_string_lossy();
        Ok(SdImage {
            image: image.to_path_buf(),
            bmap: image.with_file_name(format!("{name}.bmap")),
            sha256_file,
            sha256,
            size: std::fs::metadata(image)
                .with_context(|| format!("reading {}", image.display()))?
                .len(),
        })
    }
}

/// How a copy of an image is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    Zst,
    Xz,
}

/// Write `<image>.zst` or `<image>.xz` beside the image (reproducibly:
/// zstd with explicit worker threads, xz single stream). Returns its path.
pub fn compress_image(image: &Path, kind: Compress) -> Result<PathBuf> {
    let name = image
        .file_name()
        .context("the image path has no file name")?
        .to_string_lossy()
        .into_owned();
    let ext = match kind {
        Compress::Zst => "zst",
        Compress::Xz => "xz",
    };
    let out = image.with_file_name(format!("{name}.{ext}"));
    let mut input = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    // A compressed image holds the same secrets as the image.
    let tmp = NewFile::create(&out, Inode::new(0o600, Durability::Publish))?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let len = input.metadata().map(|m| m.len()).ok();
    let mut progress = crate::progress::Progress::bytes("compressing", len);
    let mut reader = crate::progress::ProgressReader {
        inner: &mut input,
        progress: &mut progress,
    };
    match kind {
        Compress::Zst => {
            let mut enc = zstd::Encoder::new(tmp.file(), 3).context("starting zstd")?;
            // multithread(n >= 1) gives the same bytes for any n; 0 differs.
            enc.multithread(threads.max(1)).context("zstd threads")?;
            enc.include_checksum(true).context("zstd checksum")?;
            std::io::copy(&mut reader, &mut enc)
                .with_context(|| format!("compressing {}", image.display()))?;
            enc.finish().context("finishing zstd")?;
        }
        Compress::Xz => {
            let stream = liblzma::stream::MtStreamBuilder::new()
                .threads(threads.max(1))
                .preset(6)
                .check(liblzma::stream::Check::Crc64)
                .encoder()
                .context("starting xz")?;
            let mut enc = liblzma::write::XzEncoder::new_stream(tmp.file(), stream);
            std::io::copy(&mut reader, &mut enc)
                .with_context(|| format!("compressing {}", image.display()))?;
            enc.finish().context("finishing xz")?;
        }
    }
    progress.finish();
    tmp.commit()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_well_formed_and_distinct() {
        let ids = Ids { seed: [7; 32] };
        let a = ids.uuid("a");
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, ids.uuid("b"));
        assert_ne!(ids.u32("mbr"), 0);
    }

    #[test]
    fn gpt_leaves_room_for_the_backup_table() {
        let mut l = parse_layout(
            "table='gpt'\nalignment_mib=4\nboot_size_mib=256\nroot_margin_mib=0\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let (p, total) = geometry(&l, 64 << 20);
        assert_eq!(p[1].start, 260 << 20);
        assert_eq!(total, (260 + 64 + 4) << 20);
        l.table = TableKind::Mbr;
        assert_eq!(geometry(&l, 64 << 20).1, (260 + 64) << 20);
    }

    #[test]
    fn compressed_copies_decompress_to_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.img");
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        std::fs::write(&img, &data).unwrap();
        let z = compress_image(&img, Compress::Zst).unwrap();
        assert_eq!(z.file_name().unwrap(), "a.img.zst");
        assert_eq!(zstd::decode_all(File::open(&z).unwrap()).unwrap(), data);
        let first = std::fs::read(&z).unwrap();
        compress_image(&img, Compress::Zst).unwrap();
        assert_eq!(std::fs::read(&z).unwrap(), first, "zstd not reproducible");
        let x = compress_image(&img, Compress::Xz).unwrap();
        let mut back = Vec::new();
        std::io::Read::read_to_end(
            &mut liblzma::read::XzDecoder::new(File::open(&x).unwrap()),
            &mut back,
        )
        .unwrap();
        assert_eq!(back, data);
    }
}
