//! Shared by the fault tests (full disk, kills, concurrency, secrets): a
//! small base archive cut from the minbase fixture, a profile on it, runs
//! of the real binary whose every output is checked for the test secrets,
//! and snapshots of store and output directories.

#![allow(dead_code)] // each test binary uses its own part of this module

#[path = "../cli_support/mod.rs"]
mod cli_support;

pub use cli_support::skip;

use sha2::Digest;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use cli_support::MINBASE;

/// True when the test can run here (root, fixture); otherwise skips.
pub fn ready() -> bool {
    if !nix::unistd::geteuid().is_root() {
        skip("needs root (owners in the base, mounts)");
        return false;
    }
    if !Path::new(MINBASE).exists() {
        skip(&format!("fixture {MINBASE} is missing"));
        return false;
    }
    true
}

/// Where runs work: tmpfs when there is one, because the store and the
/// output directory end their updates with syncfs, which on a disk shared
/// with compilers takes seconds and would dominate every round.
fn work_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        let d = shm.join("chbuild-tests");
        if std::fs::create_dir_all(&d).is_ok() {
            return d;
        }
    }
    tmp_root()
}

fn tmp_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// A small base: the minbase's `etc`, `var/lib/dpkg`, `boot` and the
/// top-level links, plus `filler` files so that ingest and compose take
/// long enough to be killed in the middle. Built once per machine
/// (cached under the target directory, renamed into place when whole).
pub fn small_base(filler: usize) -> PathBuf {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let out = tmp_root().join(format!("hostile-base-{filler}.tar.zst"));
    if out.exists() {
        return out;
    }
    let work = tmp_root().join(format!("hostile-base-{filler}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let tree = work.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let st = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "-xpJf", MINBASE, "-C"])
        .arg(&tree)
        .args([
            "--wildcards",
            "./etc",
            "./var/lib/dpkg/status",
            "./boot",
            "./bin",
            "./sbin",
            "./lib",
            "./usr/share/zoneinfo/Etc",
            "./usr/sbin/nologin",
            "./usr/bin/bash",
        ])
        .status()
        .unwrap();
    // Some members may be missing from a given fixture; what was found is
    // enough (tar exits 2 for "not found in archive").
    assert!(st.code().is_some_and(|c| c <= 2), "extracting {MINBASE}");
    assert!(
        tree.join("etc/passwd").exists(),
        "the fixture has no etc/passwd"
    );
    std::fs::create_dir_all(tree.join("boot/firmware")).unwrap();
    claim_packages(&tree);
    let fill = tree.join("usr/share/filler");
    std::fs::create_dir_all(&fill).unwrap();
    for i in 0..filler {
        let d = fill.join(format!("{:02}", i % 50));
        std::fs::create_dir_all(&d).unwrap();
        // Incompressible enough that sizes are real on disk.
        let data: Vec<u8> = (0..4096u32)
            .map(|k| (k.wrapping_mul(2654435761).wrapping_add(i as u32 * 7919) >> 13) as u8)
            .collect();
        std::fs::write(d.join(format!("f{i}")), data).unwrap();
    }
    let tar = work.join("base.tar.zst");
    let st = Command::new("tar")
        .args([
            "--sort=name",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--mtime=@1700000000",
            "--zstd",
            "-cf",
        ])
        .arg(&tar)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "packing the small base");
    std::fs::rename(&tar, &out).unwrap();
    let _ = std::fs::remove_dir_all(&work);
    out
}

/// This base is a fragment made to be killed in the middle of, not a
/// system apt could install into: its dpkg database claims every package
/// the fixture profile asks for, so no package layer is built on it.
fn claim_packages(tree: &Path) {
    let profile = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/profiles/fixture.toml"
    ))
    .unwrap();
    let listed = profile
        .split("[packages]")
        .nth(1)
        .and_then(|rest| rest.split("[groups]").next())
        .unwrap_or_default()
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string);
    let roles = [
        "munge",
        "slurmd",
        "dbus",
        "docker.io",
        "nfs-kernel-server",
        "nfs-common",
        "curl",
        "ca-certificates",
        "exa",
        "eza",
    ];
    let mut status = std::fs::read_to_string(tree.join("var/lib/dpkg/status")).unwrap();
    for p in listed.chain(roles.iter().map(|r| r.to_string())) {
        status.push_str(&format!(
            "\nPackage: {p}\nStatus: install ok installed\nArchitecture: arm64\nVersion: 0\n"
        ));
    }
    std::fs::write(tree.join("var/lib/dpkg/status"), status).unwrap();
}

