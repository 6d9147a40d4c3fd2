//! A virtual ClusterHAT: the controller's SD card, the Zero z1 with its
//! root over NFS from the controller, and the management Pi p5 from its SD
//! card boot together under QEMU (arm64 `virt`, software emulation) from
//! what chbuild built for one profile, and work as a cluster: Slurm runs a
//! job on z1 that writes into p5's `/opt/data`, munge credentials cross
//! nodes, p5 reaches z1 through the controller, every node presents the
//! host key of the cluster's known_hosts and refuses passwords, no unit
//! failed, and the first-boot unit ran once and installed nothing.
//!
//! The wiring, and what stands in for the hardware:
//! - the LAN is a bridge in a network namespace the test creates, with
//!   the controller's and p5's NICs on it (tap devices) and the test's
//!   own end at 172.16.2.1, where the LAN's router would be: the
//!   namespace has no other link, so nothing outside is reachable and
//!   nothing can be downloaded at first boot. SSH, run in the namespace,
//!   reaches the controller and p5 on the LAN and the Zeros through the
//!   controller, as an admin's machine on the LAN does;
//! - each Zero's USB link is a socket link between a NIC of the controller
//!   and the Zero's NIC. The NICs are virtio, not a USB gadget: they carry
//!   the addresses the gadget gives each side (00:22:82:ff:fe:01 on the
//!   controller, 00:22:82:ff:ff:01 on the Zero), which is how the
//!   controller names the link `ethupi1` and the Zero's initramfs finds
//!   `usb0`; everything above (VLAN 10, `ip=`, `nfsroot=`, the bridges) is
//!   the product's own;
//! - rpiboot: QEMU loads z1's kernel and initramfs and passes its command
//!   line, all read from its deployed `boot/firmware`;
//! - hub power: `clusterctrl on p1` switches the Zero's USB port on; here
//!   starting z1's VM is that (deploy runs with `--no-power`);
//! - the controller's SD card: its image as chbuild wrote it; the Zeros'
//!   NFS directory, which `chbuild deploy` writes on the controller, is
//!   written by `chbuild deploy --root` here and handed to the controller
//!   as a second disk, mounted on `/var/lib/clusterctrl/nfs`;
//! - the serial console is QEMU's `ttyAMA0` (a Pi's is `serial0`).
//!
//! Needs root (the store keeps owners, and the network namespace),
//! `qemu-system-aarch64`, `ip`, `ssh`, `mke2fs`, `mtools`, `sfdisk` and
//! the Pi fixture; otherwise it prints
//! `SKIP: <reason>` (a failure under `CI=true`). `CHBUILD_SKIP_BOOT=1`
//! skips it on a developer machine.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PROFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/profiles/cluster.toml");
const EPOCH: &str = "1700000000";
const CONTROLLER: &str = "clusterhat";
const CONTROLLER_LAN: &str = "172.16.2.200";
/// From QEMU start to sshd answering and the boot finished. Software
/// emulation of three VMs on a 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
const USER: &str = "pi";

fn skip_reason() -> Option<String> {
    if std::env::var_os("CHBUILD_SKIP_BOOT").is_some() {
        return Some("CHBUILD_SKIP_BOOT is set".into());
    }
    if !common::is_root() {
        return Some("booting chbuild's trees needs root (owners kept in the store)".into());
    }
    if !Path::new(common::PI_FIXTURE).exists() {
        return Some(format!("fixture {} is missing", common::PI_FIXTURE));
    }
    for (tool, package) in [
        ("qemu-system-aarch64", "qemu-system-arm"),
        ("ip", "iproute2"),
        ("ssh", "openssh-client"),
        ("ssh-agent", "openssh-client"),
        ("mke2fs", "e2fsprogs"),
        ("mcopy", "mtools"),
        ("sfdisk", "fdisk"),
    ] {
        if chbuild::tools::which(tool).is_none() {
            return Some(format!(
                "{tool} is not installed (Debian package {package})"
            ));
        }
    }
    None
}

