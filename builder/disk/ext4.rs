//! The ext4 root partition: `mke2fs -d TREE` written straight into the
//! image at the partition offset (no copy), with every input that changes
//! the bytes pinned: features and sizes from our own MKE2FS_CONFIG (not the
//! host's /etc/mke2fs.conf), UUID and hash seed, SOURCE_DATE_EPOCH.

use crate::tools;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub const BLOCK: u64 = 4096;
const INODE_SIZE: u64 = 256;
const INODE_RATIO: u64 = 16384;

/// Features every Pi kernel since 5.10 and e2fsprogs since 1.46 (bullseye)
/// handle, so the first-boot resize2fs and e2fsck on the Pi accept the fs.
/// Not `orphan_file` (needs e2fsprogs 1.47 on the Pi). `resize_inode`
/// reserves descriptor blocks so the first boot can grow it online.
const MKE2FS_CONF: &str = "\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
\treserved_ratio = 5.0
\tlazy_itable_init = true
\tlazy_journal_init = false

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,metadata_csum_seed,64bit,dir_nlink,extra_isize
\t}
";

/// What the tree needs, counted once per inode (hardlinks share one).
#[derive(Debug, Default, Clone, Copy)]
pub struct TreeUsage {
    pub inodes: u64,
    pub blocks: u64,
}

/// Walk the tree, skipping the contents of `skip` (the boot directory,
/// which stays an empty mount point in the root file system).
pub fn measure(tree: &Path, skip: &Path) -> Result<TreeUsage> {
    let mut seen = HashSet::new();
    let mut u = TreeUsage::default();
    let mut dir_bytes = 0u64;
    let walk = walkdir::WalkDir::new(tree)
        .follow_links(false)
        .same_file_system(true)
        .into_iter()
        .filter_entry(|e| e.path().parent() != Some(skip));
    for e in walk {
        let e = e.with_context(|| format!("walking {}", tree.display()))?;
        let m = e
            .metadata()
            .with_context(|| format!("reading {}", e.path().display()))?;
        // Directory entries: 8 bytes + name, 4-aligned, in the parent.
        dir_bytes += 8 + (e.file_name().len() as u64).div_ceil(4) * 4;
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        u.inodes += 1;
        let ft = m.file_type();
        if ft.is_file() {
            u.blocks += m.size().div_ceil(BLOCK);
            // An extent block for big or fragmented files.
            if m.size() > 128 << 20 {
                u.blocks += 1;
            }
        } else if ft.is_dir() {
            u.blocks += 1;
        } else if ft.is_symlink() && m.size() >= 60 {
            // Longer targets than 60 bytes leave the inode for a block.
            u.blocks += 1;
        }
    }
    // Directories half full on average (htree splits), plus index blocks.
    u.blocks += dir_bytes.div_ceil(BLOCK) * 2;
    Ok(u)
}

/// Journal size mke2fs picks for a file system of `blocks` 4 KiB blocks
/// (e2fsprogs `ext2fs_default_journal_size`).
fn journal_blocks(blocks: u64) -> u64 {
    match blocks {
        b if b < 2048 => 0,
        b if b < 32768 => 1024,
        b if b < 256 * 1024 => 4096,
        b if b < 512 * 1024 => 8192,
        b if b < 4096 * 1024 => 16384,
        b if b < 8192 * 1024 => 32768,
        b if b < 16384 * 1024 => 65536,
        b if b < 32768 * 1024 => 131072,
        _ => 262144,
    }
}

/// Inodes to ask for: the tree's plus room, never fewer than the ratio gives.
pub fn inode_count(usage: TreeUsage, size: u64) -> u64 {
    (usage.inodes + usage.inodes / 4 + 1024).max(size / INODE_RATIO)
}

/// File system size for the tree plus `margin` free bytes, rounded up to
/// `align`: data, inode tables, journal, group metadata, reserved blocks.
pub fn fs_size(usage: TreeUsage, margin: u64, align: u64) -> u64 {
    let data = usage.blocks * BLOCK;
    let mut size = data + margin;
    for _ in 0..4 {
        let blocks = size / BLOCK;
        let inodes = inode_count(usage, size);
        // Bitmaps, descriptors, backups and reserved GDT: about 1%.
        let meta = inodes * INODE_SIZE + journal_blocks(blocks) * BLOCK + size / 100 + (8 << 20);
        // 5% reserved for root is not usable by users: keep the margin free.
        size = (data + meta + margin) * 100 / 95;
    }
    size.div_ceil(align) * align
}