/// The fixture profile with its base replaced by `base`, written at `path`.
pub fn write_profile(path: &Path, base: &Path) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/profiles/fixture.toml"
    ))
    .unwrap();
    let text = text.replace(
        "../../../shared/fixtures/debian-bookworm-arm64-minbase.tar.xz",
        &base.display().to_string(),
    );
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// chbuild with a profile, a store and a secrets directory; every output
/// is checked for the secrets before it is handed back.
pub struct Env {
    pub dir: PathBuf,
    pub profile: PathBuf,
    pub store: PathBuf,
    pub secrets: PathBuf,
    needles: Vec<(String, String)>,
}

impl Env {
    /// A new environment under the target directory (kept for a look after
    /// a failure, replaced by the next run of the same test).
    pub fn new(name: &str, filler: usize) -> Env {
        let dir = work_root().join(format!("hostile-{name}"));
        let _ = Command::new("umount").arg("-R").arg(&dir).output();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base = small_base(filler);
        let profile = dir.join("profiles/test.toml");
        write_profile(&profile, &base);
        let mut env = Env {
            profile,
            store: dir.join("store"),
            secrets: dir.join("secrets"),
            dir,
            needles: vec![],
        };
        env.ok(&["secrets", "init"]);
        env.needles = secret_needles(&env.secrets);
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// As the other binary-driving tests run chbuild, with debug logs and
    /// backtraces (more output to check for secrets).
    pub fn command(&self, args: &[&str]) -> Command {
        let cli = cli_support::Chbuild {
            profile: self.profile.clone(),
            store: self.store.clone(),
            secrets: self.secrets.clone(),
        };
        let mut c = cli.command(args);
        c.env("RUST_LOG", "debug").env("RUST_BACKTRACE", "1");
        c
    }

    /// Run, check the output for secrets, return it.
    pub fn run(&self, args: &[&str]) -> Output {
        let o = self.command(args).output().expect("running chbuild");
        self.no_secrets(&o.stdout, &format!("stdout of {args:?}"));
        self.no_secrets(&o.stderr, &format!("stderr of {args:?}"));
        o
    }

    /// Run and assert success; returns stderr (the log).
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "chbuild {args:?} failed:\n{err}");
        err
    }

    /// Run and assert failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "chbuild {args:?} succeeded:\n{err}");
        err
    }

    /// Panic when `bytes` contains any test secret, in any encoding.
    pub fn no_secrets(&self, bytes: &[u8], what: &str) {
        let text = String::from_utf8_lossy(bytes);
        for (name, needle) in &self.needles {
            assert!(
                !text.contains(needle.as_str()),
                "{what} leaks the {name} (`{needle}`)"
            );
        }
        if let Some(key) = self.needles.iter().find(|(n, _)| n == "munge key bytes") {
            let raw = hex::decode(&key.1).unwrap();
            assert!(
                !bytes.windows(raw.len()).any(|w| w == raw.as_slice()),
                "{what} leaks raw munge key bytes"
            );
        }
    }
}

