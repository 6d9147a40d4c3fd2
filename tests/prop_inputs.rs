//! Random and mutated inputs for every reader of outside data: base
//! archives (plain tar, xz, zstd, gzip), profiles, output manifests and
//! SHA256SUMS, store manifests, secrets bundles and the Ansible inventory
//! and group_vars. Whatever the bytes, chbuild must not panic, must not
//! write outside the place it was given, must name the input in its error,
//! and must leave the store or output directory as it was after an error.
//!
//! Each property runs a bounded number of cases (about a second each on a
//! busy 2-core machine). The seed is printed first and can be fixed with
//! `CHBUILD_PROP_SEED=<n>`; proptest keeps every failing case it finds in
//! `tests/regressions/*.txt` (commit them), and raw inputs that once broke
//! a reader live in `tests/regressions/<reader>/` and are replayed first.

use chbuild::artifact::{self, public, Manifest, NodeArtifact};
use chbuild::profile::model::Arch;
use chbuild::profile::{Base, BaseSource, NodeKind};
use chbuild::store::Store;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tar::{EntryType, Header};

const SRC: &str = env!("CARGO_MANIFEST_DIR");

fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        let s = std::env::var("CHBUILD_PROP_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        eprintln!("property seed {s} (rerun with CHBUILD_PROP_SEED={s})");
        s
    })
}

fn config(cases: u32, regressions: &'static str) -> Config {
    // A longer hunt than CI's: CHBUILD_PROP_SCALE=20 runs 20 times the cases.
    let scale: u32 = std::env::var("CHBUILD_PROP_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    Config {
        cases: cases * scale,
        rng_seed: RngSeed::Fixed(seed()),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        max_shrink_iters: 256,
        ..Config::default()
    }
}

/// Scratch space on tmpfs when there is one: ingests end with syncfs, which
/// on a disk shared with builds would dominate the run time.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(t) = tempfile::tempdir_in(shm) {
            return t;
        }
    }
    tempfile::tempdir().unwrap()
}

/// Every path under `root` with its type, mode, size and content hash:
/// equal snapshots mean nothing was written.
fn snapshot(root: &Path, skip: &[&str]) -> BTreeMap<PathBuf, String> {
    let mut m = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).follow_links(false) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
        if rel.as_os_str().is_empty() || skip.iter().any(|s| rel.starts_with(s)) {
            continue;
        }
        let md = e.path().symlink_metadata().unwrap();
        use std::os::unix::fs::MetadataExt;
        let content = if md.is_file() {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(std::fs::read(e.path()).unwrap()))
        } else if md.file_type().is_symlink() {
            std::fs::read_link(e.path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        } else {
            String::new()
        };
        // A directory's size follows its entries, some of them skipped.
        let size = if md.is_dir() { 0 } else { md.len() };
        m.insert(rel, format!("{:o} {size} {content}", md.mode()));
    }
    m
}

/// Replay the raw inputs kept under tests/regressions/<name>/.
fn kept_inputs(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(SRC).join("tests/regressions").join(name);
    let mut v = vec![];
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            v.push((e.path(), std::fs::read(e.path()).unwrap()));
        }
    }
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// Mutations shared by every reader.