/// The work directory, replaced by the next run and kept after a failure
/// for a look (serial logs, images, trees).
fn workdir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster_qemu");
    for sub in ["run", "out", "deployed"] {
        let d = dir.join(sub);
        if d.exists() {
            chbuild::fs::remove_tree(&d).unwrap();
        }
    }
    std::fs::create_dir_all(dir.join("run")).unwrap();
    dir
}

struct Chbuild {
    secrets: PathBuf,
    store: PathBuf,
}

impl Chbuild {
    fn ok(&self, args: &[&str]) -> Output {
        let started = Instant::now();
        let o = Command::new(env!("CARGO_BIN_EXE_chbuild"))
            .args(args)
            .arg("--profile")
            .arg(PROFILE)
            .arg("--secrets")
            .arg(&self.secrets)
            .arg("--store")
            .arg(&self.store)
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .env_remove("CHBUILD_PASSWORD_HASH")
            .output()
            .expect("running chbuild");
        assert!(
            o.status.success(),
            "chbuild {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        eprintln!("chbuild {args:?}: {:.1?}", started.elapsed());
        o
    }
}

/// The cluster's private network: a network namespace with the LAN
/// bridge (the test's end at 172.16.2.1) and a tap device per LAN NIC.
/// Removed on drop, with everything in it.
struct Netns {
    name: String,
}

const LAN_TAPS: [&str; 2] = ["clan", "p5lan"];

impl Netns {
    fn new() -> Netns {
        // Those of runs that were killed (their process is gone) first.
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        for line in String::from_utf8_lossy(&list.stdout).lines() {
            let old = line.split_whitespace().next().unwrap_or_default();
            if let Some(pid) = old.strip_prefix("chbuild-cluster-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = Command::new("ip").args(["netns", "del", old]).status();
                }
            }
        }
        let name = format!("chbuild-cluster-{}", std::process::id());
        let ip = |args: &[&str]| {
            chbuild::tools::run(Command::new("ip").args(args))
                .unwrap_or_else(|e| panic!("network namespace: ip {args:?}: {e:#}"))
        };
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        let n = Netns { name };
        let ns = n.name.as_str();
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["-n", ns, "link", "add", "lan", "type", "bridge"]);
        ip(&["-n", ns, "addr", "add", "172.16.2.1/24", "dev", "lan"]);
        ip(&["-n", ns, "link", "set", "lan", "up"]);
        for tap in LAN_TAPS {
            ip(&["-n", ns, "tuntap", "add", tap, "mode", "tap"]);
            ip(&["-n", ns, "link", "set", tap, "master", "lan"]);
            ip(&["-n", ns, "link", "set", tap, "up"]);
        }
        n
    }

    /// `program` run inside the namespace.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Whether QEMU (process `pid`) listens on 127.0.0.1:`port` of its
/// namespace: read from /proc, since connecting would take the socket
/// netdev's one peer.
fn listening(pid: u32, port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
}

