//! Real config checkers (issue 7): the daemons chbuild configures read what
//! it baked into z1 and p5, no boot needed. Each check is skipped with a
//! message when its tool is missing (`.ci/setup` installs them all).

mod common;

use chbuild::tools::{self, Tool};
use common::{build, extracted, Built, PI_FIXTURE};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn built() -> Option<&'static Built> {
    static B: OnceLock<Option<Built>> = OnceLock::new();
    B.get_or_init(|| {
        let base = extracted(PI_FIXTURE, "pi")?;
        Some(build(&base, "checkers", &["z1", "p5"], |p, scratch| {
            // With the air-gap bundle, p5 also carries chbuild's k3s unit.
            let ag = scratch.join("airgap");
            std::fs::create_dir_all(&ag).unwrap();
            std::fs::write(ag.join("k3s"), "#!/bin/sh\n").unwrap();
            std::fs::write(ag.join("k3s-airgap-images-arm64.tar"), "").unwrap();
            p.features.k3s_airgap_dir = Some(ag);
        }))
    })
    .as_ref()
}

fn tool(t: Tool) -> Option<PathBuf> {
    match t.require() {
        Ok(p) => Some(p),
        Err(e) => {
            common::skip(&format!("{e:#}"));
            None
        }
    }
}

macro_rules! need {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return,
        }
    };
}

