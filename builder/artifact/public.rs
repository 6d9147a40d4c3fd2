//! Public releases: node trees without their secrets, and the per-cluster
//! secrets bundle that puts them back at deploy time.
//!
//! The bundle is a zstd tar of `<node>/<path>` entries with their owners
//! and modes; it is written 0600 and never beside the public artifacts.

use crate::fs::{Durability, Inode, NewFile};
use crate::profile::plan::NodePlan;
use anyhow::{Context, Result};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One secret file taken out of a node tree.
#[derive(Debug, Clone)]
pub struct SecretFile {
    pub node: String,
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Tree-relative paths that hold a node's secrets.
fn secret_paths(plan: &NodePlan) -> Vec<String> {
    vec![
        "etc/munge/munge.key".into(),
        "etc/ssh/ssh_host_ed25519_key".into(),
        "etc/rancher/k3s/config.yaml".into(),
        "etc/shadow".into(),
        format!("{}/userconf.txt", plan.boot_dir),
    ]
}

/// Take the secrets out of a finished tree: secret files are removed, and
/// `/etc/shadow` stays with the user's password locked (`!`), so the public
/// tree is complete but opens to no one until its secrets are applied.
pub fn strip_secrets(tree: &Path, plan: &NodePlan) -> Result<Vec<SecretFile>> {
    let mut out = vec![];
    for rel in secret_paths(plan) {
        let p = tree.join(&rel);
        let meta = match fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => m,
            _ => continue,
        };
        let data = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        if rel == "etc/shadow" {
            let locked = lock_user(&String::from_utf8_lossy(&data), &plan.user.name);
            replace_file(&p, locked.as_bytes(), &meta)?;
        } else {
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
        out.push(SecretFile {
            node: plan.name.clone(),
            path: rel,
            data,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        });
    }
    Ok(out)
}

/// The shadow file with `user`'s password field replaced by `!`.
fn lock_user(shadow: &str, user: &str) -> String {
    shadow
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(':').collect();
            if f.first() == Some(&user) && f.len() > 1 {
                f[1] = "!";
            }
            f.join(":") + "\n"
        })
        .collect()
}

/// Write a new inode with the old one's owner, mode and mtime, then
/// rename it over the old name (the old inode may be shared). The tree is
/// still being built.
fn replace_file(path: &Path, data: &[u8], meta: &fs::Metadata) -> Result<()> {
    let mtime = filetime::FileTime::from_last_modification_time(meta);
    let inode = Inode::like(Some(meta), 0o600, Durability::InStagedTree).mtime(Some(mtime));
    crate::fs::write_new(path, data, inode)
}

/// Write the bundle (sorted, deterministic for a given epoch), mode 0600.
pub fn write_bundle(path: &Path, files: &[SecretFile], epoch: i64) -> Result<()> {
    let mut files = files.to_vec();
    files.sort_by(|a, b| (&a.node, &a.path).cmp(&(&b.node, &b.path)));
    let new = NewFile::create(path, Inode::new(0o600, Durability::Publish))?;
    let mut enc = zstd::Encoder::new(new.file(), 3)?;
    enc.multithread(1)?;
    let mut b = tar::Builder::new(enc);
    for s in &files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(s.mode);
        h.set_uid(s.uid as u64);
        h.set_gid(s.gid as u64);
        h.set_mtime(epoch.max(0) as u64);
        h.set_size(s.data.len() as u64);
        b.append_data(&mut h, format!("{}/{}", s.node, s.path), s.data.as_slice())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    b.into_inner()
        .and_then(|e| e.finish())
        .with_context(|| format!("finishing {}", path.display()))?;
    new.commit()
}

/// The secret files of one node in a bundle. An entry for that node that
/// is not one of the known secret files is refused: a bundle must not be
/// a way to write anything else into a tree.
pub fn read_bundle(path: &Path, plan: &NodePlan) -> Result<Vec<SecretFile>> {
    read_bundle_entries(path, plan).with_context(|| format!("reading {}", path.display()))
}

fn read_bundle_entries(path: &Path, plan: &NodePlan) -> Result<Vec<SecretFile>> {
    let node = plan.name.as_str();
    let allowed = secret_paths(plan);
    let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut ar = tar::Archive::new(zstd::Decoder::new(f)?);
    let mut out = vec![];
    for e in ar
        .entries()
        .with_context(|| format!("reading {}", path.display()))?
    {
        let mut e = e.with_context(|| format!("reading {}", path.display()))?;
        let name = e.path()?.to_string_lossy().into_owned();
        let Some(rel) = name.strip_prefix(&format!("{node}/")) else {
            continue;
        };
        if !allowed.iter().any(|a| a == rel) {
            anyhow::bail!(
                "{}: entry {name} is not one of {node}'s secret files ({})",
                path.display(),
                allowed.join(", ")
            );
        }
        let mut data = vec![];
        e.read_to_end(&mut data)?;
        let h = e.header();
        out.push(SecretFile {
            node: node.to_string(),
            path: rel.to_string(),
            data,
            mode: h.mode()?,
            uid: h.uid()? as u32,
            gid: h.gid()? as u32,
        });
    }
    Ok(out)
}

/// Put a node's secrets back into its (staged) tree, each as a new inode.
pub fn apply_secrets(tree: &Path, files: &[SecretFile]) -> Result<Vec<PathBuf>> {
    let mut written = vec![];
    for s in files {
        let p = tree.join(&s.path);
        let parent = p.parent().expect("secret paths have a parent");
        if !parent.is_dir() {
            anyhow::bail!("{}: the tree has no {}", tree.display(), parent.display());
        }
        // Into a staged tree, which deploy flushes before its swap.
        let inode = Inode::new(s.mode & 0o7777, Durability::InStagedTree).owner(s.uid, s.gid);
        crate::fs::write_new(&p, &s.data, inode)?;
        written.push(PathBuf::from(&s.path));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(node: &str) -> NodePlan {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/clusterhat.toml");
        let text = include_str!("../../profiles/clusterhat.toml");
        let profile = crate::profile::parse_profile(text, &file).unwrap();
        profile.plan(profile.node(node).unwrap())
    }

    fn secret(node: &str, path: &str) -> SecretFile {
        SecretFile {
            node: node.into(),
            path: path.into(),
            data: b"x\n".to_vec(),
            mode: 0o600,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn a_bundle_may_only_hold_the_known_secret_files() {
        let t = tempfile::tempdir().unwrap();
        let good = t.path().join("good.tar.zst");
        let files = [
            secret("p5", "etc/rancher/k3s/config.yaml"),
            secret("p5", "boot/firmware/userconf.txt"),
            secret("z1", "etc/munge/munge.key"),
        ];
        write_bundle(&good, &files, 0).unwrap();
        let read = read_bundle(&good, &plan("p5")).unwrap();
        assert_eq!(read.len(), 2);

        let bad = t.path().join("bad.tar.zst");
        let files = [
            secret("p5", "etc/munge/munge.key"),
            secret("p5", "etc/cron.d/chbuild"),
        ];
        write_bundle(&bad, &files, 0).unwrap();
        let e = format!("{:#}", read_bundle(&bad, &plan("p5")).unwrap_err());
        assert!(e.contains("p5/etc/cron.d/chbuild"), "{e}");
        assert!(e.contains("bad.tar.zst"), "{e}");
    }

    #[test]
    fn lock_user_locks_only_that_user() {
        let s = lock_user("root:*:1::::::\npi:$6$x$y:19000:0:99999:7:::\n", "pi");
        assert_eq!(s, "root:*:1::::::\npi:!:19000:0:99999:7:::\n");
    }
}
