//! `chbuild import-ansible` on the reference Ansible project's own layout
//! (tests/ansible/reference, written from the variables its README
//! documents): the profile loads, its features are on as set, and its node
//! plans equal those of the hand-written tests/ansible/expected.toml.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const HASH: &str = "$6$chbuildtest$8y7sJ0W4c5VvJ0Wq6ovp1m2kq2pX1rH7M5vO3m0QkQx0yq7wV1Xyq0c3y8m4rN5p0q1s2t3u4v5w6x7y8z9A0B";

fn reference() -> PathBuf {
    Path::new(ROOT).join("tests/ansible/reference")
}

fn chbuild(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chbuild"))
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("CHBUILD_SECRETS")
        .env_remove("CHBUILD_PROFILE")
        .output()
        .expect("running chbuild")
}

/// import-ansible with the inventory, writing `out`, secrets in `secrets`.
fn import(inventory: &Path, out: &Path, secrets: &Path, extra: &[&str]) -> Output {
    let mut a: Vec<&std::ffi::OsStr> = vec![
        "import-ansible".as_ref(),
        "--inventory".as_ref(),
        inventory.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--secrets".as_ref(),
        secrets.as_os_str(),
    ];
    a.extend(extra.iter().map(|e| std::ffi::OsStr::new(*e)));
    chbuild(&a)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Every node's plan, as JSON, by name.
fn plans(p: &chbuild::profile::Profile) -> Vec<serde_json::Value> {
    p.nodes
        .iter()
        .map(|n| serde_json::to_value(p.plan(n)).unwrap())
        .collect()
}

fn expected(secrets: &Path) -> chbuild::profile::Profile {
    let path = Path::new(ROOT).join("tests/ansible/expected.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    chbuild::profile::parse_profile_with_secrets(&text, &path, secrets).unwrap()
}

#[test]
fn reference_layout_imports_with_every_variable_accounted_for() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("project/profiles/mine.toml");
    let secrets = t.path().join("keys");
    let o = import(&reference().join("hosts"), &out, &secrets, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");

    // Every documented variable is said to have become something.
    for k in chbuild::import::mapping::KNOWN {
        let said = err.lines().any(|l| {
            l.contains(&format!(" {} -> ", k.name)) || l.contains(&format!(" {} (", k.name))
        });
        assert!(said, "nothing said about {}:\n{err}", k.name);
    }
    assert!(err.contains("vars/vars.yml usbboot_wait_for_ssh -> deploy: `chbuild deploy` waits for SSH by default"), "{err}");
    assert!(
        err.contains("group_vars/all slurmstack_enable -> features.slurm"),
        "{err}"
    );
    assert!(
        err.contains(
            "not mapped: group_vars/all ansible_python_interpreter (Ansible connection setting"
        ),
        "{err}"
    );
    assert!(err.contains("not mapped: vars/vars.yml usbboot_download_dir (the archive is downloaded once on the build machine"), "{err}");
    // Host variables say which profile key they became.
    assert!(
        err.contains(
            "host_vars/p5.yml (p5) rack_position -> [[node]] overrides.vars.rack_position"
        ),
        "{err}"
    );
    // The empty checksum loads, loudly.
    assert!(err.contains("WITHOUT verification"), "{err}");

    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("$6$"), "{text}");
    assert!(text.contains("checksum = \"unverified\""), "{text}");
    let hash = secrets.join("password.sha512crypt");
    assert_eq!(std::fs::read_to_string(&hash).unwrap(), format!("{HASH}\n"));
    assert_eq!(
        std::fs::metadata(&hash).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The written profile finds the --secrets directory by itself.
    let imported = chbuild::profile::load_profile(&out).unwrap();
    assert_eq!(imported.secrets_dir, secrets);
    assert!(imported.features.slurm && imported.features.docker && imported.features.k3s);
    assert!(!imported.features.docker_on_zeros && !imported.features.slurm_include_picluster);
    assert_eq!(imported.features.k3s_server.as_deref(), Some("p5"));
    assert_eq!(
        imported.features.k3s_version.as_deref(),
        Some("v1.36.4+k3s1")
    );
    assert!(matches!(
        imported.base.source,
        chbuild::profile::BaseSource::Url { checksum: None, .. }
    ));
    let want = expected(&secrets);
    assert_eq!(imported.aggregates, want.aggregates);
    assert_eq!(plans(&imported), plans(&want));

    // `check` loads it too, and says the base is unverified.
    let o = chbuild(&["check".as_ref(), "-p".as_ref(), out.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("UNVERIFIED"));
}

#[test]
fn yaml_inventory_imports_the_same_cluster() {
    let t = tempfile::tempdir().unwrap();
    let project = t.path().join("ansible");
    copy_tree(&reference(), &project);
    std::fs::remove_file(project.join("hosts")).unwrap();
    std::fs::write(
        project.join("hosts.yml"),
        "all:\n  vars:\n    ansible_user: pi\n  children:\n    master:\n      hosts:\n        clusterhat:\n          ansible_host: 172.16.2.200\n    zerocluster:\n      hosts:\n        z[1:4]:\n    picluster:\n      hosts:\n        p1: {ansible_host: 172.16.2.201}\n        p2: {ansible_host: 172.16.2.202}\n        p3: {ansible_host: 172.16.2.203}\n        p4: {ansible_host: 172.16.2.204}\n    management:\n      hosts:\n        p5: {ansible_host: 172.16.2.205}\n    munge:\n      children: {master: , zerocluster: , picluster: , management: }\n    slurm:\n      children: {master: , zerocluster: , picluster: }\n    containers:\n      children: {picluster: , management: }\n",
    )
    .unwrap();
    let out = t.path().join("profiles/mine.toml");
    let secrets = t.path().join("secrets/clusterhat");
    let o = import(&project.join("hosts.yml"), &out, &secrets, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let imported = chbuild::profile::load_profile(&out).unwrap();
    // Inside the project, the secrets directory is written relative to it.
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .contains("dir = \"secrets/clusterhat\""));
    assert_eq!(plans(&imported), plans(&expected(&secrets)));
}

#[test]
fn an_existing_password_hash_is_kept_without_force() {
    let t = tempfile::tempdir().unwrap();
    let secrets = t.path().join("s");
    std::fs::create_dir(&secrets).unwrap();
    let hash = secrets.join("password.sha512crypt");
    std::fs::write(&hash, "$6$mine$kept\n").unwrap();
    std::fs::set_permissions(&hash, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = t.path().join("p/x.toml");
    let o = import(&reference().join("hosts"), &out, &secrets, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(std::fs::read_to_string(&hash).unwrap(), "$6$mine$kept\n");
    assert!(err.contains("use --force to replace it"), "{err}");
    let o = import(&reference().join("hosts"), &out, &secrets, &["--force"]);
    assert!(o.status.success());
    assert_eq!(std::fs::read_to_string(&hash).unwrap(), format!("{HASH}\n"));
}

#[test]
fn vault_encrypted_variables_say_how_to_decrypt() {
    let t = tempfile::tempdir().unwrap();
    let project = t.path().join("ansible");
    copy_tree(&reference(), &project);
    let all = project.join("group_vars/all");
    std::fs::write(&all, "$ANSIBLE_VAULT;1.1;AES256\n3961386562\n").unwrap();
    let o = import(
        &project.join("hosts"),
        &t.path().join("p/x.toml"),
        &t.path().join("s"),
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{} is encrypted with Ansible Vault",
            all.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("ansible-vault decrypt {}", all.display())),
        "{err}"
    );
    assert!(!t.path().join("p/x.toml").exists());
}

#[test]
fn a_lan_host_without_address_is_named() {
    let t = tempfile::tempdir().unwrap();
    let project = t.path().join("ansible");
    copy_tree(&reference(), &project);
    let hosts = project.join("hosts");
    let text = std::fs::read_to_string(&hosts).unwrap();
    std::fs::write(&hosts, text.replace("p3 ansible_host=172.16.2.203", "p3")).unwrap();
    let o = import(&hosts, &t.path().join("p/x.toml"), &t.path().join("s"), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("host p3 (picluster) has no ansible_host and no ClusterHAT default address"),
        "{err}"
    );
}

#[test]
fn import_errors_name_the_file() {
    let t = tempfile::tempdir().unwrap();
    let inv = t.path().join("hosts");
    std::fs::write(&inv, "[zerocluster]\nz1 ansible_host=172.19.181.1\n").unwrap();
    let o = import(&inv, &t.path().join("x.toml"), &t.path().join("s"), &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{}: no host in group [master]", inv.display())),
        "{err}"
    );
}
