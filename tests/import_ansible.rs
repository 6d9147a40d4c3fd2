//! `chbuild import-ansible` on a sample of the reference inventory and
//! variables reproduces a profile equivalent to profiles/clusterhat.toml.

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn import_reproduces_the_default_profile() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("imported.toml");
    let secrets = t.path().join("secrets");
    let o = Command::new(env!("CARGO_BIN_EXE_chbuild"))
        .args(["import-ansible", "--inventory"])
        .arg(Path::new(ROOT).join("tests/ansible/hosts"))
        .arg("--vars")
        .arg(Path::new(ROOT).join("tests/ansible/group_vars"))
        .arg("--output")
        .arg(&out)
        .arg("--secrets")
        .arg(&secrets)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // Every variable without a home is reported, with what to do instead.
    assert!(
        err.contains(
            "not mapped: group_vars/all usbboot_force_reextract (use `chbuild deploy --force`)"
        ),
        "{err}"
    );
    assert!(
        err.contains("not mapped: group_vars/all ansible_python_interpreter"),
        "{err}"
    );
    // The hash went to a private secret file, not into the profile.
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("$6$"), "{text}");
    let hash = secrets.join("password.sha512crypt");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&hash).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let imported = chbuild::profile::parse_profile_with_secrets(&text, &out, &secrets).unwrap();
    let reference =
        chbuild::profile::load_profile(&Path::new(ROOT).join("profiles/clusterhat.toml")).unwrap();
    assert_eq!(imported.nodes.len(), reference.nodes.len());
    assert!(matches!(
        imported.base.source,
        chbuild::profile::BaseSource::Url { .. }
    ));
    for (a, b) in imported.nodes.iter().zip(&reference.nodes) {
        let mut pa = serde_json::to_value(imported.plan(a)).unwrap();
        let mut pb = serde_json::to_value(reference.plan(b)).unwrap();
        // The reference reads its key from a file; the import inlines it.
        for p in [&mut pa, &mut pb] {
            p["user"]["ssh_authorized_keys"] = serde_json::Value::Null;
        }
        assert_eq!(pa, pb, "plan of {} differs", a.name);
    }
    assert_eq!(imported.user.ssh_authorized_keys.len(), 1);
    assert_eq!(imported.features.k3s_server.as_deref(), Some("p5"));
    assert_eq!(imported.aggregates, reference.aggregates);
}

#[test]
fn import_errors_name_the_file() {
    let t = tempfile::tempdir().unwrap();
    let inv = t.path().join("hosts");
    std::fs::write(&inv, "[zerocluster]\nz1 ansible_host=172.19.181.1\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_chbuild"))
        .args(["import-ansible", "--inventory"])
        .arg(&inv)
        .arg("--vars")
        .arg(Path::new(ROOT).join("tests/ansible/group_vars"))
        .arg("--secrets")
        .arg(t.path().join("s"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{}: no host in group [master]", inv.display())),
        "{err}"
    );
}
