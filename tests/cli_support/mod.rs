//! Shared by the tests that drive the `chbuild` binary on the minbase
//! fixture: one store for them all and one secrets directory per test
//! binary (under the target directory, so the base is ingested and its
//! package layers built once), a fixed
//! SOURCE_DATE_EPOCH, and the fixture check that prints why a test skips.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../support/mod.rs"]
mod support;
pub use support::*;

pub const EPOCH: &str = "1700000000";

pub const MINBASE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures/debian-bookworm-arm64-minbase.tar.xz"
);

/// A test profile under tests/profiles.
pub fn profile(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/profiles")
        .join(name)
}

/// True when the minbase fixture is there; otherwise skips the test
/// (which fails it under CI).
pub fn fixture_present() -> bool {
    let p = Path::new(MINBASE);
    if !p.exists() {
        skip(&format!("fixture {} is missing", p.display()));
    }
    p.exists()
}

/// One store for every test binary that drives chbuild on the fixtures:
/// the bases are ingested and their package layers (real Debian packages,
/// installed under emulation) built once for the whole suite.
pub fn shared_store() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("shared-store")
}

/// `chbuild` with a profile, the shared store and a secrets directory
/// named after the test binary.
pub struct Chbuild {
    pub profile: PathBuf,
    pub store: PathBuf,
    pub secrets: PathBuf,
}

impl Chbuild {
    pub fn new(test: &str, profile_file: &str) -> Chbuild {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
        std::fs::create_dir_all(&root).unwrap();
        Chbuild {
            profile: profile(profile_file),
            store: shared_store(),
            secrets: root.join("secrets"),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_chbuild"));
        c.args(args)
            .arg("--profile")
            .arg(&self.profile)
            .arg("--store")
            .arg(&self.store)
            .arg("--secrets")
            .arg(&self.secrets)
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .env("NO_COLOR", "1")
            .env_remove("CHBUILD_PASSWORD_HASH");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running chbuild")
    }

    /// Run and assert success, showing chbuild's stderr otherwise.
    pub fn ok(&self, args: &[&str]) -> Output {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "chbuild {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    /// `secrets init`, once per test binary.
    pub fn init_secrets(&self) {
        static INIT: std::sync::Once = std::sync::Once::new();
        INIT.call_once(|| {
            self.ok(&["secrets", "init"]);
        });
    }
}
