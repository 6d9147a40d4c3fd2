//! The controller (issue 12), through the `chbuild` binary: its plan and
//! profile errors, `image clusterhat`, `deploy --controller --root` into a
//! copy of the Pi fixture (owners, modes, idempotence, rollback, a failing
//! package install), the generated SSH config read by `ssh -G`, and Slurm
//! for real: munged with the generated key and slurmctld from the
//! generated slurm.conf, asked by sinfo and scontrol.

// Both helpers carry the shared `support` module (the CI-aware skip): the
// binary drivers come from one, the extracted fixture from the other.
#![allow(clippy::duplicate_mod)]

mod cli_support;
mod common;

use cli_support::Chbuild;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const HOST: &str = "clusterhat";

fn chbuild() -> Chbuild {
    let c = Chbuild::new("controller", "controller.toml");
    c.init_secrets();
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `ssh -G` of `name` under the SSH config `config`: it must be accepted
/// and resolve the node to `address`. Returns the resolved settings.
fn ssh_g(config: &Path, name: &str, address: &str) -> String {
    let o = Command::new("ssh")
        .arg("-G")
        .arg("-F")
        .arg(config)
        .arg(name)
        .output()
        .expect("running ssh -G");
    let t = text(&o);
    assert!(o.status.success(), "{name}: {t}");
    assert!(
        t.contains(&format!("\nhostname {address}\n")),
        "{name}: {t}"
    );
    t
}

fn out_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("controller")
        .join(name);
    let _ = fs::remove_dir_all(&d);
    d
}

/// The controller overlay as `chbuild image clusterhat --format dir` writes
/// it (no base needed).
fn image_tree(name: &str) -> PathBuf {
    let c = chbuild();
    let out = out_dir(name);
    c.ok(&[
        "image",
        HOST,
        "-o",
        out.to_str().unwrap(),
        "--format",
        "dir",
    ]);
    out.join(HOST)
}

// ---------------------------------------------------------------- plan

#[test]
fn check_shows_the_controller_plan() {
    let c = chbuild();
    let o = c.ok(&["check", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ctl = &v["controller"];
    assert_eq!(ctl["hostname"], HOST);
    assert_eq!(ctl["slurmctld"], true);
    assert_eq!(ctl["slurm"], true);
    assert_eq!(ctl["nfs_role"], "client");
    let parts: BTreeMap<String, String> = ctl["slurm_partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(","),
            )
        })
        .collect();
    assert_eq!(parts["zero"], "z1,z2,z3,z4");
    assert_eq!(parts["picluster"], "p1,p2,p3,p4");
    assert_eq!(parts["controller"], HOST);
    assert_eq!(parts["mixed"], format!("z1,p1,{HOST}"));
    let o = c.ok(&["check"]);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.contains("slurm partition picluster: p1,p2,p3,p4"), "{t}");
    assert!(t.contains("ssh z1 -> pi@172.19.181.1"), "{t}");
}

/// A broken copy of the test profile: `edit` replaces one text.
fn bad_profile(name: &str, from: &str, to: &str) -> (PathBuf, String) {
    bad_profile_of("controller.toml", name, from, to)
}

/// A broken copy of the test profile `file`.
fn bad_profile_of(file: &str, name: &str, from: &str, to: &str) -> (PathBuf, String) {
    let src = cli_support::profile(file);
    let text = fs::read_to_string(&src).unwrap();
    assert!(text.contains(from), "{from}");
    let text = text.replacen(from, to, 1);
    let line = text[..text.find(to).unwrap()].matches('\n').count() + 1;
    // Beside the original, so relative paths still resolve.
    let p = src.with_file_name(format!(".bad-{name}.toml"));
    fs::write(&p, text).unwrap();
    let at = format!("{}:{line}:", p.display());
    (p, at)
}

fn expect_profile_error(name: &str, from: &str, to: &str, says: &str) {
    expect_profile_error_of("controller.toml", name, from, to, says)
}

fn expect_profile_error_of(file: &str, name: &str, from: &str, to: &str, says: &str) {
    let (p, at) = bad_profile_of(file, name, from, to);
    let mut c = chbuild();
    c.profile = p.clone();
    let o = c.run(&["check"]);
    let _ = fs::remove_file(&p);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains(&at) && t.contains(says),
        "{name}: want {at} {says}: {t}"
    );
}

#[test]
fn bad_controller_input_names_the_profile_line() {
    expect_profile_error(
        "node",
        "name = \"p4\"",
        "name = \"controller\"",
        "is the controller",
    );
    expect_profile_error(
        "nfs",
        "nfs_server = \"p5\"",
        "nfs_server = \"p9\"",
        "`p9` is neither a node nor the controller",
    );
    expect_profile_error(
        "k3s",
        "k3s_server = \"p5\"",
        "k3s_server = \"nas\"",
        "`nas` is neither a node nor the controller",
    );
    expect_profile_error(
        "partition",
        "nodes = [\"z1\", \"p1\", \"controller\"]",
        "nodes = [\"z1\", \"z9\"]",
        "node `z9` does not exist",
    );
}

