//! Staging: build the new tree as a hidden sibling of its target, keeping
//! owners, modes (setuid too), xattrs, times, symlinks, hard links and
//! device nodes. Files that a running Zero or `usbboot-init` may rewrite in
//! place are always copied; the rest is hard-linked when the source is on
//! the same file system (so a deploy costs inodes, not gigabytes).

use super::listing::normalize;
use anyhow::{bail, Context, Result};
use filetime::FileTime;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Top-level directories whose files are shared by hard link: package
/// files, which dpkg replaces by rename and never rewrites in place.
/// Everything else (etc, var, home, boot...) is copied, because usbboot-init
/// and the running node write there in place, which would reach through a
/// hard link into the source tree.
const SHARED_TOP: &[&str] = &["usr", "opt", "bin", "sbin", "lib", "lib32", "lib64"];

fn shareable(rel: &Path) -> bool {
    rel.components()
        .next()
        .is_some_and(|c| SHARED_TOP.iter().any(|t| c.as_os_str() == *t))
}

#[derive(Debug, Default, Clone, Copy)]
pub struct StageStats {
    pub entries: u64,
    pub linked: u64,
    pub copied_bytes: u64,
}

/// Owner, mode, xattrs and times of `dst` as given. The order matters:
/// chown clears setuid bits and file capabilities, so they come after it.
struct Attrs {
    uid: u32,
    gid: u32,
    mode: u32,
    atime: FileTime,
    mtime: FileTime,
    xattrs: Vec<(std::ffi::OsString, Vec<u8>)>,
}

impl Attrs {
    fn of(path: &Path, m: &fs::Metadata) -> Result<Attrs> {
        let mut xattrs = Vec::new();
        if !m.file_type().is_symlink() {
            for name in xattr::list(path)
                .with_context(|| format!("listing xattrs of {}", path.display()))?
            {
                if let Some(v) = xattr::get(path, &name)
                    .with_context(|| format!("reading xattrs of {}", path.display()))?
                {
                    xattrs.push((name, v));
                }
            }
        }
        Ok(Attrs {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
            atime: FileTime::from_last_access_time(m),
            mtime: FileTime::from_last_modification_time(m),
            xattrs,
        })
    }

    fn apply(&self, dst: &Path, symlink: bool) -> Result<()> {
        std::os::unix::fs::lchown(dst, Some(self.uid), Some(self.gid))
            .with_context(|| format!("setting the owner of {}", dst.display()))?;
        if !symlink {
            fs::set_permissions(dst, fs::Permissions::from_mode(self.mode))
                .with_context(|| format!("setting the mode of {}", dst.display()))?;
            for (name, value) in &self.xattrs {
                xattr::set(dst, name, value).with_context(|| {
                    format!(
                        "setting xattr {} on {}",
                        name.to_string_lossy(),
                        dst.display()
                    )
                })?;
            }
        }
        filetime::set_symlink_file_times(dst, self.atime, self.mtime)
            .with_context(|| format!("setting the times of {}", dst.display()))
    }
}

fn make_node(dst: &Path, kind: SFlag, mode: u32, rdev: u64) -> Result<()> {
    mknod(dst, kind, Mode::from_bits_truncate(mode & 0o7777), rdev)
        .with_context(|| format!("creating device node or FIFO {}", dst.display()))
}

