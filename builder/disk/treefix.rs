//! Make the node tree point at the partitions of its image (cmdline.txt,
//! fstab) and grow the root file system on first boot. Files in the tree
//! may be hardlinks shared with other nodes and the store: nothing is
//! opened for writing, every change is a new file renamed over the old.

use crate::fs::{Durability, Inode};
use anyhow::{Context, Result};
use filetime::FileTime;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const GROW_UNIT: &str = "chbuild-grow-rootfs.service";
const GROW_SCRIPT: &str = "usr/local/sbin/chbuild-grow-rootfs";
const GROW_STAMP: &str = "/var/lib/chbuild/rootfs-grown";

/// The first-boot step (the reference `raspi-expand-rootfs` role): grow
/// the root partition to the end of the card, then the file system. Its
/// script and unit are the templates of `overlays/roles/sd_grow/`, rendered
/// here because only an SD image has a partition to grow.
fn grow_files() -> Result<Vec<crate::overlay::Rendered>> {
    let overlays = crate::overlay::Overlays::builtin()?;
    let layer = overlays
        .layer("roles/sd_grow")?
        .context("the overlays have no layer roles/sd_grow")?;
    let ctx = serde_json::json!({
        "roles": { "sd_grow": { "unit": GROW_UNIT, "script": GROW_SCRIPT, "stamp": GROW_STAMP } }
    });
    crate::overlay::render_layers(&ctx, &[layer])
}

/// New cmdline.txt: the base's arguments with `root=PARTUUID=...`,
/// `rootfstype=ext4 rootwait` in place of the old root arguments.
pub fn rewrite_cmdline(old: &str, root_partuuid: &str) -> String {
    let ours = [
        format!("root=PARTUUID={root_partuuid}"),
        "rootfstype=ext4".to_string(),
        "rootwait".to_string(),
    ];
    let mut out: Vec<String> = Vec::new();
    let mut placed = false;
    for tok in old.split_whitespace() {
        if tok.starts_with("root=") {
            if !placed {
                out.extend(ours.iter().cloned());
                placed = true;
            }
        } else if tok.starts_with("rootfstype=") || tok == "rootwait" {
            continue;
        } else {
            out.push(tok.to_string());
        }
    }
    if !placed {
        out.extend(ours);
    }
    out.join(" ") + "\n"
}

/// New fstab: the base's lines except those mounting / or the boot
/// directory, after our two PARTUUID lines.
pub fn rewrite_fstab(old: &str, partuuids: &[String; 2], boot_mount: &str) -> String {
    let mut out = format!(
        "PARTUUID={}  /  ext4  defaults,noatime  0  1\nPARTUUID={}  {boot_mount}  vfat  defaults  0  2\n",
        partuuids[1], partuuids[0]
    );
    for line in old.lines() {
        let mp = line.split_whitespace().nth(1);
        let is_comment = line.trim_start().starts_with('#');
        if !is_comment && (mp == Some("/") || mp == Some(boot_mount)) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Keeps directories' mtimes across our renames (the tree is reproducible).
struct DirTimes(Vec<(PathBuf, FileTime)>);

impl DirTimes {
    fn new() -> DirTimes {
        DirTimes(Vec::new())
    }
    fn keep(&mut self, dir: &Path) -> Result<()> {
        if self.0.iter().any(|(d, _)| d == dir) {
            return Ok(());
        }
        let m = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
        self.0
            .push((dir.to_path_buf(), FileTime::from_last_modification_time(&m)));
        Ok(())
    }
    fn restore(self) -> Result<()> {
        // Deepest first: restoring a child changes nothing above it.
        for (d, t) in self.0.iter().rev() {
            filetime::set_file_mtime(d, *t)
                .with_context(|| format!("setting the time of {}", d.display()))?;
        }
        Ok(())
    }
}

/// chown that only root can do; a rootless build keeps its own owner,
/// like the rest of a tree it made.
fn chown_like(path: &Path, uid: u32, gid: u32) -> Result<()> {
    match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("changing the owner of {}", path.display())),
    }
}

/// Create missing directories under `tree` owned like their parent.
fn ensure_dirs(tree: &Path, rel: &Path, times: &mut DirTimes) -> Result<()> {
    let mut cur = tree.to_path_buf();
    for c in rel.components() {
        let next = cur.join(c);
        if !next.exists() {
            times.keep(&cur)?;
            let pm =
                std::fs::metadata(&cur).with_context(|| format!("reading {}", cur.display()))?;
            std::fs::create_dir(&next).with_context(|| format!("creating {}", next.display()))?;
            std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("setting the mode of {}", next.display()))?;
            chown_like(&next, pm.uid(), pm.gid())?;
        }
        cur = next;
    }
    Ok(())
}

