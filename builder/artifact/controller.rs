//! `chbuild image <controller>`: the controller's overlay, only the files
//! chbuild owns, as a tree and a deterministic tarball, in the manifest.
//!
//! Owners are names (munge, slurm, the admin user) whose ids only the
//! controller knows. The tree on the build machine is owned by root; the
//! tarball carries the names (uname/gname, ids 0), which GNU tar run as
//! root maps to the controller's own ids when extracting
//! (`tar -xpf clusterhat.tar.zst -C /`).

use super::{create_dir_private, sha256_file, Manifest, MANIFEST};
use crate::fs::{Durability, Inode, NewFile};
use crate::overlay::write::{Owner, TreeWriter};
use crate::pipeline::Format;
use crate::profile::Profile;
use crate::roles::controller::{owned_files, Owned};
use crate::secrets::Secrets;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OwnedEntry {
    pub path: String,
    pub mode: String,
    pub owner: String,
    pub group: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ControllerArtifact {
    pub name: String,
    pub tree: String,
    pub tarball: String,
    pub sha256: String,
    pub size: u64,
    /// Every file and directory chbuild owns on the controller.
    pub owned: Vec<OwnedEntry>,
}

#[derive(Debug, Serialize)]
pub struct ControllerImageReport {
    pub output: PathBuf,
    pub tree: PathBuf,
    pub tarball: Option<PathBuf>,
    pub sha256: Option<String>,
}

/// SOURCE_DATE_EPOCH, else the profile file's time: the controller has no
/// base whose time could stand in.
fn epoch(profile: &Profile) -> Result<i64> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"));
    }
    use std::os::unix::fs::MetadataExt;
    Ok(fs::metadata(&profile.file)
        .with_context(|| format!("reading {}", profile.file.display()))?
        .mtime()
        .max(0))
}

pub fn image(profile: &Profile, out: &Path, format: Format) -> Result<ControllerImageReport> {
    let secrets = Secrets::load(profile)?;
    let plan = profile.controller_plan();
    let overlays = crate::overlay::Overlays::builtin()?;
    let files = owned_files(profile, &plan, &secrets, &overlays)?;
    let epoch = epoch(profile)?;
    create_dir_private(out)?;
    let name = plan.hostname.clone();

    // The tree: built beside its final place, then swapped in.
    let tree = out.join(&name);
    let tmp = out.join(format!(".{name}.tmp"));
    crate::fs::remove_tree(&tmp)?;
    fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = TreeWriter::new(&tmp)?;
    for f in &files {
        match &f.content {
            None => w.mkdir(&f.path, f.mode, Owner::ROOT)?,
            Some(d) => w.write(&f.path, d, f.mode, Owner::ROOT)?,
        }
    }
    crate::tree::clamp_mtimes(&tmp, epoch)?;
    crate::fs::remove_tree(&tree)?;
    fs::rename(&tmp, &tree).with_context(|| format!("renaming {} into place", tree.display()))?;
    tracing::info!("{name}: controller overlay, {} entries", files.len());

    // For the admin's machine: SSH to every node, the Zeros through the
    // controller, and the cluster's host keys.
    let ssh_config = crate::roles::controller::lan_ssh_config(profile, &plan, &secrets, &overlays)?;
    super::write_atomic(&out.join("ssh_config"), ssh_config.as_bytes())?;
    super::write_atomic(
        &out.join("known_hosts"),
        crate::roles::known_hosts(profile, &secrets)?.as_bytes(),
    )?;

    let mut report = ControllerImageReport {
        output: out.to_path_buf(),
        tree: tree.clone(),
        tarball: None,
        sha256: None,
    };
    if format == Format::Dir {
        return Ok(report);
    }
    let tarball = out.join(format!("{name}.tar.zst"));
    let (sha256, size) = write_tarball(&files, &tarball, epoch)?;
    let mut manifest = Manifest::load(out)?
        .filter(|m| m.cluster == profile.name)
        .unwrap_or(Manifest {
            cluster: profile.name.clone(),
            profile: profile.file.display().to_string(),
            base_digest: String::new(),
            source_date_epoch: epoch,
            nodes: vec![],
            controller: None,
        });
    manifest.controller = Some(ControllerArtifact {
        name: name.clone(),
        tree: name.clone(),
        tarball: format!("{name}.tar.zst"),
        sha256: sha256.clone(),
        size,
        owned: files
            .iter()
            .map(|f| OwnedEntry {
                path: format!("/{}", f.path),
                mode: format!("{:04o}", f.mode),
                owner: f.owner.clone(),
                group: f.group.clone(),
            })
            .collect(),
    });
    manifest.save(out)?;
    tracing::info!(
        "{name}: {} ({sha256}), listed in {}",
        tarball.display(),
        out.join(MANIFEST).display()
    );
    report.tarball = Some(tarball);
    report.sha256 = Some(sha256);
    Ok(report)
}

/// The owned entries as a tar.zst: every parent directory (0755 root),
/// sorted, `./`-prefixed, one mtime, owners as names.
fn write_tarball(files: &[Owned], out: &Path, epoch: i64) -> Result<(String, u64)> {
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for f in files {
        let mut p = Path::new(&f.path).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().into_owned());
            p = d.parent();
        }
    }
    let mut entries: Vec<(String, Option<&Owned>)> = dirs
        .into_iter()
        .filter(|d| !files.iter().any(|f| &f.path == d))
        .map(|d| (d, None))
        .collect();
    entries.extend(files.iter().map(|f| (f.path.clone(), Some(f))));
    entries.sort_by(|a, b| a.0.cmp(&b.0));

    // Owner-only: the tarball carries the munge key and the k3s token.
    let new = NewFile::create(out, Inode::new(0o600, Durability::Publish))?;
    let tmp = new.path().to_path_buf();
    let enc = zstd::Encoder::new(new.file(), 3)?;
    let mut b = tar::Builder::new(enc);
    for (path, owned) in &entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(epoch.max(0) as u64);
        h.set_uid(0);
        h.set_gid(0);
        let (owner, group) = owned
            .map(|f| (f.owner.as_str(), f.group.as_str()))
            .unwrap_or(("root", "root"));
        h.set_username(owner)?;
        h.set_groupname(group)?;
        let name = format!("./{path}");
        match owned.and_then(|f| f.content.as_ref().map(|c| (f, c))) {
            Some((f, data)) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(f.mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, &name, data.as_slice())
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(owned.map(|f| f.mode).unwrap_or(0o755));
                h.set_size(0);
                b.append_data(&mut h, &name, std::io::empty())
            }
        }
        .with_context(|| format!("adding {name} to {}", tmp.display()))?;
    }
    let mut f = b
        .into_inner()
        .with_context(|| format!("writing {}", tmp.display()))?
        .finish()
        .with_context(|| format!("finishing {}", tmp.display()))?;
    f.flush()
        .with_context(|| format!("writing {}", tmp.display()))?;
    new.commit()?;
    let size = fs::metadata(out)
        .with_context(|| format!("reading {}", out.display()))?
        .len();
    Ok((sha256_file(out)?, size))
}