/// How SSH reaches a node: on the LAN by its address, a Zero through the
/// controller.
#[derive(Clone)]
enum Route {
    Lan(&'static str),
    Via(&'static str),
}

/// What every SSH command of the test shares.
#[derive(Clone)]
struct Ssh {
    netns: String,
    key: PathBuf,
    known_hosts: PathBuf,
    agent: PathBuf,
}

impl Ssh {
    fn base(&self, alias: &str) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-i",
            &self.key.to_string_lossy(),
            "-o",
            &format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "LogLevel=ERROR",
            // The controller reaches the nodes with the admin's agent.
            "-o",
            "ForwardAgent=yes",
            // known_hosts names the node, not its address.
            "-o",
            &format!("HostKeyAlias={alias}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// A running VM: QEMU killed on drop, serial log in a file.
struct Vm {
    name: String,
    child: Child,
    log: PathBuf,
    route: Route,
    ssh: Ssh,
    started: Instant,
    /// How long the first boot took.
    booted_in: Option<Duration>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kernel, initramfs and command line of a VM, and its other arguments
/// (disks, NICs).
struct Boot {
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
    memory_mb: u32,
    cpus: u32,
    args: Vec<String>,
}

impl Vm {
    fn start(name: &str, boot: &Boot, dir: &Path, route: Route, net: &Netns, ssh: &Ssh) -> Vm {
        let log = dir.join(format!("{name}-serial.log"));
        let mut cmd = net.command("qemu-system-aarch64");
        cmd.args(["-M", "virt", "-cpu", "cortex-a57"])
            .args(["-m", &boot.memory_mb.to_string()])
            .args(["-smp", &boot.cpus.to_string()])
            .args(["-nographic", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .arg("-kernel")
            .arg(&boot.kernel)
            .arg("-initrd")
            .arg(&boot.initrd)
            .arg("-append")
            // The virt machine's serial console; added last, it becomes
            // /dev/console.
            .arg(format!("{} console=ttyAMA0", boot.cmdline.trim()))
            .args(&boot.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        eprintln!("{name}: booting: {cmd:?}");
        let child = cmd.spawn().expect("starting qemu-system-aarch64");
        Vm {
            name: name.to_string(),
            child,
            log,
            route,
            ssh: ssh.clone(),
            started: Instant::now(),
            booted_in: None,
        }
    }

    fn serial_tail(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn fail(&mut self, what: &str) -> ! {
        let mut qemu_err = String::new();
        if let Ok(Some(_)) = self.child.try_wait() {
            if let Some(e) = self.child.stderr.as_mut() {
                let _ = e.read_to_string(&mut qemu_err);
            }
        }
        panic!(
            "{}: {what}\n--- qemu stderr ---\n{qemu_err}\n--- serial log tail ({}) ---\n{}",
            self.name,
            self.log.display(),
            self.serial_tail()
        );
    }

    /// `ssh` as the profile's user with the admin key; the node must present
    /// the host key known_hosts lists under its host name.
    fn ssh_cmd(&self, extra: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ssh.netns, "ssh"]);
        c.args(self.ssh.base(&self.name));
        let address = match &self.route {
            Route::Lan(address) => address,
            Route::Via(address) => {
                let mut jump = vec!["ssh".to_string()];
                jump.extend(self.ssh.base(CONTROLLER));
                jump.extend([
                    "-W".into(),
                    format!("{address}:22"),
                    format!("{USER}@{CONTROLLER_LAN}"),
                ]);
                c.arg("-o").arg(format!("ProxyCommand={}", jump.join(" ")));
                address
            }
        };
        c.args(extra)
            .arg(format!("{USER}@{address}"))
            .env("SSH_AUTH_SOCK", &self.ssh.agent)
            .stdin(Stdio::null());
        c
    }

    fn ssh(&self, script: &str) -> Output {
        self.ssh_cmd(&[]).arg(script).output().expect("running ssh")
    }

    /// Run `script` on the node; its stdout, trimmed. Fails the test with
    /// `check`, stderr and the serial log tail when it fails.
    fn run_for(&mut self, check: &str, script: &str) -> String {
        let o = self.ssh(script);
        if !o.status.success() {
            let msg = format!(
                "{check}: `{script}` failed ({}): {}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            self.fail(&msg);
        }
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn run(&mut self, script: &str) -> String {
        self.run_for("command", script)
    }

    /// Wait until sshd answers with the right key and the boot finished;
    /// returns the boot id. `not_boot` is the previous boot's id (after a
    /// reboot the old system may still answer for a moment).
    fn wait_booted(&mut self, not_boot: Option<&str>) -> String {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.fail(&format!("QEMU exited ({status}) before the node was up"));
            }
            let o = self.ssh("cat /proc/sys/kernel/random/boot_id");
            let err = String::from_utf8_lossy(&o.stderr).to_string();
            if err.contains("Host key verification failed")
                || err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
                || err.contains("Permission denied")
            {
                self.fail(&format!(
                    "host key or login: sshd answers but refuses us: {err}"
                ));
            }
            let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if o.status.success() && !id.is_empty() && Some(id.as_str()) != not_boot {
                // sshd is up; wait for the rest of the boot (root uses the
                // private systemd socket: the fixture has no D-Bus).
                let state = self.ssh("sudo -n timeout 600 systemctl is-system-running --wait");
                let took = self.started.elapsed();
                eprintln!(
                    "{}: up after {took:.0?} (system {})",
                    self.name,
                    String::from_utf8_lossy(&state.stdout).trim()
                );
                self.booted_in.get_or_insert(took);
                return id;
            }
            if Instant::now() > deadline {
                self.fail(&format!("boot: no SSH within {BOOT_TIMEOUT:?}: {err}"));
            }
            std::thread::sleep(Duration::from_secs(5));
        }
    }

    /// Ask the node to reboot; `wait_booted` with the old boot id waits
    /// for the new boot.
    fn begin_reboot(&mut self) {
        // The connection may drop before ssh sees an exit status.
        let _ = self.ssh("sudo -n systemctl reboot");
        self.started = Instant::now();
    }

    /// What holds on every node: host name and /etc/hosts, key-only login,
    /// sudo, munge with the cluster's key, no failed unit, and `ll`.
    fn check_roles(&mut self, hostname: &str) {
        assert_eq!(self.run("hostname"), hostname, "{}: host name", self.name);
        let hosts = self.run("getent hosts controller p0");
        assert_eq!(
            hosts.lines().count(),
            2,
            "{}: /etc/hosts lacks controller, p0: {hosts}",
            self.name
        );

        // Key-only login: sshd does not even offer passwords.
        let o = self
            .ssh_cmd(&[
                "-o",
                "PreferredAuthentications=password,keyboard-interactive",
                "-o",
                "PubkeyAuthentication=no",
            ])
            .arg("true")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("Permission denied (publickey)"),
            "{}: password login not refused: {err}",
            self.name
        );
        self.run_for("sudo", "sudo -n true");

        let key = self.run("sudo -n stat -c '%a %U %G' /etc/munge/munge.key");
        assert_eq!(
            key, "400 munge munge",
            "{}: mode and owner of /etc/munge/munge.key",
            self.name
        );
        let un = self.run_for("munge", "munge -n | unmunge");
        assert!(un.contains("STATUS:          Success (0)"), "{un}");

        let state = self.run("sudo -n systemctl is-system-running || true");
        let failed = self.run("sudo -n systemctl --failed --plain --no-legend --no-pager");
        if state != "running" || !failed.is_empty() {
            let journal = self
                .run("sudo -n journalctl -b -p warning -o short-monotonic --no-pager | tail -40");
            panic!(
                "{}: failed units: system {state}; failed:\n{failed}\n--- journal ---\n{journal}",
                self.name
            );
        }
        let ll = self.run("bash -lc 'alias ll'");
        assert!(
            ll.contains("exa") || ll.contains("eza"),
            "{}: ll is {ll}",
            self.name
        );
    }

    /// The packages are in the tree and their units enabled; the first-boot
    /// unit ran once in this boot, succeeded and had nothing to install.
    fn check_baked(&mut self, packages: &[&str], active: &[&str]) {
        for p in packages {
            let st = self.run(&format!("dpkg-query -W -f '${{Status}}' {p}"));
            assert_eq!(st, "install ok installed", "{}: package {p}", self.name);
        }
        for u in active {
            let st = self.run(&format!(
                // As root: systemd's private socket, p5 has no D-Bus.
                "sudo -n systemctl is-enabled {u} || true; sudo -n systemctl is-active {u} || true"
            ));
            assert_eq!(st, "enabled\nactive", "{}: unit {u}", self.name);
        }
        let s = self.firstboot_state();
        assert_eq!(s.len(), 4, "{s:?}");
        assert!(
            s[0] == "success" && s[1] == "0" && !s[2].is_empty(),
            "{}: the first-boot unit did not run once successfully: {s:?}",
            self.name
        );
        let journal =
            self.run("sudo -n journalctl -b -o cat -u chbuild-firstboot.service --no-pager");
        assert!(
            journal.contains("nothing to install") && !journal.contains("apt-get"),
            "{}: first-boot unit journal:\n{journal}",
            self.name
        );
        self.run("test -e /var/lib/chbuild/firstboot.done");
    }

    /// (Result, NRestarts, ExecMainStartTimestamp, ConditionResult) of the
    /// first-boot unit in this boot.
    fn firstboot_state(&mut self) -> Vec<String> {
        let out = self.run(
            "sudo -n systemctl show chbuild-firstboot.service --value \
             -p Result -p NRestarts -p ExecMainStartTimestamp -p ConditionResult",
        );
        out.lines().map(str::to_string).collect()
    }

    /// After a reboot the first-boot unit did not run again.
    fn check_firstboot_not_again(&mut self) {
        let s = self.firstboot_state();
        assert!(
            s[2].is_empty() && s[3] == "no",
            "{}: first boot unit ran again after a reboot: {s:?}",
            self.name
        );
    }
}

/// Start and size in bytes of the image's partitions, from `sfdisk --json`.
fn partitions(image: &Path) -> Vec<(u64, u64)> {
    let v = chbuild::tools::run_json(Command::new("sfdisk").arg("--json").arg(image)).unwrap();
    let t = &v["partitiontable"];
    let sector = t["sectorsize"].as_u64().unwrap_or(512);
    t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * sector,
                p["size"].as_u64().unwrap() * sector,
            )
        })
        .collect()
}

/// Kernel, initramfs and command line out of an SD image's boot partition
/// (with mtools), as the Pi's firmware would read them.
fn boot_of_image(image: &Path, dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
    let parts = partitions(image);
    assert_eq!(
        parts.len(),
        2,
        "{name}: boot and root partitions: {parts:?}"
    );
    let at = format!("{}@@{}", image.display(), parts[0].0);
    let listing =
        chbuild::tools::run_stdout(Command::new("mdir").args(["-b", "-i"]).arg(&at).arg("::/"))
            .unwrap();
    let pick = |prefix: &str| -> String {
        let mut n: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.trim().strip_prefix("::/"))
            .filter(|n| n.starts_with(prefix))
            .collect();
        n.sort();
        n.last()
            .unwrap_or_else(|| panic!("{name}: no {prefix}* in the boot partition: {listing}"))
            .to_string()
    };
    let copy = |file: &str, to: &str| -> PathBuf {
        let dest = dir.join(format!("{name}-{to}"));
        chbuild::tools::run(
            Command::new("mcopy")
                .args(["-n", "-i"])
                .arg(&at)
                .arg(format!("::/{file}"))
                .arg(&dest),
        )
        .unwrap();
        dest
    };
    let kernel = copy(&pick("vmlinuz-"), "vmlinuz");
    let initrd = copy(&pick("initrd.img-"), "initrd.img");
    let cmdline = std::fs::read_to_string(copy("cmdline.txt", "cmdline.txt")).unwrap();
    assert!(
        cmdline.contains("root=PARTUUID="),
        "{name}: cmdline.txt: {cmdline}"
    );
    (kernel, initrd, cmdline)
}

fn find_in(dir: &Path, prefix: &str) -> PathBuf {
    let mut hits: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    hits.sort();
    hits.pop()
        .unwrap_or_else(|| panic!("no {prefix}* in {}", dir.display()))
}

fn grow(image: &Path, by: u64) {
    let len = std::fs::metadata(image).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .unwrap()
        .set_len(len + by)
        .unwrap();
}

/// An ssh-agent holding the admin key, killed on drop: the admin's
/// `ssh -A` to the controller, which then reaches the nodes with it.
struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent(dir: &Path, key: &Path) -> Agent {
    let socket = dir.join("agent.sock");
    let _ = std::fs::remove_file(&socket);
    let child = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .stdout(Stdio::null())
        .spawn()
        .expect("starting ssh-agent");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "ssh-agent made no socket");
        std::thread::sleep(Duration::from_millis(100));
    }
    chbuild::tools::run(
        Command::new("ssh-add")
            .arg("-q")
            .arg(key)
            .env("SSH_AUTH_SOCK", &socket),
    )
    .unwrap();
    Agent { child, socket }
}

