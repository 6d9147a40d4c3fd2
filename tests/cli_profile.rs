//! `chbuild check`, `show`, `secrets init` and profile validation, driven
//! through the real binary on real (good and bad) profiles.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DEFAULT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/clusterhat.toml");

fn chbuild(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chbuild"))
        .args(args)
        .env_remove("CHBUILD_PASSWORD_HASH")
        .env("NO_COLOR", "1")
        .output()
        .expect("running chbuild")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Write the default profile with one edit into a temp dir; return its path.
fn variant(dir: &Path, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(DEFAULT).unwrap();
    assert!(text.contains(from), "default profile lacks {from:?}");
    let p = dir.join("bad.toml");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    p
}

/// The 1-based line of the first occurrence of `needle` in the file.
fn line_of(path: &Path, needle: &str) -> usize {
    line_of_nth(path, needle, 0)
}

/// The 1-based line of the `n`th (0-based) occurrence of `needle`.
fn line_of_nth(path: &Path, needle: &str, n: usize) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(n)
        .expect("needle")
        .0
        + 1
}

/// Assert that `check` refuses the profile with exit code 2 and a message
/// naming the file, the line holding `at`, and `key`.
fn assert_refused(from: &str, to: &str, at: &str, key: &str, message: &str) {
    let dir = tempfile::tempdir().unwrap();
    let p = variant(dir.path(), from, to);
    let o = chbuild(&["check", "--profile", p.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    let (at, nth) = match at.strip_suffix("#2") {
        Some(a) => (a, 1),
        None => (at, 0),
    };
    let line = line_of_nth(&p, at, nth);
    let want = format!("{}:{line}:", p.display());
    assert!(err.contains(&want), "expected {want:?} in {err:?}");
    assert!(err.contains(key), "expected key {key:?} in {err:?}");
    assert!(err.contains(message), "expected {message:?} in {err:?}");
}

#[test]
fn check_prints_the_full_plan() {
    let o = chbuild(&["check", "--profile", DEFAULT]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    for node in ["z1", "z2", "z3", "z4", "p1", "p2", "p3", "p4", "p5"] {
        assert!(
            out.contains(&format!("\n{node} [")),
            "{node} missing from plan:\n{out}"
        );
    }
    assert!(out.contains("usbboot p1"));
    assert!(out.contains("k3s-server"));
    assert!(out.contains("nfs-server"));
    assert!(out.contains("controller: clusterhat (controller, p0)"));
    assert!(out.contains("p5.img"));

    let o = chbuild(&["check", "--json", "--profile", DEFAULT]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 9);
    let p5 = nodes.iter().find(|n| n["name"] == "p5").unwrap();
    let feats: Vec<&str> = p5["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        feats.contains(&"k3s-server") && feats.contains(&"nfs-server") && feats.contains(&"docker"),
        "{feats:?}"
    );
    let z1 = nodes.iter().find(|n| n["name"] == "z1").unwrap();
    assert!(
        !z1["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "docker"),
        "no Docker on Zeros by default"
    );
}

#[test]
fn show_prints_resolved_variables() {
    let o = chbuild(&["show", "z3", "--json", "--profile", DEFAULT]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["hostname"], "z3");
    assert_eq!(v["usbboot"]["nfs_dir"], "/var/lib/clusterctrl/nfs/p3");
    assert!(v["usbboot"]["cmdline_nfsroot"]
        .as_str()
        .unwrap()
        .ends_with("ip=172.19.180.3:172.19.180.254::255.255.255.0:p3:usb0.10:static"));
    assert_eq!(v["nfs_server_address"], "172.16.2.205");
    let pk: Vec<&str> = v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        pk.contains(&"munge") && pk.contains(&"slurmd"),
        "base + extra: {pk:?}"
    );

    let o = chbuild(&["show", "p2", "--profile", DEFAULT]);
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("zero_route.via = 172.16.2.200"), "{out}");
    assert!(
        out.contains("k3s_server_url = https://172.16.2.205:6443"),
        "{out}"
    );

    let o = chbuild(&["show", "nope", "--profile", DEFAULT]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown node `nope`"));
}

#[test]
fn unknown_keys_are_errors() {
    assert_refused(
        "sudo = true",
        "sudo = true\nshell = \"zsh\"",
        "shell = ",
        "",
        "unknown field `shell`",
    );
}

#[test]
fn duplicate_node_names_are_refused() {
    assert_refused(
        "name = \"z2\"",
        "name = \"z1\"",
        "name = \"z1\"#2",
        "node z1: name",
        "duplicate node name",
    );
}

#[test]
fn duplicate_hostnames_are_refused() {
    // A Zero called p1 by ClusterCTRL must not collide with the LAN Pi p1.
    assert_refused(
        "slot = 1\n",
        "slot = 1\nhostname = \"p1\"\n",
        "name = \"p1\"#2",
        "node p1: hostname",
        "host name `p1` is already used by node z1",
    );
}

#[test]
fn address_outside_network_is_refused() {
    assert_refused(
        "address = \"172.19.181.2\"",
        "address = \"172.16.2.99\"",
        "172.16.2.99",
        "node z2: address",
        "outside the node's network 172.19.181.0/24",
    );
}

#[test]
fn unknown_group_is_refused() {
    assert_refused(
        "groups = [\"picluster\"]",
        "groups = [\"piclustr\"]",
        "piclustr",
        "node p1: groups",
        "group `piclustr` does not exist",
    );
    assert_refused(
        "containers = [\"picluster\", \"management\"]",
        "containers = [\"picluster\", \"mgmt\"]",
        "\"mgmt\"",
        "groups.containers",
        "group `mgmt` does not exist",
    );
}

#[test]
fn unknown_k3s_server_is_refused() {
    assert_refused(
        "k3s_server = \"p5\"",
        "k3s_server = \"p9\"",
        "k3s_server",
        "features.k3s_server",
        "`p9` is neither a node nor the controller",
    );
}

#[test]
fn features_a_model_cannot_run_are_refused() {
    // Docker on a first-generation Zero (ARMv6) with an armhf base.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(DEFAULT)
        .unwrap()
        .replace("architecture = \"arm64\"", "architecture = \"armhf\"")
        .replace("docker_on_zeros = false", "docker_on_zeros = true")
        .replacen("model = \"zero2\"", "model = \"zero\"", 1);
    let p = dir.path().join("armv6.toml");
    std::fs::write(&p, text).unwrap();
    let o = chbuild(&["check", "--profile", p.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let line = line_of(&p, "model = \"zero\"");
    assert!(err.contains(&format!("{}:{line}:", p.display())), "{err}");
    assert!(
        err.contains("node z1: model: Docker needs ARMv7 or newer, but a zero is ARMv6"),
        "{err}"
    );

    // And an arm64 base cannot boot a first-generation Zero at all.
    assert_refused(
        "model = \"zero2\"",
        "model = \"zero\"",
        "model = \"zero\"",
        "node z1: model",
        "cannot boot a arm64 base",
    );
}

#[test]
fn world_readable_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let hash = secrets.join("password.sha512crypt");
    std::fs::write(&hash, "$6$salt$abc\n").unwrap();
    std::fs::set_permissions(&hash, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = chbuild(&[
        "check",
        "--profile",
        DEFAULT,
        "--secrets",
        secrets.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let line = line_of(Path::new(DEFAULT), "password_hash_file");
    assert!(err.contains(&format!("{DEFAULT}:{line}:")), "{err}");
    assert!(err.contains("user.password_hash_file"), "{err}");
    assert!(err.contains("mode 0644"), "{err}");
}

#[test]
fn syntax_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = variant(dir.path(), "[features]", "[features\n");
    let o = chbuild(&["check", "--profile", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let line = line_of(&p, "[features");
    assert!(
        stderr(&o).contains(&format!("{}:{line}:", p.display())),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_selection_is_a_usage_error() {
    let o = chbuild(&["image", "z4..z1", "--profile", DEFAULT]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("range `z4..z1` is empty"));
    let o = chbuild(&["image", "z9", "--profile", DEFAULT]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown node `z9`"));
}

#[test]
fn missing_profile_is_bad_usage_naming_the_path() {
    // Bad usage or profile is exit 2, as the README says.
    let o = chbuild(&["check", "--profile", "/nonexistent/p.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no profile at /nonexistent/p.toml"));
}

/// Every command path: `[]` for chbuild itself, `["store", "gc"]`...
fn command_paths() -> Vec<Vec<String>> {
    fn walk(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands() {
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            walk(sub, p, out);
        }
        out.push(path);
    }
    let mut out = vec![];
    walk(
        &<chbuild::cli::Cli as clap::CommandFactory>::command(),
        vec![],
        &mut out,
    );
    out.sort();
    out
}

/// `--help` of chbuild and of every verb, byte for byte as users see it,
/// kept under tests/snapshots/help/ (CHBUILD_UPDATE_SNAPSHOTS=1 rewrites
/// them), so a change of the command line shows as a reviewable diff.
#[test]
fn help_of_every_verb_matches_its_snapshot() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/help");
    let mut expected = vec![];
    for path in command_paths() {
        let name = if path.is_empty() {
            "chbuild.txt".to_string()
        } else {
            format!("chbuild-{}.txt", path.join("-"))
        };
        let o = Command::new(env!("CARGO_BIN_EXE_chbuild"))
            .args(&path)
            .arg("--help")
            .env_remove("CHBUILD_PROFILE")
            .env_remove("CHBUILD_SECRETS")
            .env_remove("CHBUILD_STORE")
            .env_remove("COLUMNS")
            .env("NO_COLOR", "1")
            .output()
            .expect("running chbuild");
        assert!(o.status.success(), "{path:?} --help: {}", stderr(&o));
        let out = String::from_utf8(o.stdout.clone()).unwrap();
        assert!(out.contains("Usage: chbuild"), "{path:?}: {out}");
        for l in out.lines() {
            assert!(
                l.chars().count() <= 80,
                "{path:?} help line over 80 columns: {l:?}"
            );
        }
        support::compare_or_update(&dir.join(&name), &o.stdout);
        expected.push(name);
    }
    // A verb that is gone leaves no snapshot behind.
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    expected.sort();
    assert_eq!(found, expected, "snapshots in {}", dir.display());
    let o = chbuild(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}

/// Under CI a test that would skip fails, with its reason.
#[test]
#[should_panic(expected = "fails under CI=true: the fixture is missing")]
fn a_skip_fails_under_ci() {
    support::skip_in(false, "outside CI this only prints");
    support::skip_in(true, "the fixture is missing");
}

#[test]
fn secrets_init_makes_private_files_and_keeps_existing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("s");
    let args = [
        "secrets",
        "init",
        "--profile",
        DEFAULT,
        "--secrets",
        s.to_str().unwrap(),
    ];
    let o = chbuild(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&s), 0o700);
    let munge = s.join("munge.key");
    assert_eq!(std::fs::metadata(&munge).unwrap().len(), 1024);
    for f in [
        "munge.key",
        "k3s-token",
        "admin_ed25519",
        "password",
        "password.sha512crypt",
    ] {
        assert_eq!(mode(&s.join(f)), 0o600, "{f}");
    }
    for node in ["z1", "z4", "p5"] {
        let key = s.join("hostkeys").join(node).join("ssh_host_ed25519_key");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(key.parent().unwrap()), 0o700);
        let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        assert!(pubkey.starts_with("ssh-ed25519 "), "{pubkey}");
        // ssh-keygen agrees it is a valid private key, when installed.
        if let Ok(o) = Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&key)
            .output()
        {
            assert!(o.status.success(), "{}", stderr(&o));
            assert_eq!(
                String::from_utf8_lossy(&o.stdout).split_whitespace().nth(1),
                pubkey.split_whitespace().nth(1)
            );
        }
    }
    let hash = std::fs::read_to_string(s.join("password.sha512crypt")).unwrap();
    assert!(hash.starts_with("$6$"), "sha512crypt");
    // No secret content on the terminal.
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(!all.contains(hash.trim()));

    // A second run keeps everything; --force replaces.
    let before = std::fs::read(&munge).unwrap();
    let o = chbuild(&args);
    assert!(o.status.success());
    assert!(stderr(&o).contains("kept existing"));
    assert_eq!(std::fs::read(&munge).unwrap(), before);
    let mut forced = args.to_vec();
    forced.push("--force");
    assert!(chbuild(&forced).status.success());
    assert_ne!(std::fs::read(&munge).unwrap(), before);
}

#[test]
fn completions_and_man_pages_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let o = chbuild(&["completions", shell]);
        assert!(o.status.success(), "{shell}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("chbuild") && out.contains("deploy"),
            "{shell}: {out}"
        );
    }
    if Command::new("bash").arg("--version").output().is_ok() {
        let o = chbuild(&["completions", "bash"]);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.bash");
        std::fs::write(&f, &o.stdout).unwrap();
        let check = Command::new("bash").arg("-n").arg(&f).output().unwrap();
        assert!(check.status.success(), "bash -n: {}", stderr(&check));
    }
    let dir = tempfile::tempdir().unwrap();
    let o = chbuild(&["man", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let page = std::fs::read_to_string(dir.path().join("chbuild-image.1")).unwrap();
    assert!(page.contains(".TH chbuild-image"), "{page}");
    // man(1) renders it without warnings, when installed.
    if let Ok(o) = Command::new("man")
        .arg("--warnings")
        .arg("-l")
        .arg(dir.path().join("chbuild.1"))
        .env("MANWIDTH", "80")
        .output()
    {
        if o.status.success() {
            assert!(String::from_utf8_lossy(&o.stdout).contains("deploy"));
        }
    }
}

#[test]
fn duplicate_addresses_are_refused() {
    assert_refused(
        "address = \"172.19.181.2\"",
        "address = \"172.19.181.1\"",
        "address = \"172.19.181.1\"#2",
        "node z2: address",
        "172.19.181.1 is already used by node z1",
    );
    assert_refused(
        "address = \"172.16.2.201\"",
        "address = \"172.16.2.200\"",
        "address = \"172.16.2.200\"#2",
        "node p1: address",
        "172.16.2.200 is already used by the controller (lan_address)",
    );
}

#[test]
fn bad_lan_settings_are_refused() {
    assert_refused(
        "lan_gateway = \"172.16.2.1\"",
        "lan_gateway = \"10.0.0.1\"",
        "lan_gateway",
        "cluster.lan_gateway",
        "10.0.0.1 is not a host of the LAN 172.16.2.0/24",
    );
    assert_refused(
        "lan_gateway = \"172.16.2.1\"",
        "lan_gateway = \"172.16.2.255\"",
        "lan_gateway",
        "cluster.lan_gateway",
        "is not a host of the LAN",
    );
    assert_refused(
        "lan_dns = [\"172.16.2.1\"]",
        "lan_dns = [\"172.16.2.1\", \"dns.example\"]",
        "lan_dns",
        "cluster.lan_dns",
        "`dns.example` is not an IPv4 address",
    );
    assert_refused(
        "lan_dns = [\"172.16.2.1\"]",
        "lan_dns = []",
        "lan_dns",
        "cluster.lan_dns",
        "name at least one DNS server",
    );
    assert_refused(
        "lan_interface = \"eth0\"",
        "lan_interface = \"../eth0\"",
        "lan_interface",
        "cluster.lan_interface",
        "is not a network interface name",
    );
    assert_refused(
        "address = \"172.16.2.201\"",
        "address = \"172.16.2.1\"",
        "address = \"172.16.2.1\"",
        "node p1: address",
        "172.16.2.1 is already used by the LAN gateway",
    );
}

#[test]
fn dhcp_is_for_sd_nodes_that_serve_nothing() {
    assert_refused(
        "address = \"172.19.181.2\"",
        "address = \"dhcp\"",
        // The first is the profile's comment about DHCP.
        "address = \"dhcp\"#2",
        "node z2: address",
        "a usbboot Zero cannot use `dhcp`",
    );
    // p5 serves k3s (checked first) and NFS: its clients need an address.
    assert_refused(
        "address = \"172.16.2.205\"",
        "address = \"dhcp\"",
        "k3s_server = \"p5\"",
        "features.k3s_server",
        "node `p5` takes its address by DHCP",
    );

    // A DHCP LAN Pi is fine: planned by name.
    let dir = tempfile::tempdir().unwrap();
    let p = variant(
        dir.path(),
        "address = \"172.16.2.204\"",
        "address = \"dhcp\"",
    );
    let o = chbuild(&["check", "--profile", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("\np4 [sd] pi4 dhcp hostname=p4"), "{out}");
    assert!(out.contains("  lan:       eth0 dhcp\n"), "{out}");
    assert!(
        out.contains("  lan:       eth0 172.16.2.205/24 gateway 172.16.2.1 dns 172.16.2.1\n"),
        "{out}"
    );
    let o = chbuild(&["show", "p4", "--json", "--profile", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["address"], serde_json::Value::Null);
    assert_eq!(v["lan"]["dhcp"], true);
    assert_eq!(v["lan"]["interface"], "eth0");
    assert!(v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| !h["names"].to_string().contains("\"p4\"")));
    let o = chbuild(&["show", "p5", "--json", "--profile", p.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["lan"]["address"], "172.16.2.205");
    assert_eq!(v["lan"]["gateway"], "172.16.2.1");
    assert_eq!(v["lan"]["dns"], serde_json::json!(["172.16.2.1"]));
}

#[test]
fn the_lan_defaults_are_the_networks_first_host() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(DEFAULT)
        .unwrap()
        .replacen("lan_gateway = \"172.16.2.1\"\n", "", 1)
        .replacen("lan_dns = [\"172.16.2.1\"]\n", "", 1)
        .replacen("lan_interface = \"eth0\"\n", "", 1);
    assert!(!text.contains("lan_gateway"));
    let p = dir.path().join("defaults.toml");
    std::fs::write(&p, text).unwrap();
    let o = chbuild(&["show", "p1", "--json", "--profile", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["lan"]["gateway"], "172.16.2.1");
    assert_eq!(v["lan"]["dns"], serde_json::json!(["172.16.2.1"]));
    assert_eq!(v["lan"]["interface"], "eth0");
    assert_eq!(v["lan"]["prefix"], 24);
}

#[test]
fn k3s_is_pinned_or_bundled() {
    assert_refused(
        "k3s_sha256 = \"c920706346d5ad4e5cd3c7bf1bb09ce71ebe07fec829e513e40f1caf98aed8bb\"\n",
        "",
        "k3s_version",
        "features.k3s_sha256",
        "k3s without an air-gap bundle needs `k3s_sha256`",
    );
    assert_refused(
        "k3s_version = \"v1.36.4+k3s1\"\n",
        "",
        "k3s_server",
        "features.k3s_version",
        "k3s without an air-gap bundle needs `k3s_version`",
    );
    assert_refused(
        "k3s_version = \"v1.36.4+k3s1\"",
        "k3s_version = \"latest\"",
        "k3s_version",
        "features.k3s_version",
        "`latest` is not a k3s release tag",
    );
    assert_refused(
        "k3s_sha256 = \"c920706346d5ad4e5cd3c7bf1bb09ce71ebe07fec829e513e40f1caf98aed8bb\"",
        "k3s_sha256 = \"c9207063\"",
        "k3s_sha256",
        "features.k3s_sha256",
        "is not a sha256",
    );
    assert_refused(
        "k3s_server = \"p5\"\n",
        "k3s_server = \"p5\"\nk3s_binary = \"bundle/k3s\"\n",
        "k3s_binary",
        "features.k3s_images",
        "`k3s_binary` needs `k3s_images`",
    );
    assert_refused(
        "k3s_server = \"p5\"\n",
        "k3s_server = \"p5\"\nk3s_binary = \"bundle/k3s\"\nk3s_binary_sha256 = \"c920706346d5ad4e5cd3c7bf1bb09ce71ebe07fec829e513e40f1caf98aed8bb\"\nk3s_images = \"ftp://x/i.tar\"\n",
        "k3s_images",
        "features.k3s_images",
        "expected a local path or an http:// or https:// URL",
    );
    assert_refused(
        "k3s_server = \"p5\"\n",
        "k3s_server = \"p5\"\nk3s_binary = \"bundle/k3s\"\nk3s_binary_sha256 = \"c920706346d5ad4e5cd3c7bf1bb09ce71ebe07fec829e513e40f1caf98aed8bb\"\nk3s_images = \"bundle/images.tgz\"\nk3s_images_sha256 = \"c920706346d5ad4e5cd3c7bf1bb09ce71ebe07fec829e513e40f1caf98aed8bb\"\n",
        "k3s_images =",
        "features.k3s_images",
        "`images.tgz` is not a name k3s imports images from",
    );
    assert_refused(
        "k3s_server = \"p5\"\n",
        "k3s_server = \"p5\"\nk3s_binary = \"bundle/k3s\"\nk3s_images = \"bundle/i.tar\"\nk3s_images_sha256 = \"c920706346d5ad4e5cd3c7bf1bb09ce71ebe07fec829e513e40f1caf98aed8bb\"\n",
        "k3s_binary",
        "features.k3s_binary_sha256",
        "`features.k3s_binary` needs `k3s_binary_sha256`",
    );
}
