//! Shared by every test binary: skipping a test that cannot run here, and
//! comparing output with a snapshot file.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::Path;

/// Whether the tests run in CI (`CI=true`), where everything a test needs
/// is installed and it runs as root.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skip the calling test for `reason`: outside CI it says why and the
/// caller returns; under `CI=true` a check that did not run is a failure,
/// so it fails the test with the reason.
pub fn skip(reason: &str) {
    skip_in(in_ci(), reason)
}

/// `skip` with the CI decision given (so a test can check both ways).
pub fn skip_in(ci: bool, reason: &str) {
    if ci {
        panic!("this test would skip, which fails under CI=true: {reason}");
    }
    eprintln!("SKIP: {reason}");
}

/// The environment variable that rewrites snapshot files instead of
/// comparing with them.
pub const UPDATE_SNAPSHOTS: &str = "CHBUILD_UPDATE_SNAPSHOTS";

/// Compare `actual` with the snapshot file `path` byte for byte; with
/// `CHBUILD_UPDATE_SNAPSHOTS=1` write `actual` there instead. A mismatch
/// panics with the first differing line, so the test shows what changed.
pub fn compare_or_update(path: &Path, actual: &[u8]) {
    if std::env::var(UPDATE_SNAPSHOTS).is_ok_and(|v| v == "1") {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        if std::fs::read(path).ok().as_deref() != Some(actual) {
            std::fs::write(path, actual)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            eprintln!("updated snapshot {}", path.display());
        }
        return;
    }
    let expected = std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "reading snapshot {}: {e} (run with {UPDATE_SNAPSHOTS}=1 to write it)",
            path.display()
        )
    });
    if expected == actual {
        return;
    }
    let (exp, act) = (
        String::from_utf8_lossy(&expected),
        String::from_utf8_lossy(actual),
    );
    let (exp, act): (Vec<&str>, Vec<&str>) = (exp.lines().collect(), act.lines().collect());
    let (n, e, a) = (0..exp.len().max(act.len()))
        .find(|&i| exp.get(i) != act.get(i))
        .map(|i| {
            let line = |v: &Vec<&str>| v.get(i).map_or("<end>".to_string(), |l| l.to_string());
            (i + 1, line(&exp), line(&act))
        })
        .unwrap_or((0, "<same lines>".into(), "<other line endings>".into()));
    panic!(
        "{} differs at line {n}:\n  snapshot: {e:?}\n  actual:   {a:?}\n(run with {UPDATE_SNAPSHOTS}=1 to accept the change, then review the diff)",
        path.display()
    );
}