/// Populate `dst` (which must not exist) from the tree `src`: hard links
/// for shareable files when `link` is set, copies otherwise.
pub fn from_tree(src: &Path, dst: &Path, link: bool) -> Result<StageStats> {
    let mut stats = StageStats::default();
    let mut seen: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut dirs: Vec<(PathBuf, Attrs)> = Vec::new();
    for e in walkdir::WalkDir::new(src)
        .follow_links(false)
        .sort_by_file_name()
        .same_file_system(true)
    {
        let e = e.with_context(|| format!("walking {}", src.display()))?;
        let rel = e.path().strip_prefix(src).expect("under the walk root");
        let to = dst.join(rel);
        let m = e
            .path()
            .symlink_metadata()
            .with_context(|| format!("reading {}", e.path().display()))?;
        let ft = m.file_type();
        stats.entries += 1;
        if ft.is_dir() {
            fs::create_dir(&to).with_context(|| format!("creating {}", to.display()))?;
            dirs.push((to, Attrs::of(e.path(), &m)?));
            continue;
        }
        if m.nlink() > 1 && !ft.is_dir() {
            if let Some(first) = seen.get(&(m.dev(), m.ino())) {
                fs::hard_link(first, &to)
                    .with_context(|| format!("linking {} to {}", to.display(), first.display()))?;
                continue;
            }
            seen.insert((m.dev(), m.ino()), to.clone());
        }
        if ft.is_file() && link && shareable(rel) {
            fs::hard_link(e.path(), &to)
                .with_context(|| format!("linking {} to {}", to.display(), e.path().display()))?;
            stats.linked += 1;
            continue;
        }
        let attrs = Attrs::of(e.path(), &m)?;
        if ft.is_symlink() {
            let target = fs::read_link(e.path())
                .with_context(|| format!("reading link {}", e.path().display()))?;
            std::os::unix::fs::symlink(&target, &to)
                .with_context(|| format!("creating symlink {}", to.display()))?;
        } else if ft.is_file() {
            reflink_copy::reflink_or_copy(e.path(), &to)
                .with_context(|| format!("copying {} to {}", e.path().display(), to.display()))?;
            stats.copied_bytes += m.len();
        } else if ft.is_char_device() {
            make_node(&to, SFlag::S_IFCHR, attrs.mode, m.rdev())?;
        } else if ft.is_block_device() {
            make_node(&to, SFlag::S_IFBLK, attrs.mode, m.rdev())?;
        } else if ft.is_fifo() {
            make_node(&to, SFlag::S_IFIFO, attrs.mode, 0)?;
        } else {
            // Sockets are made by running programs; a tree has no use for them.
            tracing::debug!("skipping socket {}", e.path().display());
            continue;
        }
        attrs.apply(&to, ft.is_symlink())?;
    }
    finish_dirs(dirs)?;
    Ok(stats)
}

/// Directory attributes last and deepest first: adding entries changes a
/// directory's mtime, and a read-only mode would stop the adding.
fn finish_dirs(dirs: Vec<(PathBuf, Attrs)>) -> Result<()> {
    for (d, a) in dirs.into_iter().rev() {
        a.apply(&d, false)?;
    }
    Ok(())
}

