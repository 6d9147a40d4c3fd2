//! Bases built from Debian packages with mmdebstrap.

mod support;

use chbuild::profile::model::Arch;
use chbuild::profile::{Base, BaseSource, DebianRecipe};
use chbuild::store::Store;
use std::process::Command;

#[test]
fn missing_mmdebstrap_says_what_to_install() {
    let tmp = tempfile::tempdir().unwrap();
    // The default profile builds its base from Debian packages.
    let o = Command::new(env!("CARGO_BIN_EXE_chbuild"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PATH", tmp.path())
        .arg("--store")
        .arg(tmp.path().join("store"))
        .args(["store", "ingest"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("apt-get install mmdebstrap"), "{err}");
}

#[test]
fn extract_recipe_is_built_and_stored_once() {
    if !nix::unistd::geteuid().is_root() {
        support::skip("mmdebstrap's root mode needs root");
        return;
    }
    if chbuild::tools::which("mmdebstrap").is_none() {
        support::skip("mmdebstrap is not installed (apt-get install mmdebstrap)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    // `extract` only unpacks the listed packages: fast, and no emulation
    // is needed for the foreign architecture.
    let base = Base {
        source: BaseSource::Debian(DebianRecipe {
            suite: "bookworm".into(),
            architecture: Arch::Arm64,
            variant: "extract".into(),
            components: vec!["main".into()],
            mirror: None,
            packages: vec!["base-files".into()],
        }),
        architecture: Arch::Arm64,
        boot_dir: "boot/firmware".into(),
    };
    let digest = store
        .digest_of(&base)
        .expect("a recipe's key is known up front");
    let t = store.ensure_base(&base).unwrap();
    assert_eq!(t.digest, digest);
    let version = std::fs::read_to_string(t.root.join("etc/debian_version")).unwrap();
    assert!(version.starts_with("12"), "{version}");
    // Stored once: the second call builds nothing, so it does not even
    // need mmdebstrap (no timing here: a loaded machine would fail it).
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::set_var("PATH", tmp.path());
    let again = store.ensure_base(&base);
    std::env::set_var("PATH", path);
    assert_eq!(again.unwrap().root, t.root, "the second ingest did work");
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].source.contains("debian bookworm arm64 extract"));
}