#[derive(Debug, Clone)]
enum Mutation {
    /// Flip one bit at a fraction of the length.
    Flip(f64, u8),
    /// Cut at a fraction of the length.
    Truncate(f64),
    /// Insert bytes at a fraction of the length.
    Insert(f64, Vec<u8>),
    /// Overwrite bytes at a fraction of the length.
    Overwrite(f64, Vec<u8>),
    /// Remove a range.
    Delete(f64, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let frac = 0.0f64..1.0;
    prop_oneof![
        3 => (frac.clone(), 0u8..8).prop_map(|(f, b)| Mutation::Flip(f, b)),
        1 => frac.clone().prop_map(Mutation::Truncate),
        1 => (frac.clone(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(f, b)| Mutation::Insert(f, b)),
        2 => (frac.clone(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(f, b)| Mutation::Overwrite(f, b)),
        1 => (frac, 1usize..600).prop_map(|(f, n)| Mutation::Delete(f, n)),
    ]
}

fn apply(data: &mut Vec<u8>, muts: &[Mutation]) {
    for m in muts {
        let at = |f: f64, len: usize| ((len as f64) * f) as usize;
        match m {
            Mutation::Flip(f, bit) if !data.is_empty() => {
                let i = at(*f, data.len()).min(data.len() - 1);
                data[i] ^= 1 << bit;
            }
            Mutation::Truncate(f) => {
                let n = at(*f, data.len());
                data.truncate(n);
            }
            Mutation::Insert(f, b) => {
                let i = at(*f, data.len());
                data.splice(i..i, b.iter().copied());
            }
            Mutation::Overwrite(f, b) if !data.is_empty() => {
                let i = at(*f, data.len()).min(data.len() - 1);
                for (k, v) in b.iter().enumerate() {
                    if let Some(d) = data.get_mut(i + k) {
                        *d = *v;
                    }
                }
            }
            Mutation::Delete(f, n) if !data.is_empty() => {
                let i = at(*f, data.len()).min(data.len() - 1);
                let end = (i + n).min(data.len());
                data.drain(i..end);
            }
            _ => {}
        }
    }
}

fn text_mutation() -> impl Strategy<Value = TextMutation> {
    prop_oneof![
        2 => (0.0f64..1.0).prop_map(TextMutation::DeleteLine),
        1 => (0.0f64..1.0).prop_map(TextMutation::DuplicateLine),
        1 => (0.0f64..1.0, 0.0f64..1.0).prop_map(|(a, b)| TextMutation::SwapLines(a, b)),
        3 => (0.0f64..1.0, value()).prop_map(|(a, v)| TextMutation::ReplaceValue(a, v)),
        2 => (0.0f64..1.0, "[ -~]{0,24}").prop_map(|(a, s)| TextMutation::InsertLine(a, s)),
        2 => mutation().prop_map(TextMutation::Bytes),
    ]
}

/// Values that break assumptions: empty, huge numbers, other types, paths
/// that climb out, control characters, non-ASCII.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("\"\"".into()),
        Just("\"../../../../etc/passwd\"".into()),
        Just("\"/etc/shadow\"".into()),
        Just("-1".into()),
        Just("99999999999999999999".into()),
        Just("true".into()),
        Just("[]".into()),
        Just("{}".into()),
        Just("\"z1..z9\"".into()),
        Just("\"256.1.1.1\"".into()),
        Just("\"172.16.2.0/33\"".into()),
        Just("\"\\u0000\"".into()),
        Just("\"é ☃ \\t\"".into()),
        "[ -~]{0,12}",
        "\"[a-z0-9./]{0,12}\"",
    ]
}

#[derive(Debug, Clone)]
enum TextMutation {
    DeleteLine(f64),
    DuplicateLine(f64),
    SwapLines(f64, f64),
    /// Replace what follows the first `=` or `:` on a line.
    ReplaceValue(f64, String),
    InsertLine(f64, String),
    Bytes(Mutation),
}

fn apply_text(text: &str, muts: &[TextMutation]) -> Vec<u8> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let pick = |f: f64, n: usize| ((n as f64 * f) as usize).min(n.saturating_sub(1));
    let mut bytes_muts = vec![];
    for m in muts {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let n = lines.len();
        match m {
            TextMutation::DeleteLine(f) => {
                lines.remove(pick(*f, n));
            }
            TextMutation::DuplicateLine(f) => {
                let l = lines[pick(*f, n)].clone();
                lines.insert(pick(*f, n), l);
            }
            TextMutation::SwapLines(a, b) => lines.swap(pick(*a, n), pick(*b, n)),
            TextMutation::ReplaceValue(f, v) => {
                let i = pick(*f, n);
                if let Some(k) = lines[i].find(['=', ':']) {
                    lines[i] = format!("{} {v}", &lines[i][..=k]);
                }
            }
            TextMutation::InsertLine(f, s) => lines.insert(pick(*f, n), s.clone()),
            TextMutation::Bytes(b) => bytes_muts.push(b.clone()),
        }
    }
    let mut out = lines.join("\n").into_bytes();
    out.push(b'\n');
    apply(&mut out, &bytes_muts);
    out
}

