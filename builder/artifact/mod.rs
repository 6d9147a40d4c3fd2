//! Artifacts: node trees as deterministic tar.zst, `manifest.json` and
//! `SHA256SUMS`. Same tree and epoch give byte-identical tarballs.

pub mod commit;
pub mod controller;
pub mod public;

use crate::fs::{Durability, Inode, NewFile};
use crate::profile::Profile;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use walkdir::WalkDir;

/// `images/out/<cluster>`.
pub fn default_output_dir(profile: &Profile) -> PathBuf {
    PathBuf::from("images/out").join(&profile.name)
}

pub const MANIFEST: &str = "manifest.json";
pub const SUMS: &str = "SHA256SUMS";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeArtifact {
    pub name: String,
    pub hostname: String,
    pub kind: crate::profile::NodeKind,
    pub slot: Option<u8>,
    pub tree: String,
    pub tarball: Option<String>,
    /// sha256 of the tarball: the node's build id.
    pub sha256: Option<String>,
    pub size: Option<u64>,
    pub files: u64,
    /// Hash of everything the node was built from; unchanged inputs are
    /// not rebuilt.
    pub inputs: String,
    /// Further files of this node (SD image, its bmap, compressed copies).
    #[serde(default)]
    pub files_extra: Vec<ArtifactFile>,
    /// What the node needs the network for at first boot (`k3s`: its
    /// binary is downloaded there, there was no air-gap bundle).
    #[serde(default)]
    pub needs_network: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArtifactFile {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

impl ArtifactFile {
    /// Describe a file of the output directory, hashing it.
    pub fn of(dir: &Path, name: &str) -> Result<ArtifactFile> {
        let p = dir.join(name);
        let size = fs::metadata(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .len();
        Ok(ArtifactFile {
            name: name.to_string(),
            sha256: sha256_file(&p)?,
            size,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub cluster: String,
    pub profile: String,
    pub base_digest: String,
    pub source_date_epoch: i64,
    pub nodes: Vec<NodeArtifact>,
    /// The controller's overlay (`chbuild image <controller>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<controller::ControllerArtifact>,
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Option<Manifest>> {
        let p = dir.join(MANIFEST);
        match fs::read(&p) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b).with_context(|| format!("parsing {}", p.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Write the manifest and SHA256SUMS atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)?;
        write_atomic(&dir.join(MANIFEST), &json)?;
        let mut sums = String::new();
        for (name, sha) in self.files() {
            sums.push_str(&format!("{sha}  {name}\n"));
        }
        write_atomic(&dir.join(SUMS), sums.as_bytes())
    }

    /// Write the manifest and SHA256SUMS under staged names; the renames
    /// that put them in place are returned for [`commit::commit`].
    pub fn stage(&self, dir: &Path) -> Result<Vec<commit::Move>> {
        let json = serde_json::to_vec_pretty(self)?;
        let mut sums = String::new();
        for (name, sha) in self.files() {
            sums.push_str(&format!("{sha}  {name}\n"));
        }
        let mut moves = vec![];
        for (name, data) in [(MANIFEST, json), (SUMS, sums.into_bytes())] {
            let staged = commit::staged(name);
            let p = dir.join(&staged);
            fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
            moves.push(commit::Move::rename(staged, name));
        }
        Ok(moves)
    }

    /// Every file the manifest vouches for, with its sha256.
    pub fn files(&self) -> Vec<(String, String)> {
        let mut out = vec![];
        if let Some(c) = &self.controller {
            out.push((c.tarball.clone(), c.sha256.clone()));
        }
        for n in &self.nodes {
            if let (Some(t), Some(h)) = (&n.tarball, &n.sha256) {
                out.push((t.clone(), h.clone()));
            }
            for f in &n.files_extra {
                out.push((f.name.clone(), f.sha256.clone()));
            }
        }
        out
    }
}

/// Re-check a release directory against its manifest and SHA256SUMS:
/// every file listed exists with its checksum, and the two lists agree.
pub fn verify(dir: &Path) -> Result<Vec<String>> {
    commit::finish_pending(dir)?;
    let manifest =
        Manifest::load(dir)?.with_context(|| format!("{} has no {MANIFEST}", dir.display()))?;
    let sums_path = dir.join(SUMS);
    let sums_text = fs::read_to_string(&sums_path)
        .with_context(|| format!("reading {}", sums_path.display()))?;
    let mut sums: HashMap<String, String> = HashMap::new();
    for (i, line) in sums_text.lines().enumerate() {
        let (h, name) = line
            .split_once("  ")
            .with_context(|| format!("{}:{}: not a sha256sum line", sums_path.display(), i + 1))?;
        sums.insert(name.to_string(), h.to_string());
    }
    let mut problems = vec![];
    let files = manifest.files();
    for (name, sha) in &files {
        match sums.get(name) {
            Some(h) if h == sha => {}
            Some(_) => problems.push(format!("{name}: {SUMS} and {MANIFEST} disagree")),
            None => problems.push(format!("{name}: missing from {SUMS}")),
        }
        let p = dir.join(name);
        if !p.exists() {
            problems.push(format!("{name}: missing"));
            continue;
        }
        let actual = sha256_file(&p)?;
        if &actual != sha {
            problems.push(format!("{name}: sha256 {actual}, expected {sha}"));
        }
    }
    for name in sums.keys() {
        if !files.iter().any(|(n, _)| n == name) {
            problems.push(format!("{name}: in {SUMS} but not in {MANIFEST}"));
        }
    }
    problems.sort();
    if !problems.is_empty() {
        anyhow::bail!(
            "{} does not verify:\n  {}",
            dir.display(),
            problems.join("\n  ")
        );
    }
    Ok(files.into_iter().map(|(n, _)| n).collect())
}

/// The output directory: 0700, the trees carry secrets.
pub fn create_dir_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod {}", dir.display()))
}

/// Write a published file (manifest, sums, stamps) as a new inode.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    crate::fs::write_new(path, data, Inode::new(0o644, Durability::Publish))
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    crate::fs::read_chunks(path, |b| h.update(b))?;
    Ok(hex::encode(h.finalize()))
}

/// A writer that hashes what passes through, so the tarball's checksum
/// needs no second read.
struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub struct TarballInfo {
    pub sha256: String,
    pub size: u64,
    pub files: u64,
}

/// Write `tree` as a deterministic zstd-compressed tar at `out`: entries
/// sorted (the tar crate normalizes `./name` to `name`), numeric owners, mtimes clamped to `epoch`,
/// xattrs as pax records, hardlinks inside the tree as link entries.
/// `workers` compression threads (at least one): the bytes are the same
/// for any count; callers that write several tarballs at once share the
/// machine's cores between them rather than start cores x cores threads.
pub fn write_tar_zst(tree: &Path, out: &Path, epoch: i64, workers: u32) -> Result<TarballInfo> {
    // The tarball carries the node's secrets (munge key, host key, password
    // hash): it is never readable by others.
    let new = NewFile::create(out, Inode::new(0o600, Durability::Publish))?;
    let tmp = new.path().to_path_buf();
    let (sha256, size, files) = write_entries(tree, new.file(), &tmp, epoch, workers)?;
    new.commit()?;
    Ok(TarballInfo {
        sha256,
        size,
        files,
    })
}

/// The tar.zst stream of `tree` into `file`: (sha256, size, regular files).
fn write_entries(
    tree: &Path,
    file: &fs::File,
    tmp: &Path,
    epoch: i64,
    workers: u32,
) -> Result<(String, u64, u64)> {
    let hashing = HashingWriter {
        inner: BufWriter::new(file),
        hash: Sha256::new(),
        len: 0,
    };
    let mut enc = zstd::Encoder::new(hashing, 3)?;
    // Any worker count >= 1 gives the same bytes; 0 (single-threaded
    // mode) would differ, so never use it.
    enc.multithread(workers.max(1))?;
    // 1 MiB jobs instead of zstd's default (four windows, 8 MiB at this
    // level): each worker buffers a few jobs. Measured on a Zero's tree
    // (282 MiB compressed): two tarballs at once took 147 MiB of peak RSS
    // with the default, 28 MiB with 1 MiB jobs, for 2% more bytes and the
    // same time. The job size shapes the bytes (any worker count does not).
    enc.set_parameter(zstd::stream::raw::CParameter::JobSize(1 << 20))?;
    enc.include_checksum(true)?;
    let mut builder = tar::Builder::new(enc);
    builder.follow_symlinks(false);
    let mut seen: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut files = 0u64;
    for entry in WalkDir::new(tree).follow_links(false).sort_by_file_name() {
        let entry = entry.with_context(|| format!("walking {}", tree.display()))?;
        let path = entry.path();
        let rel = path.strip_prefix(tree).expect("under tree");
        let name = if rel.as_os_str().is_empty() {
            PathBuf::from("./")
        } else {
            Path::new(".").join(rel)
        };
        let meta = path
            .symlink_metadata()
            .with_context(|| format!("reading {}", path.display()))?;
        let ft = meta.file_type();
        let mut h = tar::Header::new_gnu();
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(meta.uid() as u64);
        h.set_gid(meta.gid() as u64);
        h.set_mtime(meta.mtime().clamp(0, epoch) as u64);
        h.set_size(0);

        let xattrs = read_xattrs(path)?;
        if !xattrs.is_empty() {
            let recs: Vec<(String, Vec<u8>)> = xattrs
                .into_iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v))
                .collect();
            builder
                .append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .with_context(|| format!("writing xattrs of {}", path.display()))?;
        }

        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            builder.append_data(&mut h, &name, std::io::empty())
        } else if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            let to =
                fs::read_link(path).with_context(|| format!("reading link {}", path.display()))?;
            builder.append_link(&mut h, &name, &to)
        } else if let Some(first) = (meta.nlink() > 1)
            .then(|| seen.get(&(meta.dev(), meta.ino())).cloned())
            .flatten()
        {
            h.set_entry_type(tar::EntryType::Link);
            builder.append_link(&mut h, &name, &first)
        } else if ft.is_file() {
            files += 1;
            if meta.nlink() > 1 {
                seen.insert((meta.dev(), meta.ino()), name.clone());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(meta.len());
            let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            builder.append_data(&mut h, &name, f)
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            h.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            });
            let rdev = meta.rdev();
            h.set_device_major(nix::sys::stat::major(rdev) as u32)?;
            h.set_device_minor(nix::sys::stat::minor(rdev) as u32)?;
            builder.append_data(&mut h, &name, std::io::empty())
        } else {
            // Sockets do not belong in an image; they are made at run time.
            continue;
        }
        .with_context(|| format!("adding {} to {}", path.display(), tmp.display()))?;
    }
    let enc = builder
        .into_inner()
        .with_context(|| format!("finishing {}", tmp.display()))?;
    let mut hashing = enc
        .finish()
        .with_context(|| format!("finishing {}", tmp.display()))?;
    hashing.flush()?;
    let HashingWriter { inner, hash, len } = hashing;
    inner
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", tmp.display()))?;
    Ok((hex::encode(hash.finalize()), len, files))
}