/// Run a daemon in the foreground until a line containing `ready` shows on
/// its stderr, it exits, or `timeout` passes; then stop it. Returns its
/// stderr and whether `ready` was seen.
fn run_until(cmd: &mut Command, ready: &str, timeout: Duration) -> (String, bool) {
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the daemon");
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut out = String::new();
    let mut seen = false;
    while start.elapsed() < timeout {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
                if line.contains(ready) {
                    seen = true;
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    while let Ok(line) = rx.try_recv() {
        out.push_str(&line);
        out.push('\n');
    }
    (out, seen)
}

/// `sshd -t` on each node's configuration. sshd_config's Include and the
/// drop-in's HostKey are absolute (`/etc/ssh/...`), so the check reads a
/// copy of both with `/etc/ssh/` pointed into the tree.
#[test]
fn sshd_accepts_the_config() {
    let b = need!(built());
    let sshd = need!(tool(tools::SSHD));
    // sshd -t insists on its privilege separation directory.
    std::fs::create_dir_all("/run/sshd").unwrap();
    for node in ["z1", "p5"] {
        let tree = b.tree(node);
        let etc_ssh = format!("{}/etc/ssh/", tree.display());
        let dir = b.dir.join(format!("sshd-check-{node}"));
        std::fs::create_dir_all(dir.join("d")).unwrap();
        let drop_in = b.read(node, "etc/ssh/sshd_config.d/50-chbuild.conf");
        std::fs::write(
            dir.join("d/50-chbuild.conf"),
            drop_in.replace("/etc/ssh/", &etc_ssh),
        )
        .unwrap();
        let main = b.read(node, "etc/ssh/sshd_config").replace(
            "Include /etc/ssh/sshd_config.d/",
            &format!("Include {}/d/", dir.display()),
        );
        std::fs::write(dir.join("sshd_config"), main).unwrap();
        let key = tree.join("etc/ssh/ssh_host_ed25519_key");
        tools::run(
            Command::new(&sshd)
                .arg("-t")
                .arg("-f")
                .arg(dir.join("sshd_config"))
                .arg("-h")
                .arg(&key),
        )
        .unwrap_or_else(|e| panic!("{node}: {e:#}"));
        let effective = tools::run_stdout(
            Command::new(&sshd)
                .arg("-T")
                .arg("-f")
                .arg(dir.join("sshd_config"))
                .arg("-h")
                .arg(&key),
        )
        .unwrap();
        for l in ["passwordauthentication no", "permitrootlogin no"] {
            assert!(
                effective.lines().any(|x| x == l),
                "{node}: {l}\n{effective}"
            );
        }
        assert!(
            effective.contains(&format!("hostkey {}", key.display())),
            "{effective}"
        );
    }
}

/// `systemd-analyze verify` on every unit chbuild writes, with the tree as
/// root so ExecStart binaries are looked up in the node, not on this host.
#[test]
fn systemd_verifies_every_unit() {
    let b = need!(built());
    let sa = need!(tool(tools::SYSTEMD_ANALYZE));
    let mut checked = 0;
    for node in ["z1", "p5"] {
        let tree = b.tree(node);
        let units: Vec<String> = b.written[node]
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| p.starts_with("etc/systemd/system/") && !p.contains(".wants/"))
            .filter(|p| b.meta(node, p).file_type().is_file())
            // `verify` takes units, not drop-ins: a drop-in is checked by
            // verifying the unit it extends, which loads it from the root.
            .map(|p| match p.rsplit_once(".d/") {
                Some((unit, _)) => {
                    let name = Path::new(unit).file_name().unwrap().to_string_lossy();
                    let found = [
                        "etc/systemd/system",
                        "usr/lib/systemd/system",
                        "lib/systemd/system",
                    ]
                    .iter()
                    .map(|d| format!("{d}/{name}"))
                    .find(|u| tree.join(u).symlink_metadata().is_ok())
                    .unwrap_or_else(|| panic!("{node}: {p} extends {name}, not in the tree"));
                    format!("/{found}")
                }
                None => format!("/{p}"),
            })
            .collect();
        assert!(
            units
                .iter()
                .any(|u| u.ends_with("chbuild-firstboot.service")),
            "{units:?}"
        );
        let out = Command::new(&sa)
            .arg("verify")
            .arg(format!("--root={}", b.tree(node).display()))
            .args(&units)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{node}: {units:?}\n{err}");
        // Warnings (unknown keys, bad values) do not change the status.
        for u in &units {
            let name = Path::new(u).file_name().unwrap().to_string_lossy();
            assert!(!err.contains(name.as_ref()), "{node}: {name}:\n{err}");
        }
        checked += units.len();
    }
    // firstboot x2, route, mount, automount, k3s.
    assert!(checked >= 6, "{checked}");
}

fn slurm_conf(b: &Built) -> PathBuf {
    b.tree("z1").join("etc/slurm/slurm.conf")
}

const SLURM_PARSE_ERRORS: [&str; 3] = [
    "Parse error",
    "Parsing error",
    "Unable to process configuration",
];

/// slurmctld parses the whole file before it finds this host is not the
/// controller; a parse error stops it first.
#[test]
fn slurmctld_reads_slurm_conf() {
    let b = need!(built());
    let ctld = need!(tool(tools::SLURMCTLD));
    let (out, started) = run_until(
        Command::new(&ctld).arg("-D").arg("-f").arg(slurm_conf(b)),
        "started on cluster clusterhat",
        Duration::from_secs(30),
    );
    assert!(started, "{out}");
    for e in SLURM_PARSE_ERRORS {
        assert!(!out.contains(e), "{out}");
    }
}

/// slurmd as z1 (with cgroup.conf beside slurm.conf) gets as far as
/// starting; it is stopped before it gives up on the controller.
#[test]
fn slurmd_reads_slurm_conf() {
    let b = need!(built());
    let slurmd = need!(tool(tools::SLURMD));
    let (out, started) = run_until(
        Command::new(&slurmd)
            .arg("-D")
            .arg("-f")
            .arg(slurm_conf(b))
            .arg("-N")
            .arg("z1"),
        "slurmd version",
        Duration::from_secs(60),
    );
    assert!(started, "{out}");
    for e in SLURM_PARSE_ERRORS {
        assert!(!out.contains(e), "{out}");
    }
}

/// munged runs as the tree's munge user with the baked key (so a key with
/// the wrong owner or mode fails), and a credential round-trips.
#[test]
fn munged_starts_with_the_key() {
    let b = need!(built());
    let munged = need!(tool(tools::MUNGED));
    let setpriv = need!(tool(tools::SETPRIV));
    let (munge, unmunge) = (need!(tool(tools::MUNGE)), need!(tool(tools::UNMUNGE)));
    for node in ["z1", "p5"] {
        let key = b.tree(node).join("etc/munge/munge.key");
        let m = std::fs::metadata(&key).unwrap();
        let run = b.dir.join(format!("munge-{node}"));
        std::fs::create_dir_all(&run).unwrap();
        std::os::unix::fs::chown(&run, Some(m.uid()), Some(m.gid())).unwrap();
        let sock = run.join("sock");
        let mut daemon = Command::new(&setpriv);
        daemon
            .arg(format!("--reuid={}", m.uid()))
            .arg(format!("--regid={}", m.gid()))
            .arg("--clear-groups")
            .arg(&munged)
            .arg("--foreground")
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--socket={}", sock.display()))
            .arg(format!("--pid-file={}", run.join("pid").display()))
            .arg(format!("--seed-file={}", run.join("seed").display()))
            .arg(format!("--log-file={}", run.join("log").display()));
        let (tx, rx) = mpsc::channel();
        let (sock2, munge2, unmunge2) = (sock.clone(), munge.clone(), unmunge.clone());
        // Round-trip a credential while the daemon runs.
        std::thread::spawn(move || {
            let start = Instant::now();
            while !sock2.exists() && start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let cred = tools::run_stdout(Command::new(&munge2).arg("-n").arg("-S").arg(&sock2));
            let result = cred.and_then(|c| {
                let mut child = Command::new(&unmunge2)
                    .arg("-S")
                    .arg(&sock2)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()?;
                use std::io::Write;
                child.stdin.take().unwrap().write_all(c.as_bytes())?;
                let o = child.wait_with_output()?;
                Ok(format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ))
            });
            let _ = tx.send(result.map_err(|e| format!("{e:#}")));
            // Tell run_until to stop the daemon: it waits for this line.
        });
        let (out, _) = run_until(&mut daemon, "never printed", Duration::from_secs(8));
        let result = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the munge round trip finished");
        let text = result.unwrap_or_else(|e| panic!("{node}: {e}\nmunged: {out}"));
        assert!(
            text.contains("STATUS:          Success (0)"),
            "{node}: {text}\nmunged: {out}"
        );
    }
}

