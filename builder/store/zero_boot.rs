//! The Zero boot layer: a Zero's tree (its package layer, or the base)
//! with an initramfs rebuilt to bring up ClusterCTRL's USB network before
//! the NFS root is mounted (`overlays/roles/usbboot_initramfs/`).
//!
//! Every Zero reads its number from the kernel command line at boot, so
//! their initramfs is the same: it is built once per parent and set of
//! initramfs files, in the store, not per node, and the Zeros' trees then
//! start from it. It is keyed by [`FORMAT`], the parent's key, the boot
//! directory and the rendered files (path, mode, bytes), and built like a
//! package layer (see [`super::layer`]): in an overlayfs mount over the
//! parent, in a private mount namespace, so nothing the store shares by
//! hardlink is ever written. In the tree (chroot, under qemu-user when
//! foreign) `mkinitramfs` builds each kernel's image, with the machine's
//! own copying tools where possible (`initramfs-native.sh`, shared with
//! Debian bases); each image replaces `initrd.img-<version>` wherever the
//! parent has one (`boot/`, the boot directory), and
//! `/var/lib/initramfs-tools/<version>` gets its sha1 as `update-initramfs`
//! writes it, so a later `update-initramfs -u` on the Zero accepts it.
//! `update-initramfs`' post-update hooks are not run: raspi-firmware's
//! would rewrite `config.txt` and `cmdline.txt` in the layer.
//!
//! ```text
//! <store>/layers/<key>/tree/         the parent with the new initramfs
//! <store>/layers/<key>/layer.json    `initramfs` says what it is
//! ```

use super::layer::{InitramfsLayer, LayerMeta, LAYER_META, TREE};
use super::{BaseTree, Store};
use crate::fs::{copy_tree, merge_upper, remove_tree, sync_dir, LinkPolicy};
use crate::profile::model::Arch;
use crate::tools;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::fs;
use std::path::Path;

/// Bumped when the way the layer is built changes what it holds.
const FORMAT: &str = "chbuild-zero-boot-3";

const MOUNT_SCRIPT: &str = include_str!("zero-boot-mount.sh");

/// Runs in the tree (chroot) for every kernel of `CHBUILD_KERNELS`: the
/// new image replaces the parent's in `/boot` and the boot directory,
/// each as a new file renamed over the old name.
const IN_TREE: &str = r#"set -e
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
case "/$CHBUILD_BOOT_DIR" in
  /boot) places=/boot ;;
  *) places="/boot /$CHBUILD_BOOT_DIR" ;;
esac
for ver in $CHBUILD_KERNELS; do
  out=/var/tmp/chbuild-initrd.img-$ver
  mkinitramfs -o "$out" "$ver"
  for place in $places; do
    f=$place/initrd.img-$ver
    [ -e "$f" ] || continue
    cp "$out" "$f.chbuild-new"
    chmod 0644 "$f.chbuild-new"
    mv -f "$f.chbuild-new" "$f"
    echo "chbuild: $f rebuilt"
  done
  rm -f "$out"
  if [ -e "/boot/initrd.img-$ver" ]; then
    mkdir -p /var/lib/initramfs-tools
    sha1sum "/boot/initrd.img-$ver" >"/var/lib/initramfs-tools/$ver"
  fi
done
"#;

/// The files a Zero boot layer adds to the tree, rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFile {
    /// Tree-relative path (`etc/initramfs-tools/...`).
    pub path: String,
    pub mode: u32,
    pub content: Vec<u8>,
}

/// What a Zero boot layer is built from, besides its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZeroBoot {
    pub files: Vec<BootFile>,
    /// The boot directory (`boot/firmware`), tree-relative.
    pub boot_dir: String,
}