/// Poll `what` on `vm` until `ok` accepts its output.
fn wait_until(vm: &mut Vm, check: &str, script: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let o = vm.ssh(script);
        let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if o.status.success() && ok(&out) {
            return out;
        }
        if Instant::now() > deadline {
            let msg = format!(
                "{check}: `{script}` gave {out:?} for 5 minutes: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            vm.fail(&msg);
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

#[test]
fn a_virtual_clusterhat_boots_and_runs_a_slurm_job() {
    if let Some(why) = skip_reason() {
        common::skip(&why);
        return;
    }
    let started = Instant::now();
    let dir = workdir();
    let run = dir.join("run");
    let c = Chbuild {
        secrets: dir.join("secrets"),
        store: dir.join("store"),
    };
    if !c.secrets.join("admin_ed25519").exists() {
        c.ok(&["secrets", "init"]);
    }

    // ---- what chbuild builds, as a user would run it
    let out = dir.join("out");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    // The tarball gives deploy its build id; the tree comes beside it.
    c.ok(&["image", "z1", "--output", &s(&out)]);
    let card = run.join("clusterhat.img");
    c.ok(&["sd", CONTROLLER, "--output", &s(&card)]);
    let p5_img = run.join("p5.img");
    c.ok(&["sd", "p5", "--output", &s(&p5_img)]);
    // On the controller, `chbuild deploy` installs z1 into ClusterCTRL's
    // NFS directory; here under a root the test hands the controller.
    let deployed = dir.join("deployed");
    c.ok(&[
        "deploy",
        "z1",
        "--from",
        &s(&out),
        "--root",
        &s(&deployed),
        "--no-power",
    ]);
    let nfs = deployed.join("var/lib/clusterctrl/nfs");
    let p1 = nfs.join("p1");
    assert!(p1.join("etc/hostname").is_file(), "deploy left no p1 tree");
    let zeros_disk = run.join("zeros.ext4");
    chbuild::tools::run(
        Command::new("mke2fs")
            .args([
                "-q",
                "-t",
                "ext4",
                "-L",
                "zeros",
                "-E",
                "root_owner=0:0",
                "-d",
            ])
            .arg(&nfs)
            .arg(&zeros_disk)
            .arg("2G"),
    )
    .unwrap();
    eprintln!("built and deployed in {:.0?}", started.elapsed());

    // Who is who: host keys from the cluster's known_hosts, the
    // controller's from the secrets directory.
    let known_hosts = run.join("known_hosts");
    let controller_key = std::fs::read_to_string(
        c.secrets
            .join("hostkeys/clusterhat/ssh_host_ed25519_key.pub"),
    )
    .unwrap();
    let mut kh = std::fs::read_to_string(out.join("known_hosts")).unwrap();
    let mut parts = controller_key.split_whitespace();
    kh.push_str(&format!(
        "{CONTROLLER} {} {}\n",
        parts.next().unwrap(),
        parts.next().unwrap()
    ));
    std::fs::write(&known_hosts, kh).unwrap();
    let key = c.secrets.join("admin_ed25519");
    let agent = agent(&run, &key);
    let net = Netns::new();
    let ssh = Ssh {
        netns: net.name.clone(),
        key,
        known_hosts,
        agent: agent.socket.clone(),
    };

    // ---- the controller: eth0 on the LAN, z1's USB link
    let (ck, ci, ccmd) = boot_of_image(&card, &run, CONTROLLER);
    // QEMU's socket link between the controller and z1, on the
    // namespace's own loopback.
    let usb1_port: u16 = 10001;
    let controller_boot = Boot {
        kernel: ck,
        initrd: ci,
        cmdline: ccmd,
        memory_mb: 1024,
        cpus: 2,
        args: [
            "-drive",
            &format!("file={},format=raw,if=none,id=sd", card.display()),
            "-device",
            "virtio-blk-pci,drive=sd",
            "-drive",
            &format!("file={},format=raw,if=none,id=zeros", zeros_disk.display()),
            "-device",
            "virtio-blk-pci,drive=zeros,serial=zeros",
            "-netdev",
            "tap,id=lan,ifname=clan,script=no,downscript=no",
            // eth0, the LAN (no option ROM: the kernel is loaded directly).
            "-device",
            "virtio-net-pci,netdev=lan,mac=52:54:00:c1:05:00,romfile=",
            "-netdev",
            &format!("socket,id=usb1,listen=127.0.0.1:{usb1_port}"),
            "-device",
            "virtio-net-pci,netdev=usb1,mac=00:22:82:ff:fe:01,romfile=",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect(),
    };
    let mut controller = Vm::start(
        CONTROLLER,
        &controller_boot,
        &run,
        Route::Lan(CONTROLLER_LAN),
        &net,
        &ssh,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !listening(controller.child.id(), usb1_port) {
        if Instant::now() > deadline {
            controller.fail("QEMU does not listen for z1's USB link");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // ---- p5 from its card, on the LAN; a larger card than the image
    let (pk, pi, pcmd) = boot_of_image(&p5_img, &run, "p5");
    let root_size = partitions(&p5_img)[1].1;
    let grow_by: u64 = 512 << 20;
    grow(&p5_img, grow_by);
    let p5_boot = Boot {
        kernel: pk,
        initrd: pi,
        cmdline: pcmd,
        memory_mb: 1024,
        cpus: 1,
        args: [
            "-drive",
            &format!("file={},format=raw,if=none,id=sd", p5_img.display()),
            "-device",
            "virtio-blk-pci,drive=sd",
            "-netdev",
            "tap,id=lan,ifname=p5lan,script=no,downscript=no",
            "-device",
            "virtio-net-pci,netdev=lan,mac=52:54:00:c1:05:05,romfile=",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect(),
    };
    let mut p5 = Vm::start("p5", &p5_boot, &run, Route::Lan("172.16.2.205"), &net, &ssh);

    let controller_id = controller.wait_booted(None);
    // Stand-in for `chbuild deploy` having written the SD card: the
    // deployed directory comes on a second disk.
    controller.run_for(
        "the Zeros' NFS directory",
        "sudo -n mount /dev/disk/by-id/virtio-zeros /var/lib/clusterctrl/nfs",
    );
    // Exit status 1 for the slots with no Zero deployed (p2..p4); what
    // counts is z1's export, checked below.
    controller.run("sudo -n exportfs -ra 2>/dev/null || true");
    let exports = controller.run("sudo -n exportfs -v");
    assert!(
        exports.contains("/var/lib/clusterctrl/nfs/p1") && exports.contains("172.19.180.1"),
        "controller: z1's root is not exported: {exports}"
    );

    // ---- z1, as rpiboot would start it: kernel, initramfs and command
    // line from its deployed boot/firmware
    let firmware = p1.join("boot/firmware");
    let z1_boot = Boot {
        kernel: find_in(&firmware, "vmlinuz-"),
        initrd: find_in(&firmware, "initrd.img-"),
        cmdline: std::fs::read_to_string(firmware.join("cmdline.txt")).unwrap(),
        memory_mb: 512,
        cpus: 1,
        args: [
            "-netdev",
            &format!("socket,id=usb,connect=127.0.0.1:{usb1_port}"),
            "-device",
            "virtio-net-pci,netdev=usb,mac=00:22:82:ff:ff:01,romfile=",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect(),
    };
    assert!(
        z1_boot
            .cmdline
            .contains("nfsroot=172.19.180.254:/var/lib/clusterctrl/nfs/p1")
            && z1_boot.cmdline.contains(":p1:usb0.10:static"),
        "z1's deployed cmdline.txt: {}",
        z1_boot.cmdline
    );
    let mut z1 = Vm::start("z1", &z1_boot, &run, Route::Via("172.19.181.1"), &net, &ssh);
    let p5_id = p5.wait_booted(None);
    z1.wait_booted(None);

    // ---- every node on its own
    controller.check_roles(CONTROLLER);
    controller.check_baked(
        &["slurmctld", "munge", "nfs-kernel-server"],
        &["slurmctld", "munge", "nfs-server", "systemd-networkd"],
    );
    z1.check_roles("z1");
    z1.check_baked(&["slurmd", "munge"], &["slurmd", "munge"]);
    let root = z1.run("findmnt -no SOURCE,FSTYPE /");
    assert!(
        root.starts_with("172.19.180.254:/var/lib/clusterctrl/nfs/p1") && root.contains("nfs"),
        "z1: the root is not ClusterCTRL's NFS export: {root}"
    );
    let vlan = z1.run("ip -4 -o addr show dev usb0.10");
    assert!(vlan.contains("172.19.180.1/24"), "z1: usb0.10: {vlan}");
    let usb0 = z1.run("ip -4 -o addr show dev usb0");
    assert!(usb0.contains("172.19.181.1/24"), "z1: usb0: {usb0}");
    p5.check_roles("p5");
    p5.check_baked(
        &["nfs-kernel-server", "docker.io"],
        &["nfs-server", "docker"],
    );
    let addr = p5.run("ip -4 -o addr show dev eth0");
    assert!(addr.contains("172.16.2.205/24"), "p5: eth0: {addr}");
    let exports = p5.run("sudo -n exportfs -v");
    assert!(exports.contains("/opt/data"), "p5: exports: {exports}");
    assert!(
        p5.run("groups").split_whitespace().any(|g| g == "docker"),
        "p5: the user is not in the docker group"
    );
    p5.run_for(
        "docker",
        "sudo -n docker info --format '{{.ServerVersion}}'",
    );
    // The root (found by PARTUUID) was grown to the end of the larger card.
    let part = p5.run("lsblk -bdno SIZE $(findmnt -no SOURCE /)");
    let part: u64 = part.parse().unwrap();
    assert!(
        part >= root_size + grow_by - (8 << 20),
        "p5: root partition is {part} bytes, was {root_size} on a card grown by {grow_by}"
    );

    // ---- the cluster
    // From p5, z1 answers through the route to the Zero network.
    let via = p5.run("ip route get 172.19.181.1");
    assert!(via.contains("via 172.16.2.200"), "p5: route to z1: {via}");
    p5.run_for("p5 reaches z1", "ping -c 1 -W 10 172.19.181.1");

    // munge: a credential of the controller, decoded on z1 (the admin's
    // agent forwarded; the controller's SSH config and known_hosts).
    let un = controller.run_for(
        "munge across nodes",
        "munge -n | ssh -o BatchMode=yes z1 unmunge",
    );
    assert!(un.contains("STATUS:          Success (0)"), "{un}");
    // The controller knows every booted node's host key already.
    controller.run_for("controller's known_hosts", "ssh -o BatchMode=yes p5 true");

    // Slurm: z1 idle, a step and a batch job on it.
    wait_until(
        &mut controller,
        "sinfo shows z1 idle",
        "sinfo -h -n z1 -o %t",
        |s| s == "idle",
    );
    let host = controller.run_for("srun on z1", "timeout 300 srun -w z1 hostname");
    assert_eq!(host, "z1", "srun -w z1 hostname");
    let job = controller.run_for(
        "sbatch on z1",
        "sbatch --parsable -w z1 -o /dev/null --wrap 'echo \"$(hostname) $SLURM_JOB_ID\" > /opt/data/job-$SLURM_JOB_ID.txt'",
    );
    let file = format!("/opt/data/job-{job}.txt");
    let seen = wait_until(
        &mut p5,
        "the batch job's file on p5",
        &format!("cat {file} 2>/dev/null || true"),
        |s| !s.is_empty(),
    );
    assert_eq!(seen, format!("z1 {job}"), "p5: {file}");

    // ---- a reboot of p5 and of z1 (whose root stays on NFS while it
    // shuts down): the first-boot unit does not run again
    let z1_id = z1.run("cat /proc/sys/kernel/random/boot_id");
    let reboot = Instant::now();
    z1.begin_reboot();
    p5.begin_reboot();
    p5.wait_booted(Some(&p5_id));
    z1.wait_booted(Some(&z1_id));
    eprintln!("p5 and z1: reboot took {:.0?}", reboot.elapsed());
    for (vm, name) in [(&mut p5, "p5"), (&mut z1, "z1")] {
        vm.check_firstboot_not_again();
        vm.check_roles(name);
    }
    let _ = controller_id;

    eprintln!(
        "cluster: boot controller {:.0?}, p5 {:.0?}, z1 {:.0?}; whole test {:.0?}",
        controller.booted_in.unwrap(),
        p5.booted_in.unwrap(),
        z1.booted_in.unwrap(),
        started.elapsed()
    );
}
