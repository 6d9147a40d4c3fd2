//! Every file the roles and overlays write into each node of the default
//! profile, built on the Pi fixture with the fixed test-only secrets of
//! `tests/snapshots/secrets/`, compared byte for byte with
//! `tests/snapshots/roles/<node>/`: `_index` lists each written path with
//! its type, mode and owner (and a sha256 for binary files), `files/`
//! holds the text files. A template change shows as a reviewable diff;
//! `CHBUILD_UPDATE_SNAPSHOTS=1` accepts it.

mod common;

use common::{build_with_secrets, extracted, PI_FIXTURE};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const NODES: [&str; 9] = ["z1", "z2", "z3", "z4", "p1", "p2", "p3", "p4", "p5"];

/// The node's written files as snapshot files: `_index` and `files/...`.
fn node_snapshot(tree: &std::path::Path, written: &[PathBuf]) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut index = String::new();
    for rel in written {
        let p = tree.join(rel);
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let head = format!("{:04o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid());
        if m.file_type().is_symlink() {
            let target = std::fs::read_link(&p).unwrap();
            index.push_str(&format!(
                "{head} link {} -> {}\n",
                rel.display(),
                target.display()
            ));
            continue;
        }
        let data = std::fs::read(&p).unwrap();
        if std::str::from_utf8(&data).is_ok() && !data.contains(&0) {
            index.push_str(&format!("{head} file {}\n", rel.display()));
            out.insert(PathBuf::from("files").join(rel), data);
        } else {
            index.push_str(&format!(
                "{head} file {} sha256={}\n",
                rel.display(),
                hex::encode(Sha256::digest(&data))
            ));
        }
    }
    out.insert(PathBuf::from("_index"), index.into_bytes());
    out
}

#[test]
fn rendered_role_files_match_the_snapshots() {
    let Some(base) = extracted(PI_FIXTURE, "pi") else {
        return;
    };
    // The shadow file's "last changed" day and every template's
    // `source_date_epoch` come from here; the hash from the fixed secrets.
    std::env::set_var("SOURCE_DATE_EPOCH", "1700000000");
    std::env::remove_var("CHBUILD_PASSWORD_HASH");
    let snapshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let secrets = snapshots.join("secrets");
    let built = build_with_secrets(&base, "snapshot", &NODES, Some(&secrets), |_, _| {});
    for node in NODES {
        let snap = node_snapshot(built.tree(node), &built.written[node]);
        common::compare_or_update_dir(&snapshots.join("roles").join(node), &snap);
    }
}