/// Replace (or create) `rel` in the tree with `data` as a new inode:
/// owner and mode of the old file (or `mode`, owned like the directory),
/// mtime = SOURCE_DATE_EPOCH. Never writes into an existing file.
fn replace_file(
    tree: &Path,
    rel: &str,
    data: &[u8],
    mode: u32,
    epoch: u64,
    times: &mut DirTimes,
) -> Result<()> {
    let (path, inode) = prepare(tree, rel, mode, epoch, times)?;
    crate::fs::write_new(&path, data, inode)
}

/// A symlink made beside and renamed over, like the files.
fn replace_symlink(
    tree: &Path,
    rel: &str,
    target: &str,
    epoch: u64,
    times: &mut DirTimes,
) -> Result<()> {
    let (path, inode) = prepare(tree, rel, 0o777, epoch, times)?;
    crate::fs::symlink_new(&path, Path::new(target), inode)
}

/// The parents of `rel` made, their times kept; the path and what its new
/// inode gets. The tree is about to go into an image, not published as
/// files: no flush per file.
fn prepare(
    tree: &Path,
    rel: &str,
    mode: u32,
    epoch: u64,
    times: &mut DirTimes,
) -> Result<(PathBuf, Inode)> {
    let path = tree.join(rel);
    let dir = path.parent().context("no parent")?;
    ensure_dirs(tree, dir.strip_prefix(tree).unwrap_or(Path::new("")), times)?;
    times.keep(dir)?;
    let old = std::fs::symlink_metadata(&path)
        .ok()
        .filter(|m| m.is_file());
    let inode = match old {
        Some(m) => Inode::like(Some(&m), mode, Durability::InStagedTree),
        None => {
            let pm =
                std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
            Inode::new(mode, Durability::InStagedTree).owner(pm.uid(), pm.gid())
        }
    };
    let t = FileTime::from_unix_time(epoch as i64, 0);
    Ok((path, inode.mtime(Some(t))))
}

/// Point cmdline.txt and fstab at the partitions, install the first-boot
/// grow step. `partuuids` are boot and root, as read from the table.
pub fn point_tree_at(
    tree: &Path,
    boot_rel: &Path,
    partuuids: &[String; 2],
    epoch: u64,
) -> Result<()> {
    let mut times = DirTimes::new();
    let boot = boot_rel.to_string_lossy();
    let cmdline_rel = format!("{boot}/cmdline.txt");
    let cmdline_path = tree.join(&cmdline_rel);
    let old = match std::fs::read_to_string(&cmdline_path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "console=serial0,115200 console=tty1 fsck.repair=yes".to_string()
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", cmdline_path.display())),
    };
    let new = rewrite_cmdline(&old, &partuuids[1]);
    if new != old {
        replace_file(tree, &cmdline_rel, new.as_bytes(), 0o644, epoch, &mut times)?;
    }

    let fstab_path = tree.join("etc/fstab");
    let old = match std::fs::read_to_string(&fstab_path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", fstab_path.display())),
    };
    let new = rewrite_fstab(&old, partuuids, &format!("/{boot}"));
    if new != old {
        replace_file(tree, "etc/fstab", new.as_bytes(), 0o644, epoch, &mut times)?;
    }

    let unit_rel = format!("etc/systemd/system/{GROW_UNIT}");
    for f in grow_files()? {
        let Some(content) = &f.content else { continue };
        replace_file(
            tree,
            &f.path.to_string_lossy(),
            content,
            f.mode,
            epoch,
            &mut times,
        )?;
    }
    replace_symlink(
        tree,
        &format!("etc/systemd/system/multi-user.target.wants/{GROW_UNIT}"),
        &format!("/{unit_rel}"),
        epoch,
        &mut times,
    )?;
    times.restore()
}

/// Moves the boot directory out of the tree while mke2fs copies it, leaving
/// an empty directory (same owner, mode, time) as the mount point; puts it
/// back on drop, error or not.
pub struct BootAside {
    boot: PathBuf,
    holder: Option<tempfile::TempDir>,
    parent_time: FileTime,
}

impl BootAside {
    pub fn new(tree: &Path, boot_rel: &Path) -> Result<BootAside> {
        let boot = tree.join(boot_rel);
        let parent = boot.parent().context("boot directory has no parent")?;
        let pm =
            std::fs::metadata(parent).with_context(|| format!("reading {}", parent.display()))?;
        let bm = std::fs::metadata(&boot).with_context(|| format!("reading {}", boot.display()))?;
        // Beside the tree, on the same file system, outside what mke2fs copies.
        let outer = tree
            .canonicalize()
            .with_context(|| format!("resolving {}", tree.display()))?;
        let outer = outer.parent().unwrap_or(Path::new("/"));
        let holder = tempfile::Builder::new()
            .prefix(".chbuild-boot-aside-")
            .tempdir_in(outer)
            .with_context(|| format!("creating a temporary directory in {}", outer.display()))?;
        let aside = holder.path().join("boot");
        std::fs::rename(&boot, &aside)
            .with_context(|| format!("moving {} aside", boot.display()))?;
        let guard = BootAside {
            boot: boot.clone(),
            holder: Some(holder),
            parent_time: FileTime::from_last_modification_time(&pm),
        };
        std::fs::create_dir(&boot).with_context(|| format!("creating {}", boot.display()))?;
        std::fs::set_permissions(&boot, std::fs::Permissions::from_mode(bm.mode() & 0o7777))
            .with_context(|| format!("setting the mode of {}", boot.display()))?;
        chown_like(&boot, bm.uid(), bm.gid())?;
        let t = FileTime::from_last_modification_time(&bm);
        filetime::set_file_times(&boot, t, t)
            .with_context(|| format!("setting the time of {}", boot.display()))?;
        Ok(guard)
    }
}