/// Populate `dst` (which must not exist) from a `.tar.zst`. The tar crate
/// unpacks files, links and xattrs; device nodes and FIFOs (which it turns
/// into empty files) and directory times and xattrs are done here.
pub fn from_tarball(tarball: &Path, dst: &Path) -> Result<StageStats> {
    let ctx = || format!("unpacking {}", tarball.display());
    let f = File::open(tarball).with_context(|| format!("opening {}", tarball.display()))?;
    let len = f.metadata().map(|m| m.len()).ok();
    let mut progress = crate::progress::Progress::bytes("unpacking", len);
    let counted = CountingReader {
        inner: f,
        progress: &mut progress,
    };
    let mut dec = zstd::stream::read::Decoder::new(counted).with_context(ctx)?;
    dec.window_log_max(31).with_context(ctx)?;
    let mut ar = tar::Archive::new(dec);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(true);
    ar.set_overwrite(false);
    fs::create_dir(dst).with_context(|| format!("creating {}", dst.display()))?;
    let dst_real = dst
        .canonicalize()
        .with_context(|| format!("resolving {}", dst.display()))?;
    let mut stats = StageStats::default();
    let mut dirs: Vec<(PathBuf, Attrs)> = Vec::new();
    for entry in ar.entries().with_context(ctx)? {
        let mut e = entry.with_context(ctx)?;
        let path = e.path().with_context(ctx)?.into_owned();
        let rel = normalize(&path)?;
        let to = rel
            .as_ref()
            .map_or_else(|| dst.to_path_buf(), |r| dst.join(r));
        let h = e.header().clone();
        let t = h.entry_type();
        stats.entries += 1;
        if rel.is_some() && !t.is_file() && !t.is_hard_link() && !t.is_symlink() {
            // The tar crate guards what it unpacks; what is created here
            // must not follow a symlink from an earlier entry out of the tree.
            ensure_inside(&dst_real, &to)?;
        }
        let attrs = || -> Result<Attrs> {
            Ok(Attrs {
                uid: h.uid().with_context(ctx)? as u32,
                gid: h.gid().with_context(ctx)? as u32,
                mode: h.mode().with_context(ctx)? & 0o7777,
                atime: FileTime::from_unix_time(h.mtime().with_context(ctx)? as i64, 0),
                mtime: FileTime::from_unix_time(h.mtime().with_context(ctx)? as i64, 0),
                xattrs: Vec::new(),
            })
        };
        if t.is_dir() {
            let mut a = attrs()?;
            if let Some(exts) = e.pax_extensions().with_context(ctx)? {
                for x in exts {
                    let x = x.with_context(ctx)?;
                    if let Some(name) = x.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                        a.xattrs.push((name.into(), x.value_bytes().to_vec()));
                    }
                }
            }
            if rel.is_some() {
                fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
            }
            dirs.push((to, a));
        } else if t.is_character_special() || t.is_block_special() || t.is_fifo() {
            let Some(r) = &rel else {
                bail!("{}: the tree root is not a directory", tarball.display());
            };
            if let Some(parent) = dst.join(r).parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let a = attrs()?;
            let (kind, rdev) = if t.is_fifo() {
                (SFlag::S_IFIFO, 0)
            } else {
                let dev = makedev(
                    h.device_major().with_context(ctx)?.unwrap_or(0).into(),
                    h.device_minor().with_context(ctx)?.unwrap_or(0).into(),
                );
                let k = if t.is_character_special() {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                (k, dev)
            };
            make_node(&to, kind, a.mode, rdev)?;
            a.apply(&to, false)?;
        } else {
            if rel.is_none() {
                bail!("{}: the tree root is not a directory", tarball.display());
            }
            if t.is_file() {
                stats.copied_bytes += e.size();
            }
            if !e.unpack_in(dst).with_context(|| {
                format!("unpacking {} from {}", path.display(), tarball.display())
            })? {
                bail!(
                    "{}: entry {} leaves the tree",
                    tarball.display(),
                    path.display()
                );
            }
        }
    }
    finish_dirs(dirs)?;
    progress.finish();
    Ok(stats)
}

/// Fail when the nearest existing ancestor of `path` resolves outside
/// `root` (that is, through a symlink planted by the archive).
fn ensure_inside(root: &Path, path: &Path) -> Result<()> {
    let mut p = path.parent().unwrap_or(path).to_path_buf();
    while p.symlink_metadata().is_err() {
        if !p.pop() {
            break;
        }
    }
    let real = p
        .canonicalize()
        .with_context(|| format!("resolving {}", p.display()))?;
    if !real.starts_with(root) {
        bail!(
            "archive entry {} would be created through a symlink outside the tree",
            path.display()
        );
    }
    Ok(())
}

struct CountingReader<'a, R> {
    inner: R,
    progress: &'a mut crate::progress::Progress,
}

impl<R: std::io::Read> std::io::Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// Bytes and inodes the staged tree will take: every file that is copied
/// (counted once per inode), and one inode per entry.
pub fn needed_space(src: &Path, link: bool) -> Result<(u64, u64)> {
    let mut seen = std::collections::HashSet::new();
    let (mut bytes, mut entries) = (0, 0);
    for e in walkdir::WalkDir::new(src).follow_links(false) {
        let e = e.with_context(|| format!("walking {}", src.display()))?;
        let m = e
            .path()
            .symlink_metadata()
            .with_context(|| format!("reading {}", e.path().display()))?;
        let rel = e.path().strip_prefix(src).expect("under the walk root");
        entries += 1;
        if m.is_file() && !(link && shareable(rel)) && seen.insert((m.dev(), m.ino())) {
            bytes += m.len();
        }
    }
    Ok((bytes, entries))
}