#[test]
fn the_controller_can_serve_nfs_and_run_a_k3s_agent() {
    let (p, _) = bad_profile(
        "server",
        "nfs_server = \"p5\"",
        "nfs_server = \"controller\"",
    );
    // An air-gap bundle (a stand-in binary and images tarball): the
    // controller's agent is baked like a node's.
    let bundle = out_dir("k3s-bundle");
    fs::create_dir_all(&bundle).unwrap();
    fs::write(bundle.join("k3s"), b"#!/bin/sh\necho stand-in k3s\n").unwrap();
    fs::write(bundle.join("k3s-airgap-images-arm64.tar.zst"), b"images").unwrap();
    let text_now = fs::read_to_string(&p)
        .unwrap()
        .replacen(
            "model = \"pi4\"\n",
            "model = \"pi4\"\nk3s_agent = true\n",
            1,
        )
        .replacen(
            "[features]\n",
            &format!("[features]\nk3s_airgap_dir = \"{}\"\n", bundle.display()),
            1,
        );
    fs::write(&p, text_now).unwrap();
    let mut c = chbuild();
    c.profile = p.clone();
    let o = c.run(&["check", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ctl = &v["controller"];
    assert_eq!(ctl["nfs_role"], "server");
    assert_eq!(ctl["k3s_role"], "agent");
    assert_eq!(ctl["k3s_server_url"], "https://172.16.2.205:6443");
    assert!(ctl["packages"]
        .as_array()
        .unwrap()
        .contains(&"nfs-kernel-server".into()));
    // The nodes mount the controller's export: LAN nodes by its LAN
    // address, Zeros on their own network.
    let nodes = v["nodes"].as_array().unwrap();
    assert!(nodes.iter().all(|n| n["features"]
        .as_array()
        .unwrap()
        .contains(&"nfs-client".into())));
    for (node, addr) in [("p1", "172.16.2.200"), ("z1", "172.19.181.254")] {
        let o = c.run(&["show", node, "--json"]);
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(s["nfs_server_address"], addr, "{node}");
    }

    let out = out_dir("server");
    c.ok(&[
        "image",
        HOST,
        "-o",
        out.to_str().unwrap(),
        "--format",
        "dir",
    ]);
    let _ = fs::remove_file(&p);
    let tree = out.join(HOST);
    let exports = fs::read_to_string(tree.join("etc/exports.d/chbuild.exports")).unwrap();
    assert!(
        exports.contains("/opt/data 172.16.2.0/24(rw,sync,no_subtree_check,root_squash)"),
        "{exports}"
    );
    assert!(
        !tree.join("etc/exports").exists(),
        "ClusterCTRL's exports stay"
    );
    assert!(tree.join("opt/data").is_dir());
    let k3s = tree.join("etc/rancher/k3s/config.yaml");
    assert_eq!(fs::metadata(&k3s).unwrap().mode() & 0o7777, 0o600);
    let y = fs::read_to_string(&k3s).unwrap();
    let token = fs::read_to_string(c.secrets.join("k3s-token")).unwrap();
    assert!(y.contains("server: \"https://172.16.2.205:6443\""), "{y}");
    assert!(y.contains(&format!("token: \"{}\"", token.trim())), "{y}");
    assert!(y.contains("node-name: \"clusterhat\""), "{y}");
    let bin = tree.join("usr/local/bin/k3s");
    assert_eq!(fs::metadata(&bin).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(
        fs::read(&bin).unwrap(),
        fs::read(bundle.join("k3s")).unwrap()
    );
    assert!(tree
        .join("var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst")
        .is_file());
    let unit = fs::read_to_string(tree.join("etc/systemd/system/k3s-agent.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/k3s agent\n"),
        "{unit}"
    );
    assert!(unit.contains("Type=exec\n"), "{unit}");
}

// ---------------------------------------------------------------- image

#[test]
fn image_writes_only_owned_files_as_tree_and_tarball() {
    let c = chbuild();
    let out = out_dir("image");
    c.ok(&["image", HOST, "-o", out.to_str().unwrap()]);
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let ctl = &m["controller"];
    assert_eq!(ctl["tarball"], format!("{HOST}.tar.zst"));
    let owned: Vec<String> = ctl["owned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    for want in [
        "/etc/hosts",
        "/etc/munge/munge.key",
        "/etc/slurm/slurm.conf",
        "/etc/ssh/ssh_known_hosts",
        "/home/pi/.ssh/config",
        "/var/lib/slurm/slurmctld",
        "/etc/systemd/system/opt-data.automount",
    ] {
        assert!(owned.iter().any(|o| o == want), "{want} not in {owned:?}");
    }
    // SHA256SUMS vouches for the tarball; verify agrees.
    c.ok(&["verify", out.to_str().unwrap()]);
    // GNU tar lists the owners by name, the key 0400 munge.
    let o = Command::new("tar")
        .args(["--zstd", "-tvf"])
        .arg(out.join(format!("{HOST}.tar.zst")))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{listing}");
    let key = listing
        .lines()
        .find(|l| l.ends_with(" etc/munge/munge.key"))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(key.starts_with("-r-------- munge/munge"), "{key}");
    // Only owned files; directories only as their parents.
    for l in listing.lines().filter(|l| !l.starts_with('d')) {
        let path = format!("/{}", l.rsplit(' ').next().unwrap());
        assert!(owned.contains(&path), "{path} is not owned: {listing}");
    }
    // Same inputs, same bytes.
    let first = fs::read(out.join(format!("{HOST}.tar.zst"))).unwrap();
    c.ok(&["image", HOST, "-o", out.to_str().unwrap()]);
    assert_eq!(
        first,
        fs::read(out.join(format!("{HOST}.tar.zst"))).unwrap()
    );
    // The controller's slurm.conf is the nodes' file, byte for byte: the
    // same template renders both.
    let conf = fs::read_to_string(out.join(HOST).join("etc/slurm/slurm.conf")).unwrap();
    assert!(
        conf.contains("PartitionName=picluster Nodes=p1,p2,p3,p4"),
        "{conf}"
    );
    assert!(
        conf.contains(&format!("PartitionName=controller Nodes={HOST} Default=NO")),
        "{conf}"
    );
    assert_eq!(
        conf.matches(&format!("NodeName={HOST} ")).count(),
        1,
        "the controller's CPUs are counted once: {conf}"
    );
}

// ---------------------------------------------------------------- ssh

#[test]
fn ssh_accepts_the_generated_config_for_every_node() {
    let tree = image_tree("ssh");
    let config = tree.join("home/pi/.ssh/config");
    let profile = fs::read_to_string(cli_support::profile("controller.toml")).unwrap();
    let nodes: Vec<(String, String)> = profile
        .split("[[node]]")
        .skip(1)
        .map(|b| {
            let get = |k: &str| {
                b.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k} = \"")))
                    .unwrap()
                    .trim_end_matches('"')
                    .to_string()
            };
            (get("name"), get("address"))
        })
        .collect();
    assert_eq!(nodes.len(), 9);
    for (name, address) in &nodes {
        let t = ssh_g(&config, name, address);
        assert!(t.contains("\nuser pi\n"), "{name}: {t}");
        assert!(t.contains("\nstricthostkeychecking true\n"), "{name}: {t}");
        assert!(t.contains("known_hosts.chbuild"), "{name}: {t}");
    }
    // From the admin's machine on the LAN (`ssh_config` beside the
    // artifacts), the Zeros are reached through the controller.
    let lan = tree.parent().unwrap().join("ssh_config");
    for (name, address) in nodes
        .iter()
        .chain([&(HOST.to_string(), "172.16.2.200".to_string())])
    {
        let t = ssh_g(&lan, name, address);
        let jumps = t.contains(&format!("\nproxyjump {HOST}\n"));
        assert_eq!(jumps, name.starts_with('z'), "{name}: {t}");
    }
    // The known_hosts the config names holds every node's key.
    let kh = fs::read_to_string(tree.join("home/pi/.ssh/known_hosts.chbuild")).unwrap();
    for (name, address) in &nodes {
        assert!(
            kh.lines()
                .any(|l| l.contains(name.as_str()) && l.contains(address.as_str())),
            "{name}: {kh}"
        );
    }
}