fn read_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    Ok(crate::fs::read_xattrs(path)?
        .into_iter()
        .map(|(k, v)| (k.to_string_lossy().into_owned(), v))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tarball_is_deterministic_and_clamped() {
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree");
        fs::create_dir_all(tree.join("etc")).unwrap();
        fs::write(tree.join("etc/hostname"), "z1\n").unwrap();
        fs::hard_link(tree.join("etc/hostname"), tree.join("etc/hostname2")).unwrap();
        std::os::unix::fs::symlink("hostname", tree.join("etc/link")).unwrap();
        let a = t.path().join("a.tar.zst");
        let b = t.path().join("b.tar.zst");
        // One worker or several: the same bytes.
        let ia = write_tar_zst(&tree, &a, 1_700_000_000, 1).unwrap();
        let ib = write_tar_zst(&tree, &b, 1_700_000_000, 3).unwrap();
        assert_eq!(ia.sha256, ib.sha256);
        assert_eq!(ia.sha256, sha256_file(&a).unwrap());
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        let dec = zstd::Decoder::new(fs::File::open(&a).unwrap()).unwrap();
        let mut ar = tar::Archive::new(dec);
        let mut names = vec![];
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            assert!(e.header().mtime().unwrap() <= 1_700_000_000);
            names.push((
                e.path().unwrap().display().to_string(),
                e.header().entry_type(),
            ));
        }
        assert_eq!(names[0].0, "./");
        assert!(
            names.contains(&("etc/hostname2".into(), tar::EntryType::Link)),
            "{names:?}"
        );
        assert!(names.contains(&("etc/link".into(), tar::EntryType::Symlink)));
    }

    #[test]
    fn verify_catches_a_changed_file_and_a_stray_checksum() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::write(d.join("z1.tar.zst"), "tarball").unwrap();
        fs::write(d.join("p5.img.zst"), "image").unwrap();
        let m = Manifest {
            cluster: "c".into(),
            profile: "p.toml".into(),
            base_digest: "b".into(),
            source_date_epoch: 1,
            controller: None,
            nodes: vec![NodeArtifact {
                name: "z1".into(),
                hostname: "z1".into(),
                kind: crate::profile::NodeKind::Usbboot,
                slot: Some(1),
                tree: "z1".into(),
                tarball: Some("z1.tar.zst".into()),
                sha256: Some(sha256_file(&d.join("z1.tar.zst")).unwrap()),
                size: Some(7),
                files: 1,
                inputs: "i".into(),
                files_extra: vec![ArtifactFile::of(d, "p5.img.zst").unwrap()],
                needs_network: vec![],
            }],
        };
        m.save(d).unwrap();
        assert_eq!(verify(d).unwrap(), ["z1.tar.zst", "p5.img.zst"]);
        fs::write(d.join("p5.img.zst"), "imagf").unwrap();
        let e = verify(d).unwrap_err().to_string();
        assert!(e.contains("p5.img.zst: sha256 "), "{e}");
        fs::write(d.join("p5.img.zst"), "image").unwrap();
        let mut sums = fs::read_to_string(d.join(SUMS)).unwrap();
        sums.push_str(&format!("{}  extra.bin\n", "0".repeat(64)));
        fs::write(d.join(SUMS), sums).unwrap();
        let e = verify(d).unwrap_err().to_string();
        assert!(
            e.contains("extra.bin: in SHA256SUMS but not in manifest.json"),
            "{e}"
        );
    }
}
