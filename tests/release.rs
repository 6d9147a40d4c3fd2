//! `chbuild release`: the full artifact set, byte-identical when built
//! twice, verified by `chbuild verify`; with `--public` no secret ships and
//! the secrets bundle puts them back at deploy time.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
mod cli_support;

use cli_support::Chbuild;
use std::path::Path;
use std::process::{Command, Output};

fn chbuild(args: &[&str]) -> Output {
    Chbuild::new("release", "release.toml").run(args)
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn tar_list(tarball: &Path) -> String {
    let o = Command::new("tar")
        .args(["--zstd", "-tvf"])
        .arg(tarball)
        .output()
        .unwrap();
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn public_release_is_complete_reproducible_and_secret_free() {
    if !cli_support::fixture_present() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    ok(chbuild(&["secrets", "init"]));
    ok(chbuild(&[
        "release",
        "--public",
        "--output",
        a.to_str().unwrap(),
    ]));
    ok(chbuild(&[
        "release",
        "--public",
        "--output",
        b.to_str().unwrap(),
    ]));

    let ca = contents(&a);
    let names: Vec<&str> = ca.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "SHA256SUMS",
            "known_hosts",
            "manifest.json",
            "p5.img.bmap",
            "p5.img.zst",
            "p5.tar.zst",
            "z1.tar.zst"
        ],
        "the release holds exactly the artifacts"
    );
    assert!(
        ca == contents(&b),
        "two releases from the same inputs differ"
    );
    ok(chbuild(&["verify", a.to_str().unwrap()]));

    // Nothing secret ships: no munge key, no host private key, a locked
    // password, no userconf.txt.
    for tarball in ["z1.tar.zst", "p5.tar.zst"] {
        let list = tar_list(&a.join(tarball));
        for secret in [
            "etc/munge/munge.key",
            "etc/ssh/ssh_host_ed25519_key\n",
            "userconf.txt",
            "etc/rancher/k3s/config.yaml",
        ] {
            assert!(!list.contains(secret), "{tarball} ships {secret}");
        }
        let o = Command::new("tar")
            .args(["--zstd", "-xOf"])
            .arg(a.join(tarball))
            .arg("etc/shadow")
            .output()
            .unwrap();
        let shadow = String::from_utf8_lossy(&o.stdout);
        assert!(shadow.lines().any(|l| l.starts_with("pi:!:")), "{shadow}");
        assert!(
            !shadow.contains("$6$"),
            "a password hash ships in {tarball}"
        );
    }
    // The bundle sits beside the release, private.
    let bundle = t.path().join("a.secrets.tar.zst");
    assert_eq!(
        std::fs::metadata(&bundle).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let list = tar_list(&bundle);
    assert!(
        list.contains("z1/etc/munge/munge.key") && list.contains("p5/etc/ssh/ssh_host_ed25519_key"),
        "{list}"
    );

    // Deploying the public tarball with the bundle gives the node its secrets.
    if nix::unistd::geteuid().is_root() {
        let root = t.path().join("root");
        ok(chbuild(&[
            "deploy",
            "z1",
            "--bundle",
            a.to_str().unwrap(),
            "--secrets-bundle",
            bundle.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
            "--no-power",
        ]));
        let p1 = root.join("var/lib/clusterctrl/nfs/p1");
        let key = std::fs::metadata(p1.join("etc/munge/munge.key")).unwrap();
        assert_eq!(key.len(), 1024);
        assert_eq!(key.permissions().mode() & 0o777, 0o400);
        let shadow = std::fs::read_to_string(p1.join("etc/shadow")).unwrap();
        assert!(
            shadow.lines().any(|l| l.starts_with("pi:$6$")),
            "password hash restored"
        );
    } else {
        cli_support::skip("deploy with the secrets bundle needs root (runs in CI)");
    }
}
