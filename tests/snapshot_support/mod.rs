//! Snapshot files compared byte for byte: a test renders what the product
//! produces (rendered role files, `--help` text) and compares it with the
//! files committed under `tests/snapshots/`, so any change shows up as a
//! reviewable diff. `CHBUILD_UPDATE_SNAPSHOTS=1` rewrites them instead.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Root of the committed snapshots.
pub fn snapshots_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots")
}

/// Whether the run rewrites snapshots rather than comparing them.
pub fn updating() -> bool {
    std::env::var("CHBUILD_UPDATE_SNAPSHOTS").as_deref() == Ok("1")
}

fn first_difference(expected: &[u8], actual: &[u8]) -> String {
    let (e, a) = (
        String::from_utf8_lossy(expected),
        String::from_utf8_lossy(actual),
    );
    let (el, al): (Vec<&str>, Vec<&str>) = (e.lines().collect(), a.lines().collect());
    for i in 0..el.len().max(al.len()) {
        if el.get(i) != al.get(i) {
            return format!(
                "line {}:\n  snapshot: {:?}\n  actual:   {:?}",
                i + 1,
                el.get(i).unwrap_or(&"<end>"),
                al.get(i).unwrap_or(&"<end>")
            );
        }
    }
    "line endings or the final newline differ".into()
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Compare one snapshot file (or rewrite it when updating).
pub fn assert_file(path: &Path, actual: &[u8]) {
    if updating() {
        write(path, actual);
        return;
    }
    match std::fs::read(path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => panic!(
            "{} differs, {}\n(run with CHBUILD_UPDATE_SNAPSHOTS=1 to accept the change)",
            path.display(),
            first_difference(&expected, actual)
        ),
        Err(e) => panic!(
            "snapshot {} is missing ({e}); run with CHBUILD_UPDATE_SNAPSHOTS=1 to create it",
            path.display()
        ),
    }
}

fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(dir).unwrap().to_path_buf(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Compare a whole directory of snapshots: every file must match, none may
/// be missing or left over. When updating, the directory is replaced.
pub fn assert_dir(dir: &Path, actual: &BTreeMap<PathBuf, Vec<u8>>) {
    if updating() {
        let _ = std::fs::remove_dir_all(dir);
        for (rel, data) in actual {
            write(&dir.join(rel), data);
        }
        return;
    }
    let expected = files_under(dir);
    let mut problems = vec![];
    for (rel, data) in actual {
        match expected.get(rel) {
            None => problems.push(format!("{}: not in the snapshot", rel.display())),
            Some(e) if e != data => problems.push(format!(
                "{}: differs, {}",
                rel.display(),
                first_difference(e, data)
            )),
            Some(_) => {}
        }
    }
    for rel in expected.keys().filter(|r| !actual.contains_key(*r)) {
        problems.push(format!(
            "{}: in the snapshot, no longer produced",
            rel.display()
        ));
    }
    assert!(
        problems.is_empty(),
        "snapshots under {} differ:\n{}\n(run with CHBUILD_UPDATE_SNAPSHOTS=1 to accept the change)",
        dir.display(),
        problems.join("\n")
    );
}