// ---------------------------------------------------------------- deploy

fn root_or_skip() -> bool {
    if !common::is_root() {
        cli_support::skip("deploy --controller sets owners: needs root");
        return false;
    }
    true
}

/// A copy of the Pi fixture standing in for the controller's root: the
/// ClusterCTRL image's admin user `pi` (with its home) is there, as on a
/// real controller; slurmctld is not.
fn controller_root(name: &str) -> Option<PathBuf> {
    let base = common::extracted(common::PI_FIXTURE, "pi")?;
    let root = out_dir(name).join("root");
    fs::create_dir_all(root.parent().unwrap()).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(&base)
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success());
    let append = |rel: &str, line: &str| {
        let p = root.join(rel);
        let mut t = fs::read_to_string(&p).unwrap();
        t.push_str(line);
        fs::write(&p, t).unwrap();
    };
    append("etc/passwd", "pi:x:1000:1000:pi:/home/pi:/bin/bash\n");
    append("etc/group", "pi:x:1000:\n");
    fs::create_dir_all(root.join("home/pi")).unwrap();
    std::os::unix::fs::chown(root.join("home/pi"), Some(1000), Some(1000)).unwrap();
    // A slurm.conf that was there before, to see rollback bring it back.
    fs::create_dir_all(root.join("etc/slurm")).unwrap();
    fs::write(
        root.join("etc/slurm/slurm.conf"),
        "# the admin's old file\n",
    )
    .unwrap();
    fs::set_permissions(
        root.join("etc/slurm/slurm.conf"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    Some(root)
}

/// A stand-in for apt-get, run inside the root by `chroot` as chbuild
/// runs the real one: it logs its arguments and records each package in
/// dpkg's status file, adding the `slurm` user as the Debian packages'
/// maintainer scripts do. `fail` makes it fail as apt does without a
/// mirror.
fn install_apt_standin(root: &Path, fail: bool) -> &'static str {
    let path = "/usr/local/sbin/apt-get-standin";
    let script = if fail {
        "#!/bin/sh\necho \"$*\" >> /var/log/apt-standin.log\n\
         echo 'E: Unable to locate package slurmctld' >&2\nexit 100\n"
            .to_string()
    } else {
        "#!/bin/sh\necho \"$*\" >> /var/log/apt-standin.log\n\
         for p in \"$@\"; do case \"$p\" in -*|install) continue;; esac\n\
         printf '\\nPackage: %s\\nStatus: install ok installed\\n' \"$p\" >> /var/lib/dpkg/status\n\
         case \"$p\" in slurm*) grep -q '^slurm:' /etc/passwd || {\n\
         echo 'slurm:x:64030:64030::/nonexistent:/usr/sbin/nologin' >> /etc/passwd\n\
         echo 'slurm:x:64030:' >> /etc/group; };; esac\ndone\n"
            .to_string()
    };
    let p = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, script).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn deploy(root: &Path, apt: &str, extra: &[&str]) -> Output {
    let c = chbuild();
    let mut args = vec!["deploy", "--controller", "--root", root.to_str().unwrap()];
    args.extend(extra);
    c.command(&args)
        .env("CHBUILD_APT_GET", apt)
        .output()
        .unwrap()
}