/// Replace a small file atomically (temporary sibling, fsync, rename),
/// keeping the owner and mode of the file it replaces (0644 root if new).
/// A rename also breaks any hard link, so the source tree is never edited.
pub fn write_file_atomic(path: &Path, content: &[u8]) -> Result<()> {
    let dir = path.parent().expect("a file inside a tree");
    let name = path.file_name().expect("a file name").to_string_lossy();
    let tmp = dir.join(format!(".{name}.chbuild-tmp"));
    let (mode, uid, gid) = match path.symlink_metadata() {
        Ok(m) => (m.mode() & 0o7777, Some(m.uid()), Some(m.gid())),
        Err(_) => (0o644, None, None),
    };
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(content)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    std::os::unix::fs::lchown(&tmp, uid, gid)
        .with_context(|| format!("setting the owner of {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_with_everything(root: &Path) {
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("dev")).unwrap();
        fs::write(root.join("usr/bin/tool"), b"tool").unwrap();
        fs::set_permissions(
            root.join("usr/bin/tool"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool2")).unwrap();
        fs::write(root.join("etc/hostname"), b"z1\n").unwrap();
        std::os::unix::fs::symlink("../usr/bin/tool", root.join("etc/link")).unwrap();
        nix::unistd::mkfifo(&root.join("dev/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        xattr::set(root.join("etc/hostname"), "user.chbuild", b"yes").unwrap();
        filetime::set_file_mtime(root.join("etc"), FileTime::from_unix_time(1000, 0)).unwrap();
        if nix::unistd::geteuid().is_root() {
            make_node(&root.join("dev/null"), SFlag::S_IFCHR, 0o666, makedev(1, 3)).unwrap();
            std::os::unix::fs::lchown(root.join("etc/hostname"), Some(12), Some(34)).unwrap();
        }
    }

    #[test]
    fn copy_and_link_keep_everything() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        tree_with_everything(&src);
        for link in [false, true] {
            let dst = t.path().join(format!("dst-{link}"));
            let stats = from_tree(&src, &dst, link).unwrap();
            let a = super::super::listing::of_dir(&src, true).unwrap();
            let b = super::super::listing::of_dir(&dst, true).unwrap();
            assert_eq!(a, b, "link={link}");
            assert_eq!(stats.linked, if link { 1 } else { 0 });
            let m = |p: &str| dst.join(p).symlink_metadata().unwrap();
            assert_eq!(m("usr/bin/tool").ino(), m("usr/bin/tool2").ino());
            assert_eq!(m("etc").mtime(), 1000);
            assert_eq!(
                xattr::get(dst.join("etc/hostname"), "user.chbuild").unwrap(),
                Some(b"yes".to_vec())
            );
            // etc/ is copied even when linking: editing it leaves the source alone.
            assert_ne!(
                m("etc/hostname").ino(),
                src.join("etc/hostname").symlink_metadata().unwrap().ino()
            );
        }
    }

    #[test]
    fn tarball_cannot_create_nodes_through_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let me = nix::unistd::geteuid().as_raw() as u64;
        let header = || {
            let mut h = tar::Header::new_gnu();
            h.set_uid(me);
            h.set_gid(nix::unistd::getegid().as_raw() as u64);
            h.set_mtime(1);
            h
        };
        let mut h = header();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "./dev", &outside).unwrap();
        let mut h = header();
        h.set_entry_type(tar::EntryType::Fifo);
        h.set_size(0);
        h.set_mode(0o600);
        b.append_data(&mut h, "./dev/fifo", std::io::empty())
            .unwrap();
        let tarball = t.path().join("evil.tar.zst");
        fs::write(
            &tarball,
            zstd::encode_all(&b.into_inner().unwrap()[..], 1).unwrap(),
        )
        .unwrap();
        let err = from_tarball(&tarball, &t.path().join("dst")).unwrap_err();
        assert!(format!("{err:#}").contains("outside the tree"), "{err:#}");
        assert!(!outside.join("fifo").exists());
    }

    #[test]
    fn atomic_write_keeps_mode_and_breaks_links() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        fs::write(&a, b"old").unwrap();
        fs::set_permissions(&a, fs::Permissions::from_mode(0o600)).unwrap();
        fs::hard_link(&a, t.path().join("b")).unwrap();
        write_file_atomic(&a, b"new").unwrap();
        assert_eq!(fs::read(&a).unwrap(), b"new");
        assert_eq!(fs::read(t.path().join("b")).unwrap(), b"old");
        assert_eq!(a.metadata().unwrap().mode() & 0o7777, 0o600);
    }
}
