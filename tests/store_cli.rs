//! `chbuild store ingest|list|gc` driven through the binary with a test
//! profile whose base is a local archive.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_chbuild");
const PROFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/clusterhat.toml");

/// The default profile with its `[base]` table replaced.
fn profile_with_base(dir: &Path, base: &str) -> PathBuf {
    let text = std::fs::read_to_string(PROFILE).unwrap();
    let start = text.find("\n[base]\n").unwrap();
    let end = start + 1 + text[start + 1..].find("\n[").unwrap();
    let out = format!("{}\n{base}{}", &text[..start], &text[end..]);
    let path = dir.join("profile.toml");
    std::fs::write(&path, out).unwrap();
    path
}

fn chbuild(profile: &Path, store: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--profile")
        .arg(profile)
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walkdir::WalkDir::new(dir)
        .max_depth(2)
        .into_iter()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    v.sort();
    v
}

fn small_archive(path: &Path) -> String {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [("etc/hostname", &b"localhost\n"[..]), ("etc/motd", b"hi\n")] {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut enc = zstd::Encoder::new(Vec::new(), 3).unwrap();
    enc.write_all(&tar).unwrap();
    let bytes = enc.finish().unwrap();
    std::fs::write(path, &bytes).unwrap();
    hex::encode(Sha256::digest(&bytes))
}

#[test]
fn ingest_list_gc() {
    let tmp = tempfile::tempdir().unwrap();
    // Named .tar.gz but zstd inside: the content decides.
    let archive = tmp.path().join("base.tar.gz");
    let sha = small_archive(&archive);
    let profile = profile_with_base(
        tmp.path(),
        &format!(
            "[base]\nsource = \"archive\"\npath = \"{}\"\narchitecture = \"arm64\"\n",
            archive.display()
        ),
    );
    let store = tmp.path().join("store");
    let out = ok(chbuild(&profile, &store, &["store", "ingest"]));
    assert_eq!(out.trim(), sha);
    assert!(store.join(&sha).join("tree/etc/motd").is_file());
    assert!(store.join(&sha).join("manifest.jsonl").is_file());

    // The second ingest does no work: same digest, nothing new in the store.
    let before = names(&store);
    let t = Instant::now();
    let out = ok(chbuild(&profile, &store, &["store", "ingest"]));
    assert_eq!(out.trim(), sha);
    assert!(t.elapsed().as_secs() < 5);
    assert_eq!(names(&store), before);

    let list = ok(chbuild(&profile, &store, &["store", "list"]));
    assert!(
        list.contains(&sha) && list.contains("base.tar.gz"),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(chbuild(&profile, &store, &["--json", "store", "list"]))).unwrap();
    assert_eq!(json[0]["digest"], sha.as_str());

    // gc keeps what the profile uses, --all removes everything.
    ok(chbuild(&profile, &store, &["store", "gc"]));
    assert!(store.join(&sha).is_dir());
    ok(chbuild(&profile, &store, &["store", "gc", "--all"]));
    assert!(!store.join(&sha).exists());
    assert_eq!(ok(chbuild(&profile, &store, &["store", "list"])).trim(), "");
}

#[test]
fn unsafe_archive_fails_naming_the_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("evil.tar");
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..10].copy_from_slice(b"../escaped");
    h.set_size(0);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b""[..]).unwrap();
    std::fs::write(&archive, b.into_inner().unwrap()).unwrap();
    let profile = profile_with_base(
        tmp.path(),
        &format!(
            "[base]\nsource = \"archive\"\npath = \"{}\"\narchitecture = \"arm64\"\n",
            archive.display()
        ),
    );
    let o = chbuild(&profile, &tmp.path().join("store"), &["store", "ingest"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("`../escaped`"), "{err}");
    assert!(!tmp.path().join("escaped").exists());
}