/// Content, mode and owner of each path (None: absent).
type Snapshot = BTreeMap<String, Option<(Vec<u8>, u32, u32, u32, i64, u64)>>;

fn snapshot(root: &Path, paths: &[&str]) -> Snapshot {
    paths
        .iter()
        .map(|p| {
            let host = root.join(p);
            let v = fs::symlink_metadata(&host).ok().map(|m| {
                let data = if m.is_file() {
                    fs::read(&host).unwrap()
                } else {
                    vec![]
                };
                (data, m.mode(), m.uid(), m.gid(), m.mtime(), m.ino())
            });
            (p.to_string(), v)
        })
        .collect()
}

/// Without the inode and mtime: what "byte for byte" restores.
/// Content, mode, uid and gid of each path (None: absent).
type Contents = BTreeMap<String, Option<(Vec<u8>, u32, u32, u32)>>;

fn content_only(s: &Snapshot) -> Contents {
    s.iter()
        .map(|(k, v)| (k.clone(), v.as_ref().map(|v| (v.0.clone(), v.1, v.2, v.3))))
        .collect()
}

const OWNED: [&str; 12] = [
    "etc/hosts",
    "etc/ssh/ssh_known_hosts",
    "home/pi/.ssh",
    "home/pi/.ssh/config",
    "home/pi/.ssh/known_hosts.chbuild",
    "etc/munge/munge.key",
    "etc/slurm/slurm.conf",
    "etc/slurm/cgroup.conf",
    "var/lib/slurm/slurmctld",
    "var/log/slurm",
    "etc/systemd/system/opt-data.mount",
    "etc/systemd/system/opt-data.automount",
];

fn id_of(root: &Path, db: &str, name: &str) -> u32 {
    fs::read_to_string(root.join("etc").join(db))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .and_then(|l| l.split(':').nth(2))
        .unwrap()
        .parse()
        .unwrap()
}

/// A controller root with the apt-get stand-in, and the owned paths'
/// state before any deploy; None (after saying why) without root.
fn deploy_setup(name: &str, fail: bool) -> Option<(PathBuf, &'static str, Snapshot)> {
    if !root_or_skip() {
        return None;
    }
    let root = controller_root(name)?;
    let apt = install_apt_standin(&root, fail);
    let before = snapshot(&root, &OWNED);
    Some((root, apt, before))
}