/// exportfs reads the generated exports in a private mount namespace: the
/// file bind-mounted over /etc/exports, a scratch /var/lib/nfs, a tmpfs
/// /opt holding the export, and the kernel's nfsd interface hidden, so the
/// machine's own exports are never touched.
#[test]
fn exportfs_reads_the_exports() {
    let b = need!(built());
    let exportfs = need!(tool(tools::EXPORTFS));
    let unshare = need!(tool(tools::UNSHARE));
    let dir = b.dir.join("exportfs-check");
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    let exports = b.tree("p5").join("etc/exports");
    let export = b.profile.features.nfs_export_path.clone();
    if !Path::new("/etc/exports").exists() {
        common::skip("/etc/exports is missing (nfs-kernel-server not installed?)");
        return;
    }
    let script = format!(
        "set -e\n\
         mount --bind '{exports}' /etc/exports\n\
         mount --bind '{lib}' /var/lib/nfs\n\
         if [ -d /etc/exports.d ]; then mount -t tmpfs tmpfs /etc/exports.d; fi\n\
         for d in /proc/fs/nfsd /proc/fs/nfs; do if [ -d $d ]; then mount -t tmpfs tmpfs $d; fi; done\n\
         mount -t tmpfs tmpfs /opt\n\
         mkdir -p '{export}'\n\
         '{exportfs}' -ra\n\
         '{exportfs}' -v\n",
        exports = exports.display(),
        lib = dir.join("lib").display(),
        exportfs = exportfs.display(),
    );
    let out = tools::run_stdout(
        Command::new(&unshare)
            .arg("-m")
            .arg("--propagation")
            .arg("private")
            .arg("sh")
            .arg("-c")
            .arg(script),
    )
    .unwrap();
    for net in &b
        .profile
        .lan_network
        .to_string()
        .split('/')
        .take(1)
        .collect::<Vec<_>>()
    {
        assert!(out.contains(net), "{out}");
    }
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(&export)).collect();
    assert_eq!(lines.len(), 2, "{out}");
    for l in lines {
        assert!(
            l.contains("root_squash") && !l.contains("no_root_squash"),
            "{l}"
        );
    }
    assert!(out.contains("172.19.181.0/24"), "{out}");
}