/// The kernel versions of the tree at `root` whose initramfs is there to
/// rebuild: a module directory, and `initrd.img-<version>` in `boot/` or
/// in the boot directory. Sorted.
pub fn kernels(root: &Path, boot_dir: &str) -> Result<Vec<String>> {
    let modules = ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.is_dir());
    let Some(modules) = modules else {
        return Ok(vec![]);
    };
    let mut out = vec![];
    for e in fs::read_dir(&modules).with_context(|| format!("reading {}", modules.display()))? {
        let e = e.with_context(|| format!("reading {}", modules.display()))?;
        let ver = e.file_name().to_string_lossy().into_owned();
        let image = format!("initrd.img-{ver}");
        if ["boot", boot_dir]
            .iter()
            .any(|d| root.join(d).join(&image).symlink_metadata().is_ok())
        {
            out.push(ver);
        }
    }
    out.sort();
    Ok(out)
}

/// The layer's build, [`IN_TREE`] in the tree, with the machine's own
/// copying tools and its `gzip` where they are the tree's very versions:
/// mkinitramfs compresses with gzip when the tree has no zstd, and the
/// image holds klibc's `gunzip`, never the compressor.
fn native_script() -> String {
    super::debian::native_initramfs(&["gzip"], r#"/bin/sh -c "$CHBUILD_IN_TREE""#)
}

/// Whether a Zero's tree from `root` gets a boot layer: it has
/// initramfs-tools and an initramfs to rebuild.
pub fn applies(root: &Path, boot_dir: &str) -> Result<bool> {
    let has_tools = ["usr/sbin/mkinitramfs", "sbin/mkinitramfs"]
        .iter()
        .any(|p| root.join(p).exists());
    Ok(has_tools && !kernels(root, boot_dir)?.is_empty())
}

/// The key of the boot layer on the tree keyed `parent`.
pub fn key(parent: &str, boot: &ZeroBoot) -> String {
    let mut h = Sha256::new();
    for part in [FORMAT, parent, &boot.boot_dir, IN_TREE, &native_script()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for f in &boot.files {
        h.update(f.path.as_bytes());
        h.update([0]);
        h.update(f.mode.to_le_bytes());
        h.update((f.content.len() as u64).to_le_bytes());
        h.update(&f.content);
    }
    hex::encode(h.finalize())
}

impl Store {
    /// The Zero boot layer on `parent` (the base `base`, or a package
    /// layer on it), built now when the store lacks it.
    pub fn ensure_zero_boot(
        &self,
        parent: &BaseTree,
        base: &str,
        arch: Arch,
        boot: &ZeroBoot,
    ) -> Result<BaseTree> {
        let key = key(&parent.digest, boot);
        if let Some(t) = self.layer_tree(&key) {
            return Ok(t);
        }
        let _lock = self.lock()?;
        if let Some(t) = self.layer_tree(&key) {
            return Ok(t);
        }
        build(self, &key, parent, base, arch, boot)
    }
}

fn build(
    store: &Store,
    key: &str,
    parent: &BaseTree,
    base: &str,
    arch: Arch,
    boot: &ZeroBoot,
) -> Result<BaseTree> {
    let started = std::time::Instant::now();
    if !crate::fs::is_root() {
        bail!(
            "rebuilding the Zeros' initramfs in a store layer needs root (an overlay \
             mount, and the tree's owners): run chbuild as root"
        );
    }
    tools::check_foreign_arch(arch.qemu())?;
    let kernels = kernels(&parent.root, &boot.boot_dir)?;
    let tmp = store.tempdir()?;
    let (upper, work, merged) = (
        tmp.path().join("upper"),
        tmp.path().join("work"),
        tmp.path().join("merged"),
    );
    for d in [&upper, &work, &merged] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // The initramfs-tools files go straight into the upper directory: new
    // inodes the overlay shows over the parent's (which has none of them).
    for f in &boot.files {
        write_upper(&upper, &parent.root, f)?;
    }
    tracing::info!(
        "Zero boot layer {}: initramfs for {} on {}",
        &key[..12],
        kernels.join(" "),
        &parent.digest[..12]
    );
    let progress = crate::progress::Progress::steps(&format!("Zero boot layer {}", &key[..12]));
    progress.step(&format!(
        "mkinitramfs {} (in the tree, under emulation)",
        kernels.join(" ")
    ));
    let outer = format!("set -e\nroot=$1\n{}", native_script());
    let argv: Vec<OsString> = vec![
        "sh".into(),
        "-c".into(),
        outer.into(),
        "sh".into(),
        merged.clone().into(),
    ];
    let versions = kernels.join(" ");
    // mkinitramfs clamps times and sorts its archive for a reproducible
    // image. The time is the base's (its `etc`, the default epoch of the
    // nodes' trees), which the layer's key fixes through its parent's: a
    // package layer's own `etc` has the time it was built.
    let base_tree = store
        .stored(base)
        .with_context(|| format!("the base {base} of the Zero boot layer is not in the store"))?;
    let etc = base_tree.root.join("etc");
    let epoch = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&etc)
            .with_context(|| format!("reading {}", etc.display()))?
            .mtime()
            .max(0)
            .to_string()
    };
    let env = [
        ("SOURCE_DATE_EPOCH", epoch.as_str()),
        ("CHBUILD_IN_TREE", IN_TREE),
        ("CHBUILD_KERNELS", versions.as_str()),
        ("CHBUILD_BOOT_DIR", boot.boot_dir.as_str()),
        ("LC_ALL", "C.UTF-8"),
    ];
    let mounts = [parent.root.as_path(), &upper, &work, &merged];
    let out = tools::run_with_private_mounts(MOUNT_SCRIPT, &mounts, &argv, &env)?;
    let mut log = String::from_utf8_lossy(&out.stdout).into_owned();
    log.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        let lines: Vec<&str> = log.lines().collect();
        bail!(
            "rebuilding the Zeros' initramfs ({} on {}) failed; the store is unchanged:\n{}",
            versions,
            parent.root.display(),
            lines[lines.len().saturating_sub(25)..].join("\n")
        );
    }
    tracing::debug!("Zero boot layer {}:\n{log}", &key[..12]);

    progress.step("folding the layer into a tree");
    let tree = tmp.path().join(TREE);
    copy_tree(&parent.root, &tree, &LinkPolicy::link_all())
        .with_context(|| format!("linking the layer's parent into {}", tree.display()))?;
    // mkinitramfs' scratch space and the native tools' mount points are
    // gone; their directories' times stay the parent's.
    let stats = merge_upper(&upper, &tree, &["var/tmp", "run", "tmp"])
        .with_context(|| format!("folding the layer into {}", tree.display()))?;
    for d in [&upper, &work, &merged] {
        remove_tree(d)?;
    }
    let meta = LayerMeta {
        key: key.to_string(),
        base: base.to_string(),
        parent: (parent.digest != base).then(|| parent.digest.clone()),
        architecture: arch.debian().into(),
        sources: String::new(),
        packages: vec![],
        installed: vec![],
        size: stats.moved_bytes,
        seconds: started.elapsed().as_secs_f64(),
        initramfs: Some(InitramfsLayer {
            kernels: kernels.clone(),
            boot_dir: boot.boot_dir.clone(),
            files: boot.files.iter().map(|f| f.path.clone()).collect(),
        }),
    };
    progress.finish();
    let meta_path = tmp.path().join(LAYER_META);
    crate::fs::write_new(
        &meta_path,
        &serde_json::to_vec_pretty(&meta)?,
        crate::fs::Inode::new(0o644, crate::fs::Durability::Publish),
    )?;
    crate::fs::Dir::open(tmp.path())?.syncfs()?;
    let layers = store.layers_dir();
    fs::create_dir_all(&layers).with_context(|| format!("creating {}", layers.display()))?;
    let dest = layers.join(key);
    fs::rename(tmp.path(), &dest)
        .with_context(|| format!("renaming {} to {}", tmp.path().display(), dest.display()))?;
    let _ = tmp.keep();
    sync_dir(&layers)?;
    tracing::info!(
        "Zero boot layer {}: initramfs for {} rebuilt in {:.0} s",
        &key[..12],
        versions,
        meta.seconds
    );
    Ok(BaseTree {
        digest: key.to_string(),
        root: dest.join(TREE),
    })
}