/// e2fsprogs older than 1.47.1 copies atime/ctime from the staging tree
/// and ignores SOURCE_DATE_EPOCH: images would differ from run to run.
fn check_version() -> Result<()> {
    let out = tools::run(tools::MKE2FS.command()?.arg("-V"))?;
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let ver = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split('.')
        .map(|p| {
            p.split('-')
                .next()
                .unwrap_or("")
                .parse::<u32>()
                .unwrap_or(0)
        })
        .collect::<Vec<_>>();
    if ver.len() >= 2 && (ver[0], ver[1], ver.get(2).copied().unwrap_or(0)) >= (1, 47, 1) {
        return Ok(());
    }
    bail!(
        "mke2fs is too old for reproducible images ({}): install {}",
        text.lines().next().unwrap_or("unknown version"),
        tools::MKE2FS.package
    )
}

/// Make the ext4 file system of `size` bytes at `offset` in `image` from
/// `tree`. Returns Ok(false) when the tree did not fit (the caller grows
/// the partition and tries again), so a misestimate is not fatal.
pub fn make_ext4(
    image: &Path,
    offset: u64,
    size: u64,
    inodes: u64,
    tree: &Path,
    uuid: &str,
    epoch: u64,
) -> Result<bool> {
    check_version()?;
    let conf_dir = tempfile::tempdir().context("creating a temporary directory")?;
    let conf = conf_dir.path().join("mke2fs.conf");
    std::fs::write(&conf, MKE2FS_CONF).with_context(|| format!("writing {}", conf.display()))?;
    let mut cmd = tools::MKE2FS.command()?;
    cmd.env("MKE2FS_CONFIG", &conf)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args([
            "-F", "-q", "-t", "ext4", "-b", "4096", "-I", "256", "-L", "rootfs",
        ])
        .args(["-U", uuid, "-N", &inodes.to_string()])
        // nodiscard: the image file is fresh, and a discard would let
        // mke2fs mark inode tables as zeroed, which blocks left out of the
        // bmap are not on a used card; the Pi's kernel zeroes them lazily.
        .arg("-E")
        .arg(format!(
            "hash_seed={uuid},offset={offset},nodiscard,lazy_itable_init=1,root_owner=0:0"
        ))
        .arg("-d")
        .arg(tree)
        .arg(image)
        .arg(format!("{}k", size / 1024));
    match tools::run(&mut cmd) {
        Ok(_) => Ok(true),
        Err(e) => {
            let text = format!("{e:#}");
            if text.contains("No space left") && host_short_of(image, size) {
                // The disk holding the image is full, not the file system
                // inside it: a larger partition would not help.
                return Err(e).with_context(|| {
                    format!(
                        "writing {}: No space left on device (on the disk holding the image)",
                        image.display()
                    )
                });
            }
            if text.contains("Could not allocate block")
                || text.contains("No space left")
                || text.contains("Could not allocate inode")
            {
                tracing::debug!("the root file system was too small: {text}");
                Ok(false)
            } else {
                Err(e).context("building the ext4 root file system")
            }
        }
    }
}

/// Whether the file system holding `image` has less room than the
/// partition being written into it (the image is sparse: that is what the
/// partition can still take).
fn host_short_of(image: &Path, size: u64) -> bool {
    let dir = image
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available().saturating_mul(s.fragment_size()) < size)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_covers_data_and_margin() {
        let u = TreeUsage {
            inodes: 13_000,
            blocks: 80_000,
        };
        let s = fs_size(u, 256 << 20, 4 << 20);
        assert_eq!(s % (4 << 20), 0);
        assert!(s > 80_000 * BLOCK + (256 << 20));
        assert!(s < 2 * (80_000 * BLOCK + (256 << 20)), "{s}");
        assert!(inode_count(u, s) >= 13_000);
        assert_eq!(journal_blocks(100_000), 4096);
    }
}