fn error_names(e: &anyhow::Error, what: &Path) -> bool {
    let shown = format!("{e:#}");
    shown.contains(&what.display().to_string())
}

// ---------------------------------------------------------------------------
// Base archives.

/// An entry name; `@OUT@` stands for an absolute path outside the store,
/// filled in per case.
fn entry_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[abc]{1,2}(/[abc]{1,2}){0,2}",
        1 => Just("./".to_string()),
        1 => Just(".".to_string()),
        1 => Just("../outside".to_string()),
        1 => Just("a/../../outside".to_string()),
        1 => Just("@OUT@/abs".to_string()),
        1 => Just("/etc/chbuild-prop".to_string()),
        1 => Just("a//b/./c".to_string()),
        1 => Just("link/escaped".to_string()),
        1 => Just("link/../x".to_string()),
    ]
}

fn link_target() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[abc]{1,2}(/[abc]{1,2}){0,1}",
        1 => Just("..".to_string()),
        1 => Just("../../..".to_string()),
        1 => Just("../../../outside".to_string()),
        1 => Just("@OUT@".to_string()),
        1 => Just("/".to_string()),
        1 => Just(String::new()),
    ]
}

#[derive(Debug, Clone)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    Hardlink(String),
    Fifo,
    Char(u32, u32),
    Other(u8),
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    kind: Kind,
    mode: u32,
    /// Write the name into a pax record instead of the header.
    pax_name: bool,
    xattr: Option<(String, Vec<u8>)>,
}

fn entry() -> impl Strategy<Value = Entry> {
    let kind = prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Kind::File),
        3 => Just(Kind::Dir),
        2 => link_target().prop_map(Kind::Symlink),
        2 => prop_oneof!["[abc]{1,2}(/[abc]{1,2}){0,1}", link_target()].prop_map(Kind::Hardlink),
        1 => Just(Kind::Fifo),
        1 => (0u32..300, 0u32..300).prop_map(|(a, b)| Kind::Char(a, b)),
        1 => any::<u8>().prop_map(Kind::Other),
    ];
    let xattr = prop::option::weighted(
        0.1,
        (
            prop_oneof![
                Just("user.test".to_string()),
                Just("security.capability".to_string()),
                Just("trusted.x".to_string()),
                "[a-z.]{0,12}",
            ],
            prop::collection::vec(any::<u8>(), 0..20),
        ),
    );
    (
        entry_name(),
        kind,
        prop_oneof![
            Just(0o644u32),
            Just(0o755),
            Just(0),
            Just(0o7777),
            0u32..0o7777
        ],
        prop::bool::weighted(0.1),
        xattr,
    )
        .prop_map(|(name, kind, mode, pax_name, xattr)| Entry {
            name,
            kind,
            mode,
            pax_name,
            xattr,
        })
}

#[derive(Debug, Clone, Copy)]
enum Compress {
    None,
    Xz,
    Zstd,
    Gzip,
}