/// Write one file into the overlay's upper directory, creating its
/// missing parent directories with the parent tree's owner and mode
/// (overlayfs would copy them up the same way).
fn write_upper(upper: &Path, lower: &Path, f: &BootFile) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let rel = Path::new(&f.path);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        bail!("{}: not a plain relative path", f.path);
    }
    let mut dir = std::path::PathBuf::new();
    for c in rel.parent().into_iter().flat_map(|p| p.components()) {
        dir.push(c);
        let (up, low) = (upper.join(&dir), lower.join(&dir));
        if up.exists() {
            continue;
        }
        let (mode, uid, gid) = match low.symlink_metadata() {
            Ok(m) if m.is_dir() => (m.mode() & 0o7777, m.uid(), m.gid()),
            Ok(_) => bail!("{} in the layer's parent is not a directory", low.display()),
            Err(_) => (0o755, 0, 0),
        };
        fs::create_dir(&up).with_context(|| format!("creating {}", up.display()))?;
        fs::set_permissions(&up, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", up.display()))?;
        std::os::unix::fs::lchown(&up, Some(uid), Some(gid))
            .with_context(|| format!("setting the owner of {}", up.display()))?;
        if let Ok(m) = low.symlink_metadata() {
            let t = filetime::FileTime::from_last_modification_time(&m);
            filetime::set_file_mtime(&up, t)
                .with_context(|| format!("setting the time of {}", up.display()))?;
        }
    }
    let path = upper.join(rel);
    crate::fs::write_new(
        &path,
        &f.content,
        crate::fs::Inode::new(f.mode, crate::fs::Durability::Publish),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(content: &str) -> ZeroBoot {
        ZeroBoot {
            files: vec![BootFile {
                path: "etc/initramfs-tools/conf.d/x".into(),
                mode: 0o644,
                content: content.as_bytes().to_vec(),
            }],
            boot_dir: "boot/firmware".into(),
        }
    }

    #[test]
    fn keys_follow_parent_files_and_modes() {
        let k = key("p", &boot("BOOT=nfs\n"));
        assert_eq!(k, key("p", &boot("BOOT=nfs\n")));
        assert_ne!(k, key("q", &boot("BOOT=nfs\n")), "the parent");
        assert_ne!(k, key("p", &boot("BOOT=local\n")), "a file's bytes");
        let mut b = boot("BOOT=nfs\n");
        b.files[0].mode = 0o755;
        assert_ne!(k, key("p", &b), "a file's mode");
        let mut b = boot("BOOT=nfs\n");
        b.boot_dir = "boot".into();
        assert_ne!(k, key("p", &b), "the boot directory");
    }

    #[test]
    fn kernels_with_an_initramfs_in_boot_or_the_boot_directory() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for v in ["6.1.0-1-arm64", "6.1.0-2-arm64", "6.1.0-3-arm64"] {
            fs::create_dir_all(r.join("usr/lib/modules").join(v)).unwrap();
        }
        fs::create_dir_all(r.join("boot/firmware")).unwrap();
        fs::write(r.join("boot/firmware/initrd.img-6.1.0-1-arm64"), "").unwrap();
        fs::write(r.join("boot/initrd.img-6.1.0-3-arm64"), "").unwrap();
        assert_eq!(
            kernels(r, "boot/firmware").unwrap(),
            ["6.1.0-1-arm64", "6.1.0-3-arm64"]
        );
        assert!(!applies(r, "boot/firmware").unwrap(), "no mkinitramfs");
        fs::create_dir_all(r.join("usr/sbin")).unwrap();
        fs::write(r.join("usr/sbin/mkinitramfs"), "").unwrap();
        assert!(applies(r, "boot/firmware").unwrap());
        assert!(kernels(&r.join("none"), "boot").unwrap().is_empty());
    }
}