/// Every form in which a test secret could show up in a log: munge key
/// bytes (raw, hex both cases, base64), the k3s token, the password and
/// its hash, every line of each private key's body.
pub fn secret_needles(dir: &Path) -> Vec<(String, String)> {
    let mut v = vec![];
    let munge = std::fs::read(dir.join("munge.key")).unwrap();
    use base64_like::encode as b64;
    for chunk in [&munge[..16], &munge[500..516], &munge[1000..1016]] {
        v.push(("munge key (hex)".into(), hex::encode(chunk)));
        v.push(("munge key (HEX)".into(), hex::encode_upper(chunk)));
    }
    // base64 of aligned 48-byte chunks is a 64-character run of any
    // base64 rendering of the whole key.
    for start in [0usize, 480, 960] {
        v.push(("munge key (base64)".into(), b64(&munge[start..start + 48])));
    }
    v.push(("munge key bytes".into(), hex::encode(&munge[100..116])));
    for (name, file) in [
        ("k3s token", "k3s-token"),
        ("password", "password"),
        ("password hash", "password.sha512crypt"),
    ] {
        let s = std::fs::read_to_string(dir.join(file)).unwrap();
        v.push((name.into(), s.trim().to_string()));
    }
    // The part after the salt is what makes the hash secret.
    let hash = std::fs::read_to_string(dir.join("password.sha512crypt")).unwrap();
    if let Some(tail) = hash.trim().rsplit('$').next() {
        v.push(("password hash digest".into(), tail.to_string()));
    }
    let mut keys = vec![dir.join("admin_ed25519")];
    for e in walkdir::WalkDir::new(dir.join("hostkeys"))
        .into_iter()
        .flatten()
    {
        if e.file_type().is_file() && e.path().extension().is_none() {
            keys.push(e.path().to_path_buf());
        }
    }
    for k in keys {
        let text = std::fs::read_to_string(&k).unwrap();
        for line in text.lines().filter(|l| !l.starts_with("-----")) {
            if line.len() >= 20 {
                v.push((format!("private key {}", k.display()), line.to_string()));
            }
        }
    }
    v
}

/// Minimal standard base64 (the tests need no crate for it).
mod base64_like {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(data: &[u8]) -> String {
        let mut s = String::new();
        for c in data.chunks(3) {
            let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..4 {
                if i <= c.len() {
                    s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }
}

/// Every path under `root` with type, mode and content hash (files) or
/// target (symlinks); equal snapshots mean equal trees.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if !root.exists() {
        return m;
    }
    for e in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().display().to_string();
        let md = e.path().symlink_metadata().unwrap();
        let content = if md.is_file() {
            hex::encode(sha2::Sha256::digest(std::fs::read(e.path()).unwrap()))
        } else if md.file_type().is_symlink() {
            std::fs::read_link(e.path()).unwrap().display().to_string()
        } else {
            String::new()
        };
        m.insert(rel, format!("{:o} {content}", md.mode()));
    }
    m
}

/// Names directly under `dir` (sorted).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The store holds only complete entries: every digest directory has its
/// meta.json, manifest and tree, and the tree matches the manifest's
/// entry count; no `.tmp-*` is left once a run finished.
pub fn store_entries_complete(store: &Path) -> Result<Vec<String>, String> {
    let mut digests = vec![];
    for n in names(store) {
        let p = store.join(&n);
        if n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()) {
            if !p.join("meta.json").is_file() {
                return Err(format!("entry {n} has no meta.json"));
            }
            let manifest = std::fs::read_to_string(p.join("manifest.jsonl"))
                .map_err(|e| format!("entry {n}: manifest: {e}"))?;
            let tree = p.join("tree");
            let mut listed = std::collections::BTreeSet::new();
            for line in manifest.lines() {
                let v: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| format!("entry {n}: manifest line {line:?}: {e}"))?;
                let path = v["path"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches("./");
                let path = path.trim_end_matches('/').to_string();
                if tree.join(&path).symlink_metadata().is_err() {
                    return Err(format!("entry {n}: `{path}` is listed but missing"));
                }
                listed.insert(path);
            }
            for e in walkdir::WalkDir::new(&tree).min_depth(1) {
                let e = e.map_err(|e| e.to_string())?;
                let rel = e.path().strip_prefix(&tree).unwrap().display().to_string();
                if !listed.contains(&rel) {
                    return Err(format!(
                        "entry {n}: `{rel}` is in the tree, not in the manifest"
                    ));
                }
            }
            digests.push(n);
        }
    }
    Ok(digests)
}

/// Files of an output directory (not trees) with their sha256.
pub fn output_files(out: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for n in names(out) {
        let p = out.join(&n);
        if p.is_file() && !n.starts_with('.') {
            m.insert(
                n,
                hex::encode(sha2::Sha256::digest(std::fs::read(&p).unwrap())),
            );
        }
    }
    m
}

/// Mount a tmpfs of `mib` MiB at `dir`; unmounted on drop.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    pub fn new(dir: &Path, kib: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={kib}k,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs at {}", dir.display());
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }

    pub fn resize(&self, kib: u64) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={kib}k")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(st.success(), "resizing the tmpfs at {}", self.dir.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// Small deterministic generator: failures must be reproducible.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}