impl BootAside {
    /// Where the boot directory's files are while it is aside.
    pub fn files(&self) -> PathBuf {
        self.holder
            .as_ref()
            .expect("held until dropped")
            .path()
            .join("boot")
    }
}

impl Drop for BootAside {
    fn drop(&mut self) {
        let Some(holder) = self.holder.take() else {
            return;
        };
        let aside = holder.path().join("boot");
        // remove_dir refuses a non-empty directory: nothing is ever lost.
        let res = std::fs::remove_dir(&self.boot).and_then(|_| std::fs::rename(&aside, &self.boot));
        match res {
            Ok(()) => {
                if let Some(p) = self.boot.parent() {
                    let _ = filetime::set_file_mtime(p, self.parent_time);
                }
            }
            Err(e) => {
                // Keep the moved files rather than deleting them with the holder.
                let kept = holder.keep();
                tracing::error!(
                    "could not put the boot directory back into {} ({e}); it is in {}",
                    self.boot.display(),
                    kept.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_keeps_other_args_and_replaces_root() {
        let c = rewrite_cmdline(
            "console=serial0,115200 root=/dev/mmcblk0p2 rootwait quiet\n",
            "abcd0123-02",
        );
        assert_eq!(
            c,
            "console=serial0,115200 root=PARTUUID=abcd0123-02 rootfstype=ext4 rootwait quiet\n"
        );
        assert_eq!(rewrite_cmdline(&c, "abcd0123-02"), c);
        assert_eq!(
            rewrite_cmdline("quiet", "x-02"),
            "quiet root=PARTUUID=x-02 rootfstype=ext4 rootwait\n"
        );
    }

    #[test]
    fn fstab_replaces_root_and_boot_lines() {
        let old = "# <file system> <mount point>\n/dev/mmcblk0p2 / ext4 defaults 0 1\n172.19.180.254:/x /boot/firmware nfs defaults 0 0\nproc /proc proc defaults 0 0\n";
        let ids = ["abcd0123-01".to_string(), "abcd0123-02".to_string()];
        let f = rewrite_fstab(old, &ids, "/boot/firmware");
        assert_eq!(
            f,
            "PARTUUID=abcd0123-02  /  ext4  defaults,noatime  0  1\nPARTUUID=abcd0123-01  /boot/firmware  vfat  defaults  0  2\n# <file system> <mount point>\nproc /proc proc defaults 0 0\n"
        );
        assert_eq!(rewrite_fstab(&f, &ids, "/boot/firmware"), f);
    }

    #[test]
    fn replacing_a_hardlinked_file_leaves_the_other_link_alone() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::create_dir_all(tree.join("boot/firmware")).unwrap();
        std::fs::write(
            d.path().join("store-fstab"),
            "/dev/sda1 / ext4 defaults 0 1\n",
        )
        .unwrap();
        std::fs::hard_link(d.path().join("store-fstab"), tree.join("etc/fstab")).unwrap();
        let ids = ["00000001-01".to_string(), "00000001-02".to_string()];
        point_tree_at(&tree, Path::new("boot/firmware"), &ids, 1_700_000_000).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("store-fstab")).unwrap(),
            "/dev/sda1 / ext4 defaults 0 1\n"
        );
        let f = std::fs::read_to_string(tree.join("etc/fstab")).unwrap();
        assert!(f.starts_with("PARTUUID=00000001-02  /  ext4"), "{f}");
        let c = std::fs::read_to_string(tree.join("boot/firmware/cmdline.txt")).unwrap();
        assert!(c.contains("root=PARTUUID=00000001-02"), "{c}");
        let link = tree.join(format!(
            "etc/systemd/system/multi-user.target.wants/{GROW_UNIT}"
        ));
        assert_eq!(
            std::fs::read_link(link).unwrap(),
            Path::new("/etc/systemd/system").join(GROW_UNIT)
        );
        let m = std::fs::metadata(tree.join(GROW_SCRIPT)).unwrap();
        assert_eq!(m.mode() & 0o777, 0o755);
        assert_eq!(m.mtime(), 1_700_000_000);

        // The boot directory moves aside and comes back with its files.
        {
            let _a = BootAside::new(&tree, Path::new("boot/firmware")).unwrap();
            assert_eq!(
                std::fs::read_dir(tree.join("boot/firmware"))
                    .unwrap()
                    .count(),
                0
            );
        }
        assert!(tree.join("boot/firmware/cmdline.txt").is_file());
    }
}