fn compress(c: Compress, data: &[u8]) -> Vec<u8> {
    match c {
        Compress::None => data.to_vec(),
        Compress::Xz => {
            let mut e = liblzma::write::XzEncoder::new(vec![], 0);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compress::Zstd => zstd::encode_all(data, 1).unwrap(),
        Compress::Gzip => {
            let mut e = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
    }
}

fn put(field: &mut [u8], value: &[u8]) {
    field.fill(0);
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// A tar stream with the names written raw (the tar crate's builder would
/// refuse the hostile ones), ending with the two zero blocks.
fn tar_stream(entries: &[Entry], outside: &Path) -> Vec<u8> {
    let out = outside.display().to_string();
    let fill = |s: &str| s.replace("@OUT@", &out);
    let mut b = tar::Builder::new(vec![]);
    for e in entries {
        let name = fill(&e.name);
        let mut pax: Vec<(String, Vec<u8>)> = vec![];
        if e.pax_name {
            pax.push(("path".into(), name.clone().into_bytes()));
        }
        if let Some((k, v)) = &e.xattr {
            pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        }
        let mut h = Header::new_gnu();
        put(&mut h.as_old_mut().name, name.as_bytes());
        let (kind, data): (EntryType, &[u8]) = match &e.kind {
            Kind::File(d) => (EntryType::Regular, d),
            Kind::Dir => (EntryType::Directory, &[]),
            Kind::Symlink(t) | Kind::Hardlink(t) => {
                put(&mut h.as_old_mut().linkname, fill(t).as_bytes());
                let k = if matches!(e.kind, Kind::Symlink(_)) {
                    EntryType::Symlink
                } else {
                    EntryType::Link
                };
                (k, &[])
            }
            Kind::Fifo => (EntryType::Fifo, &[]),
            Kind::Char(ma, mi) => {
                h.set_device_major(*ma).unwrap();
                h.set_device_minor(*mi).unwrap();
                (EntryType::Char, &[])
            }
            Kind::Other(b) => (EntryType::new(*b), &[]),
        };
        h.set_entry_type(kind);
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn archive_base(path: &Path) -> Base {
    Base {
        source: BaseSource::Archive {
            path: path.to_path_buf(),
            checksum: None,
        },
        architecture: Arch::Arm64,
        boot_dir: "boot/firmware".into(),
    }
}

/// Ingest `bytes` as a base archive into a store that already holds one
/// entry, and check the properties.
fn check_ingest(bytes: &[u8]) -> Result<(), TestCaseError> {
    let t = scratch();
    let outside = t.path().join("outside");
    let store_dir = t.path().join("store");
    let store = Store::open(&store_dir).unwrap();
    // A store with an entry in it, as users have.
    let first = t.path().join("first.tar");
    std::fs::write(&first, tar_stream(&[], &outside)).unwrap();
    store.ensure_base(&archive_base(&first)).unwrap();
    let archive = t.path().join("input.tar");
    std::fs::write(&archive, bytes).unwrap();
    let before_store = snapshot(&store_dir, &[".lock"]);
    let before_all = snapshot(t.path(), &["store"]);

    let r = store.ensure_base(&archive_base(&archive));

    // Nothing outside the store was written, whatever the outcome.
    let after_all = snapshot(t.path(), &["store"]);
    prop_assert_eq!(&before_all, &after_all, "written outside the store");
    prop_assert!(!Path::new("/etc/chbuild-prop").exists());
    match r {
        Ok(tree) => {
            prop_assert!(tree.root.starts_with(&store_dir));
            // The tree holds nothing that points out of it by a hardlink
            // to a file outside (symlinks are data, read by nobody here).
        }
        Err(e) => {
            prop_assert!(
                error_names(&e, &archive),
                "the error does not name {}: {e:#}",
                archive.display()
            );
            let after = snapshot(&store_dir, &[".lock"]);
            prop_assert_eq!(
                before_store,
                after,
                "the store changed after an error: {:#}",
                e
            );
        }
    }
    Ok(())
}

#[test]
fn kept_archives_are_refused_or_stored_safely() {
    for (path, bytes) in kept_inputs("archives") {
        if let Err(e) = check_ingest(&bytes) {
            panic!("{}: {e}", path.display());
        }
    }
}

proptest! {
    #![proptest_config(config(160, "tests/regressions/prop_archives.txt"))]

    /// Random tar streams, hostile names included, in every compression,
    /// then mutated before or after compressing.
    #[test]
    fn archives_never_escape_or_corrupt_the_store(
        entries in prop::collection::vec(entry(), 0..10),
        c in prop_oneof![Just(Compress::None), Just(Compress::Xz), Just(Compress::Zstd), Just(Compress::Gzip)],
        before in prop::collection::vec(mutation(), 0..3),
        after in prop::collection::vec(mutation(), 0..3),
    ) {
        // The outside path only becomes known inside check_ingest's scratch
        // dir; a fixed stand-in keeps the stream independent of it.
        let mut raw = tar_stream(&entries, Path::new("/dev/shm/chbuild-prop-outside"));
        apply(&mut raw, &before);
        let mut bytes = compress(c, &raw);
        apply(&mut bytes, &after);
        check_ingest(&bytes)?;
        prop_assert!(!Path::new("/dev/shm/chbuild-prop-outside/abs").exists());
    }

    /// Pure noise behind each compression magic.
    #[test]
    fn noise_behind_a_magic_is_refused(
        magic in prop_oneof![
            Just(vec![0xfd, b'7', b'z', b'X', b'Z', 0]),
            Just(vec![0x28, 0xb5, 0x2f, 0xfd]),
            Just(vec![0x1f, 0x8b]),
            Just(b"BZh9".to_vec()),
            Just(vec![]),
        ],
        noise in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut bytes = magic;
        bytes.extend(noise);
        check_ingest(&bytes)?;
    }
}

// ---------------------------------------------------------------------------
// Profiles.

fn profile_text() -> String {
    std::fs::read_to_string(Path::new(SRC).join("tests/profiles/fixture.toml")).unwrap()
}

fn check_profile(bytes: &[u8]) -> Result<(), TestCaseError> {
    let t = scratch();
    let dir = t.path().join("profiles");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("mutated.toml");
    std::fs::write(&path, bytes).unwrap();
    let before = snapshot(t.path(), &[]);
    let r = chbuild::profile::load_profile(&path);
    prop_assert_eq!(before, snapshot(t.path(), &[]), "loading wrote files");
    if let Err(e) = r {
        prop_assert!(
            error_names(&e, &path),
            "error does not name the profile: {e:#}"
        );
    }
    Ok(())
}

#[test]
fn kept_profiles_load_or_are_refused_by_name() {
    for (path, bytes) in kept_inputs("profiles") {
        if let Err(e) = check_profile(&bytes) {
            panic!("{}: {e}", path.display());
        }
    }
}

proptest! {
    #![proptest_config(config(300, "tests/regressions/prop_profiles.txt"))]

    #[test]
    fn profiles_load_or_are_refused_by_name(
        muts in prop::collection::vec(text_mutation(), 1..5),
    ) {
        check_profile(&apply_text(&profile_text(), &muts))?;
    }
}

// ---------------------------------------------------------------------------
// Output manifests, SHA256SUMS, store manifests.

/// An output directory as `chbuild image` leaves it, with small tarballs.
fn output_dir(dir: &Path) -> Manifest {
    let mut nodes = vec![];
    for (i, name) in ["z1", "z2", "p1"].iter().enumerate() {
        let tarball = format!("{name}.tar.zst");
        let data = zstd::encode_all(&tar_stream(&[], Path::new("/x"))[..], 1).unwrap();
        std::fs::write(dir.join(&tarball), &data).unwrap();
        std::fs::create_dir_all(dir.join(name).join("etc")).unwrap();
        let f = artifact::ArtifactFile::of(dir, &tarball).unwrap();
        nodes.push(NodeArtifact {
            name: name.to_string(),
            hostname: name.to_string(),
            kind: if name.starts_with('z') {
                NodeKind::Usbboot
            } else {
                NodeKind::Sd
            },
            slot: name.starts_with('z').then_some(i as u8 + 1),
            tree: name.to_string(),
            tarball: Some(tarball),
            sha256: Some(f.sha256),
            size: Some(f.size),
            files: 1,
            inputs: "0".repeat(64),
            files_extra: vec![],
            needs_network: vec![],
        });
    }
    let m = Manifest {
        cluster: "clusterhat".into(),
        profile: "profiles/clusterhat.toml".into(),
        base_digest: "0".repeat(64),
        source_date_epoch: 1_700_000_000,
        nodes,
        controller: None,
    };
    m.save(dir).unwrap();
    m
}

fn fixture_plans() -> Vec<chbuild::profile::plan::NodePlan> {
    let p = chbuild::profile::load_profile(&Path::new(SRC).join("tests/profiles/fixture.toml"))
        .unwrap();
    p.nodes
        .iter()
        .filter(|n| n.kind == NodeKind::Usbboot)
        .map(|n| p.plan(n))
        .collect()
}

fn check_output_readers(
    manifest: Option<Vec<u8>>,
    sums: Option<Vec<u8>>,
) -> Result<(), TestCaseError> {
    let t = scratch();
    let dir = t.path().join("out");
    std::fs::create_dir(&dir).unwrap();
    output_dir(&dir);
    if let Some(m) = manifest {
        std::fs::write(dir.join("manifest.json"), m).unwrap();
    }
    if let Some(s) = sums {
        std::fs::write(dir.join("SHA256SUMS"), s).unwrap();
    }
    let before = snapshot(t.path(), &[]);
    let names = |e: &anyhow::Error| {
        let s = format!("{e:#}");
        s.contains(&dir.display().to_string())
    };
    if let Err(e) = Manifest::load(&dir) {
        prop_assert!(names(&e), "Manifest::load: {e:#}");
    }
    if let Err(e) = artifact::verify(&dir) {
        prop_assert!(names(&e), "verify: {e:#}");
    }
    if let Err(e) = chbuild::deploy::source::open(&dir, false, "clusterhat", &fixture_plans()) {
        prop_assert!(names(&e), "deploy source: {e:#}");
    }
    if let Err(e) = chbuild::deploy::source::open(&dir, true, "clusterhat", &fixture_plans()) {
        prop_assert!(names(&e), "deploy source (bundle): {e:#}");
    }
    prop_assert_eq!(before, snapshot(t.path(), &[]), "a reader wrote files");
    Ok(())
}

fn manifest_json() -> String {
    let t = scratch();
    String::from_utf8(serde_json::to_vec_pretty(&output_dir(t.path())).unwrap()).unwrap()
}

fn sums_text() -> String {
    let t = scratch();
    output_dir(t.path());
    std::fs::read_to_string(t.path().join("SHA256SUMS")).unwrap()
}

proptest! {
    #![proptest_config(config(200, "tests/regressions/prop_manifests.txt"))]

    #[test]
    fn output_manifests_are_read_or_refused_by_name(
        m in prop::collection::vec(text_mutation(), 0..4),
        s in prop::collection::vec(text_mutation(), 0..3),
    ) {
        let manifest = (!m.is_empty()).then(|| apply_text(&manifest_json(), &m));
        let sums = (!s.is_empty()).then(|| apply_text(&sums_text(), &s));
        check_output_readers(manifest, sums)?;
    }

    #[test]
    fn store_manifests_are_read_or_refused_by_name(
        muts in prop::collection::vec(mutation(), 1..4),
        which in 0usize..2,
    ) {
        let t = scratch();
        let store_dir = t.path().join("store");
        let store = Store::open(&store_dir).unwrap();
        let a = t.path().join("a.tar");
        let entries = vec![
            Entry { name: "etc".into(), kind: Kind::Dir, mode: 0o755, pax_name: false, xattr: None },
            Entry { name: "etc/x".into(), kind: Kind::File(b"x".to_vec()), mode: 0o644, pax_name: false, xattr: Some(("user.a".into(), vec![1])) },
            Entry { name: "l".into(), kind: Kind::Symlink("etc/x".into()), mode: 0o777, pax_name: false, xattr: None },
        ];
        std::fs::write(&a, tar_stream(&entries, Path::new("/x"))).unwrap();
        let tree = store.ensure_base(&archive_base(&a)).unwrap();
        let entry_dir = tree.root.parent().unwrap().to_path_buf();
        let file = entry_dir.join(["manifest.jsonl", "meta.json"][which]);
        let mut bytes = std::fs::read(&file).unwrap();
        apply(&mut bytes, &muts);
        std::fs::write(&file, &bytes).unwrap();
        let before = snapshot(t.path(), &[".lock"]);
        let r = if which == 0 {
            chbuild::store::manifest::read_manifest(&file).map(|_| ())
        } else {
            chbuild::store::manifest::read_meta(&file).map(|_| ())
        };
        if let Err(e) = r {
            prop_assert!(error_names(&e, &file), "{e:#}");
        }
        if let Err(e) = store.list() {
            prop_assert!(error_names(&e, &file), "store list: {e:#}");
        }
        prop_assert_eq!(before, snapshot(t.path(), &[".lock"]));
    }
}

// ---------------------------------------------------------------------------
// Secrets bundles.

fn bundle_entry() -> impl Strategy<Value = (String, Vec<u8>, EntryType)> {
    (
        prop_oneof![
            4 => "(z1|z2)/etc/(munge/munge\\.key|ssh/ssh_host_ed25519_key|shadow)",
            1 => Just("z1/../../outside".to_string()),
            1 => Just("z1//etc/shadow".to_string()),
            1 => Just("z1/./etc/shadow".to_string()),
            1 => Just("/z1/etc/shadow".to_string()),
            1 => Just("z1/".to_string()),
            1 => Just("z1/nodir/x".to_string()),
            1 => Just("z1/etc".to_string()),
            1 => "[ -~]{0,20}",
        ],
        prop::collection::vec(any::<u8>(), 0..64),
        prop_oneof![
            4 => Just(EntryType::Regular),
            1 => Just(EntryType::Symlink),
            1 => Just(EntryType::Directory),
            1 => Just(EntryType::Link),
        ],
    )
}

fn check_bundle(bytes: &[u8]) -> Result<(), TestCaseError> {
    let t = scratch();
    let bundle = t.path().join("secrets.tar.zst");
    std::fs::write(&bundle, bytes).unwrap();
    let tree = t.path().join("stage/z1");
    std::fs::create_dir_all(tree.join("etc/munge")).unwrap();
    std::fs::create_dir_all(tree.join("etc/ssh")).unwrap();
    let before_outside = snapshot(t.path(), &["stage"]);
    let z1 = fixture_plans()
        .into_iter()
        .find(|p| p.name == "z1")
        .expect("the fixture profile has z1");
    match public::read_bundle(&bundle, &z1) {
        Err(e) => prop_assert!(error_names(&e, &bundle), "{e:#}"),
        Ok(files) => {
            if let Err(e) = public::apply_secrets(&tree, &files) {
                prop_assert!(error_names(&e, &tree), "{e:#}");
            }
        }
    }
    prop_assert_eq!(
        before_outside,
        snapshot(t.path(), &["stage"]),
        "written outside the tree"
    );
    Ok(())
}

#[test]
fn kept_bundles_are_read_or_refused_by_name() {
    for (path, bytes) in kept_inputs("bundles") {
        if let Err(e) = check_bundle(&bytes) {
            panic!("{}: {e}", path.display());
        }
    }
}

proptest! {
    #![proptest_config(config(200, "tests/regressions/prop_bundles.txt"))]

    #[test]
    fn bundles_are_read_or_refused_by_name(
        entries in prop::collection::vec(bundle_entry(), 0..6),
        muts in prop::collection::vec(mutation(), 0..3),
        mutate_tar in any::<bool>(),
    ) {
        let mut b = tar::Builder::new(vec![]);
        for (name, data, kind) in &entries {
            let mut h = Header::new_gnu();
            put(&mut h.as_old_mut().name, name.as_bytes());
            if *kind == EntryType::Symlink || *kind == EntryType::Link {
                put(&mut h.as_old_mut().linkname, b"../../outside");
            }
            h.set_entry_type(*kind);
            h.set_mode(0o600);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(if *kind == EntryType::Regular { data.len() as u64 } else { 0 });
            h.set_cksum();
            let d: &[u8] = if *kind == EntryType::Regular { data } else { &[] };
            b.append(&h, d).unwrap();
        }
        let mut raw = b.into_inner().unwrap();
        if mutate_tar {
            apply(&mut raw, &muts);
        }
        let mut bytes = zstd::encode_all(&raw[..], 3).unwrap();
        if !mutate_tar {
            apply(&mut bytes, &muts);
        }
        check_bundle(&bytes)?;
    }
}

// ---------------------------------------------------------------------------
// Ansible inventory and group_vars.

fn check_ansible(hosts: &[u8], vars: &[(String, Vec<u8>)]) -> Result<(), TestCaseError> {
    let t = scratch();
    let inv = t.path().join("hosts");
    std::fs::write(&inv, hosts).unwrap();
    let gv = t.path().join("group_vars");
    std::fs::create_dir(&gv).unwrap();
    for (name, data) in vars {
        std::fs::write(gv.join(name), data).unwrap();
    }
    // The reference project keeps usbboot_img in vars/vars.yml.
    let vars_yml = t.path().join("vars/vars.yml");
    std::fs::create_dir(t.path().join("vars")).unwrap();
    std::fs::copy(
        Path::new(SRC).join("tests/ansible/reference/vars/vars.yml"),
        &vars_yml,
    )
    .unwrap();
    let secrets = t.path().join("secrets");
    let before = snapshot(t.path(), &["secrets"]);
    let r = chbuild::import::import_ansible(&chbuild::import::ImportOptions {
        inventory: &inv,
        group_vars: Some(&gv),
        cluster: "clusterhat",
        secrets_dir: &secrets,
        secrets_key: None,
        force: false,
    });
    prop_assert_eq!(
        before,
        snapshot(t.path(), &["secrets"]),
        "written outside the secrets dir"
    );
    if let Err(e) = r {
        let s = format!("{e:#}");
        let named = [&inv, &gv, &vars_yml]
            .iter()
            .any(|p| s.contains(&p.display().to_string()));
        prop_assert!(named, "the error names no input: {s}");
    }
    Ok(())
}

fn ansible_inputs() -> (String, Vec<(String, String)>) {
    let dir = Path::new(SRC).join("tests/ansible/reference");
    let hosts = std::fs::read_to_string(dir.join("hosts")).unwrap();
    let mut vars = vec![];
    for e in std::fs::read_dir(dir.join("group_vars")).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            vars.push((
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            ));
        }
    }
    vars.sort();
    (hosts, vars)
}

proptest! {
    #![proptest_config(config(300, "tests/regressions/prop_ansible.txt"))]

    #[test]
    fn ansible_inputs_import_or_are_refused_by_name(
        hosts_muts in prop::collection::vec(text_mutation(), 0..4),
        vars_muts in prop::collection::vec((0usize..16, text_mutation()), 0..4),
    ) {
        let (hosts, vars) = ansible_inputs();
        let hosts = apply_text(&hosts, &hosts_muts);
        let mut vars: Vec<(String, Vec<u8>)> =
            vars.into_iter().map(|(n, v)| (n, v.into_bytes())).collect();
        for (i, m) in &vars_muts {
            if vars.is_empty() {
                break;
            }
            let k = i % vars.len();
            let text = String::from_utf8_lossy(&vars[k].1).into_owned();
            vars[k].1 = apply_text(&text, std::slice::from_ref(m));
        }
        check_ansible(&hosts, &vars)?;
    }
}