#[test]
fn deploy_controller_owners_idempotence_and_rollback() {
    let Some((root, apt, before)) = deploy_setup("deploy", false) else {
        return;
    };

    // --dry-run changes nothing and says what it would do.
    let o = deploy(&root, apt, &["--dry-run", "--diff"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("would install slurmctld slurmd dbus"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("+PartitionName=picluster"),
        "{}",
        text(&o)
    );
    assert_eq!(snapshot(&root, &OWNED), before, "dry run changed a file");
    assert!(!root.join("var/log/apt-standin.log").exists());

    let o = deploy(&root, apt, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let log = fs::read_to_string(root.join("var/log/apt-standin.log")).unwrap();
    assert_eq!(
        log.trim(),
        "install -y --no-install-recommends -- slurmctld slurmd dbus",
        "only the missing packages"
    );
    let munge = (
        id_of(&root, "passwd", "munge"),
        id_of(&root, "group", "munge"),
    );
    let slurm = (
        id_of(&root, "passwd", "slurm"),
        id_of(&root, "group", "slurm"),
    );
    for (path, mode, owner) in [
        ("etc/hosts", 0o644, (0, 0)),
        ("etc/ssh/ssh_known_hosts", 0o644, (0, 0)),
        ("home/pi/.ssh", 0o700, (1000, 1000)),
        ("home/pi/.ssh/config", 0o600, (1000, 1000)),
        ("home/pi/.ssh/known_hosts.chbuild", 0o644, (1000, 1000)),
        ("etc/munge", 0o700, munge),
        ("etc/munge/munge.key", 0o400, munge),
        ("etc/slurm/slurm.conf", 0o644, (0, 0)),
        ("etc/slurm/cgroup.conf", 0o644, (0, 0)),
        ("var/lib/slurm/slurmctld", 0o755, slurm),
        ("var/log/slurm", 0o755, slurm),
        ("etc/systemd/system/opt-data.automount", 0o644, (0, 0)),
    ] {
        let m = fs::symlink_metadata(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(m.mode() & 0o7777, mode, "{path}");
        assert_eq!((m.uid(), m.gid()), owner, "{path}");
    }
    let secrets = chbuild().secrets;
    assert_eq!(
        fs::read(root.join("etc/munge/munge.key")).unwrap(),
        fs::read(secrets.join("munge.key")).unwrap()
    );
    let hosts = fs::read_to_string(root.join("etc/hosts")).unwrap();
    assert!(
        hosts.contains("172.16.2.200\tclusterhat controller p0"),
        "{hosts}"
    );
    // Units enabled as systemctl would: the fixture carries munge's unit;
    // the stand-in installs no unit files, so slurmctld is reported.
    assert!(root
        .join("etc/systemd/system/multi-user.target.wants/munge.service")
        .symlink_metadata()
        .is_ok());
    assert!(root
        .join("etc/systemd/system/remote-fs.target.wants/opt-data.automount")
        .symlink_metadata()
        .is_ok());
    assert!(
        text(&o).contains("slurmctld.service is not installed"),
        "{}",
        text(&o)
    );

    // A second run: unchanged, nothing touched (same inodes and times), no
    // package install.
    let after = snapshot(&root, &OWNED);
    let o = deploy(&root, apt, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("unchanged"), "{}", text(&o));
    assert_eq!(snapshot(&root, &OWNED), after, "second run touched a file");
    assert_eq!(
        fs::read_to_string(root.join("var/log/apt-standin.log")).unwrap(),
        log
    );

    // Rollback puts every file back byte for byte, with mode and owner,
    // and removes what did not exist; run again, it redoes the deploy.
    let c = chbuild();
    let rb = |c: &Chbuild| {
        let o = c.run(&["rollback", HOST, "--root", root.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
    };
    rb(&c);
    let back = snapshot(&root, &OWNED);
    assert_eq!(
        content_only(&back),
        content_only(&before),
        "rollback differs"
    );
    assert_eq!(
        fs::read(root.join("etc/slurm/slurm.conf")).unwrap(),
        b"# the admin's old file\n"
    );
    rb(&c);
    assert_eq!(content_only(&snapshot(&root, &OWNED)), content_only(&after));
    let _ = fs::remove_dir_all(root.parent().unwrap());
}

/// A deploy that fails saying `says`, with every owned path as before and
/// no rollback set; the copy is removed.
fn fails_changing_nothing(root: &Path, apt: &str, before: &Snapshot, says: &[&str]) {
    let o = deploy(root, apt, &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    for s in says {
        assert!(t.contains(s), "{s}: {t}");
    }
    assert_eq!(&snapshot(root, &OWNED), before, "a file changed");
    assert!(!root.join("var/lib/chbuild/controller/rollback").exists());
    let _ = fs::remove_dir_all(root.parent().unwrap());
}

#[test]
fn a_failing_package_install_changes_no_file() {
    let Some((root, apt, before)) = deploy_setup("apt-fails", true) else {
        return;
    };
    fails_changing_nothing(
        &root,
        apt,
        &before,
        &[
            "Unable to locate package slurmctld",
            "installing slurmctld slurmd",
        ],
    );
}

/// An owner that does not resolve (no admin user on this controller) stops
/// the deploy before the first file is replaced.
#[test]
fn an_unknown_owner_changes_no_file() {
    let Some((root, apt, before)) = deploy_setup("no-user", false) else {
        return;
    };
    let passwd = root.join("etc/passwd");
    let text_now = fs::read_to_string(&passwd).unwrap();
    fs::write(
        &passwd,
        text_now.replace("pi:x:1000:1000:pi:/home/pi:/bin/bash\n", ""),
    )
    .unwrap();
    fails_changing_nothing(&root, apt, &before, &["user `pi` does not exist"]);
}

#[test]
fn deploy_controller_refuses_a_machine_without_clusterctrl() {
    if Path::new("/var/lib/clusterctrl").exists() {
        // On a real controller there is nothing to refuse; the dry run
        // below must then succeed.
        let o = chbuild().run(&["deploy", "--controller", "--dry-run"]);
        assert!(o.status.success(), "{}", text(&o));
        return;
    }
    let o = chbuild()
        .command(&["deploy", "--controller", "--dry-run"])
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("no ClusterCTRL") && t.contains("--root"), "{t}");
}

// ---------------------------------------------------------------- slurm

/// A daemon killed (and reaped) when the test ends, pass or fail.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A daemon that believes it runs on the controller: its own UTS
/// namespace carries the controller's host name.
fn as_controller(command: &str) -> Daemon {
    Daemon(
        Command::new("unshare")
            .arg("--uts")
            .arg("sh")
            .arg("-c")
            .arg(format!("hostname {HOST} && exec {command}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command}: {e}")),
    )
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The generated slurm.conf with only what a test on a shared machine must
/// change: its own ports, state, spool, pid and log files, the munge
/// socket, root as the Slurm user, and loopback for the controller.
fn test_slurm_conf(generated: &str, dir: &Path, port: u16) -> String {
    let d = dir.display();
    let mut out = String::new();
    for line in generated.lines() {
        let key = line.split('=').next().unwrap_or("");
        let replaced = match key {
            "SlurmctldHost" => format!("SlurmctldHost={HOST}(127.0.0.1)"),
            "SlurmctldPort" => format!("SlurmctldPort={port}"),
            "SlurmdPort" => format!("SlurmdPort={}", port + 1),
            "SlurmctldPidFile" => format!("SlurmctldPidFile={d}/slurmctld.pid"),
            "SlurmdPidFile" => format!("SlurmdPidFile={d}/slurmd.pid"),
            "SlurmdSpoolDir" => format!("SlurmdSpoolDir={d}/spool"),
            "StateSaveLocation" => format!("StateSaveLocation={d}/state"),
            "SlurmctldLogFile" => format!("SlurmctldLogFile={d}/slurmctld.log"),
            "SlurmdLogFile" => format!("SlurmdLogFile={d}/slurmd.log"),
            "SlurmUser" => "SlurmUser=root".into(),
            // No cgroup hierarchy of our own in a test container.
            "ProctrackType" => "ProctrackType=proctrack/linuxproc".into(),
            "TaskPlugin" => "TaskPlugin=task/none".into(),
            _ if line.starts_with(&format!("NodeName={HOST} ")) => {
                line.replace("NodeAddr=172.16.2.200", "NodeAddr=127.0.0.1")
            }
            _ => line.to_string(),
        };
        out.push_str(&replaced);
        out.push('\n');
    }
    out.push_str(&format!(
        "AuthInfo=socket={d}/munge.sock\nSlurmdParameters=config_overrides\n"
    ));
    out
}

fn free_port_pair() -> u16 {
    // Two consecutive free ports in the dynamic range.
    for _ in 0..50 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair");
}

#[test]
fn slurmctld_and_munged_run_the_generated_config() {
    if !root_or_skip() {
        return;
    }
    for tool in [
        "munged",
        "slurmctld",
        "slurmd",
        "sinfo",
        "scontrol",
        "unshare",
    ] {
        assert!(
            chbuild::tools::which(tool).is_some(),
            "{tool} is missing (.ci/setup installs slurm and munge)"
        );
    }
    let tree = image_tree("slurm");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["state", "spool", "munge"] {
        fs::create_dir_all(d.join(sub)).unwrap();
    }
    // munged as root with the generated key (0400 in the overlay tree,
    // owned by root there), its own socket, pid, log and seed.
    let key = tree.join("etc/munge/munge.key");
    assert_eq!(fs::metadata(&key).unwrap().mode() & 0o7777, 0o400);
    let munged = Daemon(
        Command::new("munged")
            .arg("--foreground")
            .arg("--force")
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--socket={}/munge.sock", d.display()))
            .arg(format!("--pid-file={}/munged.pid", d.display()))
            .arg(format!("--log-file={}/munged.log", d.display()))
            .arg(format!("--seed-file={}/munged.seed", d.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting munged"),
    );
    wait_for("munged's socket", Duration::from_secs(20), || {
        d.join("munge.sock").exists()
    });
    let port = free_port_pair();
    let generated = fs::read_to_string(tree.join("etc/slurm/slurm.conf")).unwrap();
    let conf = d.join("slurm.conf");
    fs::write(&conf, test_slurm_conf(&generated, d, port)).unwrap();
    fs::copy(tree.join("etc/slurm/cgroup.conf"), d.join("cgroup.conf")).unwrap();

    let ctld = as_controller(&format!("slurmctld -D -f {} -i", conf.display()));
    let _keep = (&munged, &ctld);
    let ask = |args: &[&str]| -> Output {
        Command::new(args[0])
            .args(&args[1..])
            .env("SLURM_CONF", &conf)
            .output()
            .unwrap()
    };
    let log = || fs::read_to_string(d.join("slurmctld.log")).unwrap_or_default();
    wait_for("slurmctld to answer", Duration::from_secs(60), || {
        ask(&["scontrol", "ping"]).status.success()
            && String::from_utf8_lossy(&ask(&["scontrol", "ping"]).stdout).contains("UP")
    });

    // Every node of the profile, with the partitions of the seed.
    let o = ask(&["sinfo", "-h", "-N", "-o", "%N %P"]);
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{t}{}", log());
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in t.lines() {
        let (n, p) = l.split_once(' ').unwrap();
        seen.entry(n.to_string())
            .or_default()
            .push(p.trim_end_matches('*').to_string());
    }
    for z in ["z1", "z2", "z3", "z4"] {
        assert!(seen[z].contains(&"zero".to_string()), "{z}: {t}");
    }
    for p in ["p1", "p2", "p3", "p4"] {
        assert!(seen[p].contains(&"picluster".to_string()), "{p}: {t}");
    }
    assert!(seen[HOST].contains(&"controller".to_string()), "{t}");
    assert!(seen[HOST].contains(&"mixed".to_string()), "{t}");
    assert!(!seen.contains_key("p5"), "p5 is no compute node: {t}");
    assert_eq!(seen.len(), 9, "{t}");

    // The controller is one node: `-w clusterhat` works; its aliases are
    // host names, not Slurm node names.
    let o = ask(&["scontrol", "show", "node", HOST]);
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success() && t.contains("CPUTot=4"), "{t}");
    assert!(t.contains("Partitions=controller,mixed"), "{t}");
    let o = ask(&["scontrol", "show", "node", "p0"]);
    assert!(!o.status.success(), "p0 is not a Slurm node name");

    // A slurmd on this machine registers as the controller's node.
    let slurmd = as_controller(&format!("slurmd -D -f {} -N {HOST}", conf.display()));
    let _keep = &slurmd;
    wait_for(
        "the controller's slurmd to register",
        Duration::from_secs(60),
        || {
            let o = ask(&["sinfo", "-h", "-n", HOST, "-o", "%t"]);
            let s = String::from_utf8_lossy(&o.stdout);
            s.lines().any(|l| l.trim() == "idle")
        },
    );
    let o = ask(&["scontrol", "show", "node", HOST]);
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(t.contains("State=IDLE"), "{t}");
}

// ---------------------------------------------------------------- sd card

/// The test profile with `[controller.base]`: the Pi fixture archive
/// (a Debian system without ClusterCTRL) is the controller's base.
fn chbuild_sd() -> Chbuild {
    let mut c = chbuild();
    c.profile = cli_support::profile("controller-sd.toml");
    c
}

/// The root partition (the second) of an SD image, cut out with dd.
fn root_partition(img: &Path, out: &Path) -> PathBuf {
    let table: serde_json::Value = serde_json::from_slice(
        &Command::new("sfdisk")
            .arg("--json")
            .arg(img)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "boot and root: {table}");
    let (start, size) = (
        parts[1]["start"].as_u64().unwrap(),
        parts[1]["size"].as_u64().unwrap(),
    );
    let part = out.join("root.ext4");
    let dd = Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", part.display()))
        .args([
            "bs=512",
            &format!("skip={start}"),
            &format!("count={size}"),
            "status=none",
        ])
        .status()
        .unwrap();
    assert!(dd.success());
    part
}

fn debugfs(part: &Path, request: &str) -> String {
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(part)
        .output()
        .unwrap();
    assert!(o.status.success(), "debugfs {request}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn sd_builds_a_complete_controller_card_and_reuses_it() {
    if !root_or_skip() || !cli_support::fixture_present() {
        return;
    }
    let c = chbuild_sd();
    let out = out_dir("sd-card");
    fs::create_dir_all(&out).unwrap();
    let img = out.join(format!("{HOST}.img"));
    let o = c.ok(&["sd", HOST, "--output", img.to_str().unwrap()]);
    assert!(!text(&o).contains("reused"), "{}", text(&o));
    assert_eq!(
        fs::metadata(&img).unwrap().permissions().mode() & 0o777,
        0o600,
        "the card holds the munge key"
    );
    for extra in ["bmap", "sha256"] {
        assert!(out.join(format!("{HOST}.img.{extra}")).is_file(), "{extra}");
    }
    let sums = Command::new("sha256sum")
        .args(["-c", &format!("{HOST}.img.sha256")])
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(sums.status.success(), "{}", text(&sums));

    let part = root_partition(&img, &out);
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&part)
        .output()
        .unwrap();
    assert!(fsck.status.success(), "{}", text(&fsck));

    // The roles an SD node gets, for the controller.
    assert_eq!(debugfs(&part, "cat /etc/hostname").trim(), HOST);
    let hosts = debugfs(&part, "cat /etc/hosts");
    assert!(
        hosts.contains("172.16.2.200\tclusterhat controller p0")
            && hosts.contains("172.19.181.1\tz1"),
        "{hosts}"
    );
    let key = fs::read_to_string(
        c.secrets
            .join("hostkeys")
            .join(HOST)
            .join("ssh_host_ed25519_key.pub"),
    )
    .unwrap();
    assert!(key.trim_end().ends_with("root@clusterhat"), "{key}");
    assert_eq!(
        debugfs(&part, "cat /etc/ssh/ssh_host_ed25519_key.pub"),
        key,
        "the controller's own host key from the secrets directory"
    );
    let private = debugfs(&part, "stat /etc/ssh/ssh_host_ed25519_key");
    assert!(private.contains("Mode:  0600"), "{private}");

    // The munge key, 0400 and owned by the base's munge user.
    let munge_uid: u32 = debugfs(&part, "cat /etc/passwd")
        .lines()
        .find(|l| l.starts_with("munge:"))
        .and_then(|l| l.split(':').nth(2))
        .expect("the base has a munge user")
        .parse()
        .unwrap();
    let stat = debugfs(&part, "stat /etc/munge/munge.key");
    assert!(stat.contains("Mode:  0400"), "{stat}");
    assert!(stat.contains(&format!("User: {munge_uid:>5}")), "{stat}");
    let dumped = out.join("munge.key");
    debugfs(
        &part,
        &format!("dump /etc/munge/munge.key {}", dumped.display()),
    );
    assert_eq!(
        fs::read(&dumped).unwrap(),
        fs::read(c.secrets.join("munge.key")).unwrap()
    );

    // The controller's own files: slurm.conf is the nodes' file, byte for
    // byte; slurmctld's directories and the SSH hub are there.
    let nodes = out.join("nodes");
    c.ok(&[
        "image",
        "p1",
        "-o",
        nodes.to_str().unwrap(),
        "--format",
        "dir",
    ]);
    let node_conf = fs::read_to_string(nodes.join("p1/etc/slurm/slurm.conf")).unwrap();
    let conf = debugfs(&part, "cat /etc/slurm/slurm.conf");
    assert_eq!(conf, node_conf);
    assert!(conf.contains(&format!("SlurmctldHost={HOST}")), "{conf}");
    assert!(debugfs(&part, "stat /var/lib/slurm/slurmctld").contains("Type: directory"));
    let ssh = debugfs(&part, "cat /home/pi/.ssh/config");
    assert!(ssh.contains("Host z1") && ssh.contains("Host p5"), "{ssh}");
    let wants = debugfs(&part, "ls /etc/systemd/system/multi-user.target.wants");
    assert!(wants.contains("munge.service"), "{wants}");

    // Same inputs: the image is reused, untouched.
    let before = fs::metadata(&img).unwrap().modified().unwrap();
    let o = c.ok(&["sd", "controller", "--output", img.to_str().unwrap()]);
    assert!(text(&o).contains("up to date, reused"), "{}", text(&o));
    assert_eq!(before, fs::metadata(&img).unwrap().modified().unwrap());
    let _ = fs::remove_dir_all(&out);
}

#[test]
fn sd_without_a_controller_base_is_a_usage_error() {
    let c = chbuild();
    let out = out_dir("sd-no-base");
    let img = out.join("c.img");
    let o = c.run(&["sd", HOST, "--output", img.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("gives the controller clusterhat no base") && t.contains("[controller.base]"),
        "{t}"
    );
    assert!(!img.exists());
    // `check` lists the card only when there is a base.
    let o = c.ok(&["check"]);
    assert!(!text(&o).contains(&format!("{HOST}.img")), "{}", text(&o));
    let o = chbuild_sd().ok(&["check"]);
    assert!(text(&o).contains(&format!("artifacts: {HOST}.img (+ .bmap, .sha256)")));

    // A bad controller base names its line and key.
    expect_profile_error_of(
        "controller-sd.toml",
        "controller-base",
        "source = \"archive\"",
        "source = \"tape\"",
        "controller.base.source: unknown source `tape`",
    );
}
