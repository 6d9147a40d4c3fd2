//! Boot chbuild's own outputs under QEMU (arm64 `virt` machine, software
//! emulation) and check from outside, over SSH, that every baked role took
//! effect: host name and /etc/hosts, the host key of known_hosts, key-only
//! login, sudo, the first-boot unit (once, not again after a reboot),
//! munge, no failed unit; on the SD node, the grown root file system.
//!
//! Needs root (the base store keeps owners), `qemu-system-aarch64`
//! (Debian's qemu-system-arm), `ssh` and the Pi fixture; otherwise each test
//! prints `SKIP: <reason>` (a failure under `CI=true`). `CHBUILD_SKIP_BOOT=1` skips the boots on a
//! developer machine. The boots run one at a time (each VM has 2 vCPUs).
//!
//! The test profile (tests/profiles/boot.toml) lists only packages the
//! fixture already has, so the first boot needs no Debian mirror.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const PROFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/profiles/boot.toml");
const EPOCH: &str = "1700000000";
/// From QEMU start to sshd answering, and to the end of the boot. Software
/// emulation on a busy 2-core machine took up to 6 minutes.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

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
        ("ssh", "openssh-client"),
    ] {
        if chbuild::tools::which(tool).is_none() {
            return Some(format!(
                "{tool} is not installed (Debian package {package})"
            ));
        }
    }
    None
}

macro_rules! skip_unless_ready {
    () => {
        if let Some(why) = skip_reason() {
            common::skip(&why);
            return;
        }
    };
}

/// One boot at a time: two emulated VMs on two cores would each take
/// twice as long and blur the timings.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The work directory of one test, replaced by the next run and kept after
/// a failure for a look (serial log, trees).
fn workdir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("boot_qemu")
        .join(name);
    if dir.exists() {
        chbuild::fs::remove_tree(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Secrets and the base store shared by the tests of this binary, so the
/// fixture is ingested once.
fn shared() -> &'static (PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("boot_qemu");
        let secrets = root.join("secrets");
        let store = root.join("store");
        std::fs::create_dir_all(&root).unwrap();
        if !secrets.join("admin_ed25519").exists() {
            chbuild_ok(&["secrets", "init"], &secrets, &store);
        }
        (secrets, store)
    })
}

fn chbuild_ok(args: &[&str], secrets: &Path, store: &Path) -> Output {
    let started = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_chbuild"))
        .args(args)
        .arg("--profile")
        .arg(PROFILE)
        .arg("--secrets")
        .arg(secrets)
        .arg("--store")
        .arg(store)
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

/// A TCP port free on the loopback interface right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How QEMU gets the kernel, the initramfs and the root file system.
struct BootSpec {
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
    /// Extra QEMU arguments: the root file system device.
    root_args: Vec<String>,
    /// QEMU's user network plays the node's network: its subnet, the
    /// gateway (the controller's address there) and the node's address.
    net: String,
    gateway: String,
    guest: String,
    /// MAC of the virtual NIC (the Zero renames it to usb0 by MAC).
    mac: &'static str,
}

/// A running VM: QEMU killed on drop, serial log in a file.
struct Vm {
    name: String,
    child: Child,
    log: PathBuf,
    port: u16,
    key: PathBuf,
    known_hosts: PathBuf,
    started: Instant,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    fn start(name: &str, spec: &BootSpec, dir: &Path, known_hosts: &Path) -> Vm {
        let port = free_port();
        let log = dir.join(format!("{name}-serial.log"));
        let netdev = format!(
            // restrict=on: the guest reaches nothing beyond QEMU's user
            // network (the forwarded SSH port still works), so nothing can
            // be downloaded at first boot: every package must be baked.
            "user,id=n0,restrict=on,net={},host={},hostfwd=tcp:127.0.0.1:{port}-{}:22",
            spec.net, spec.gateway, spec.guest
        );
        let mut cmd = Command::new("qemu-system-aarch64");
        cmd.args([
            "-M",
            "virt",
            "-cpu",
            "cortex-a57",
            "-m",
            "1024",
            "-smp",
            "2",
        ])
        .args(["-nographic", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(&spec.kernel)
        .arg("-initrd")
        .arg(&spec.initrd)
        .arg("-append")
        .arg(&spec.cmdline)
        .args(&spec.root_args)
        .args(["-netdev", &netdev])
        // No option ROM: the virt machine boots the kernel directly, and
        // a CI machine may lack ipxe-qemu's ROM files.
        .arg("-device")
        .arg(format!(
            "virtio-net-pci,netdev=n0,mac={},romfile=",
            spec.mac
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        eprintln!("{name}: booting: {:?}", cmd);
        let child = cmd.spawn().expect("starting qemu-system-aarch64");
        let (secrets, _) = shared();
        Vm {
            name: name.to_string(),
            child,
            log,
            port,
            key: secrets.join("admin_ed25519"),
            known_hosts: known_hosts.to_path_buf(),
            started: Instant::now(),
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
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null"])
            .arg("-i")
            .arg(&self.key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=15",
                "-o",
                "ServerAliveInterval=15",
                "-o",
                "LogLevel=ERROR",
            ])
            // known_hosts names the node, not 127.0.0.1:port.
            .arg("-o")
            .arg(format!("HostKeyAlias={}", self.name))
            .args(extra)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("pi@127.0.0.1")
            .stdin(Stdio::null());
        c
    }

    fn ssh(&self, script: &str) -> Output {
        self.ssh_cmd(&[]).arg(script).output().expect("running ssh")
    }

    /// Run `script` on the node; its stdout, trimmed. Fails the test with
    /// stderr and the serial log tail when it fails.
    fn run(&mut self, script: &str) -> String {
        let o = self.ssh(script);
        if !o.status.success() {
            let msg = format!(
                "`{script}` failed ({}): {}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            self.fail(&msg);
        }
        String::from_utf8_lossy(&o.stdout).trim().to_string()
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
            let err = String::from_utf8_lossy(&o.stderr);
            if err.contains("Host key verification failed")
                || err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
                || err.contains("Permission denied")
            {
                let msg = format!("sshd answers but refuses us: {err}");
                self.fail(&msg);
            }
            let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if o.status.success() && !id.is_empty() && Some(id.as_str()) != not_boot {
                // sshd is up; wait for the rest of the boot (root uses the
                // private systemd socket: the fixture has no D-Bus).
                let state = self.ssh("sudo -n timeout 300 systemctl is-system-running --wait");
                eprintln!(
                    "{}: up after {:.0?} (system {})",
                    self.name,
                    self.started.elapsed(),
                    String::from_utf8_lossy(&state.stdout).trim()
                );
                return id;
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "no SSH on port {} within {BOOT_TIMEOUT:?}: {err}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_secs(5));
        }
    }

    fn reboot(&mut self, boot_id: &str) -> String {
        // The connection may drop before ssh sees an exit status.
        let _ = self.ssh("sudo -n systemctl reboot");
        self.started = Instant::now();
        self.wait_booted(Some(boot_id))
    }

    /// Every check of the issue that holds on any node.
    fn check_roles(&mut self, hostname: &str) {
        assert_eq!(self.run("hostname"), hostname);
        let hosts = self.run("getent hosts controller p0");
        assert_eq!(hosts.lines().count(), 2, "controller, p0: {hosts}");

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
            "password login not refused: {err}"
        );
        let sshd = self.run("sudo -n sshd -T");
        assert!(
            sshd.lines().any(|l| l == "passwordauthentication no"),
            "{sshd}"
        );
        self.run("sudo -n true");

        // munge with the baked key.
        let key = self.run("sudo -n stat -c '%a %U %G' /etc/munge/munge.key");
        assert_eq!(
            key, "400 munge munge",
            "mode and owner of /etc/munge/munge.key"
        );
        let un = self.run("munge -n | unmunge");
        assert!(un.contains("STATUS:          Success (0)"), "{un}");

        // No failed unit.
        let state = self.run("sudo -n systemctl is-system-running || true");
        let failed = self.run("sudo -n systemctl --failed --plain --no-legend --no-pager");
        assert!(
            state == "running" && failed.is_empty(),
            "system {state}; failed units:\n{failed}"
        );
    }

    /// What issue 11 promises of a baked node, in its first boot: the
    /// packages are installed and their units enabled, the first-boot unit
    /// had nothing to install, and `ll` runs exa (or eza).
    fn check_baked(&mut self, packages: &[&str], enabled: &[&str]) {
        for p in packages {
            let st = self.run(&format!("dpkg-query -W -f '${{Status}}' {p}"));
            assert_eq!(st, "install ok installed", "package {p}");
        }
        for u in enabled {
            let st = self.run(&format!("sudo -n systemctl is-enabled {u} || true"));
            assert_eq!(st, "enabled", "unit {u}");
        }
        let journal =
            self.run("sudo -n journalctl -b -o cat -u chbuild-firstboot.service --no-pager");
        assert!(
            journal.contains("nothing to install") && !journal.contains("apt-get"),
            "first-boot unit journal:\n{journal}"
        );
        let ll = self.run("bash -lc 'alias ll'");
        assert!(ll.contains("exa") || ll.contains("eza"), "ll is {ll}");
        // Aliases apply from the next line a shell reads.
        self.run("bash -c 'shopt -s expand_aliases\n. /etc/profile.d/chbuild-aliases.sh\nll / >/dev/null'");
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

    /// The first-boot unit ran once and succeeded; after a reboot it did
    /// not run again.
    fn check_firstboot_once(&mut self, boot_id: &str) -> String {
        let s = self.firstboot_state();
        assert_eq!(s.len(), 4, "{s:?}");
        assert_eq!(s[0], "success", "first boot unit: {s:?}");
        assert_eq!(s[1], "0", "first boot unit restarted: {s:?}");
        assert!(!s[2].is_empty(), "first boot unit did not run: {s:?}");
        self.run("test -e /var/lib/chbuild/firstboot.done");
        let started = Instant::now();
        let id = self.reboot(boot_id);
        eprintln!("{}: reboot took {:.0?}", self.name, started.elapsed());
        let s = self.firstboot_state();
        assert!(
            s[2].is_empty() && s[3] == "no",
            "first boot unit ran again after a reboot: {s:?}"
        );
        // The journal of this boot may only say the unit was skipped.
        let journal =
            self.run("sudo -n journalctl -b -o cat -u chbuild-firstboot.service --no-pager");
        assert!(
            journal
                .lines()
                .filter(|l| !l.starts_with("-- "))
                .all(|l| l.contains("was skipped because of an unmet condition")),
            "first-boot unit in this boot's journal:\n{journal}"
        );
        id
    }
}

/// The node's host name from the built tree.
fn hostname_of(tree: &Path) -> String {
    std::fs::read_to_string(tree.join("etc/hostname"))
        .unwrap()
        .trim()
        .to_string()
}

fn find_in(dir: &Path, prefix: &str) -> PathBuf {
    let mut hits: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    hits.sort();
    hits.pop()
        .unwrap_or_else(|| panic!("no {prefix}* in {}", dir.display()))
}

/// Kernel arguments for a 9p root from the baked cmdline.txt: the Zero's
/// own arguments minus those naming ClusterCTRL's NFS root and its USB
/// VLAN (`root=/dev/nfs boot=nfs nfsroot= ip=...usb0.10`), which cannot
/// work without a ClusterHAT.
fn ninep_cmdline(baked: &str) -> String {
    let drop = ["root=", "boot=", "nfsroot=", "ip=", "console="];
    let mut args: Vec<&str> = baked
        .split_whitespace()
        .filter(|a| !drop.iter().any(|d| a.starts_with(d)))
        .collect();
    args.extend([
        "console=ttyAMA0",
        // The Zero's initramfs says BOOT=nfs (conf.d/chbuild-usbboot), as
        // ClusterCTRL's does: a 9p root is a local boot.
        "boot=local",
        "root=rootfs",
        "rootfstype=9p",
        // cache=loose: nothing changes the tree on the host while the
        // guest runs, and without guest caching every lookup is a round
        // trip through emulated virtio; udev's coldplug then outlasts
        // ifupdown-pre's `udevadm settle` timeout.
        "rootflags=trans=virtio,version=9p2000.L,msize=512000,cache=loose",
    ]);
    args.join(" ")
}

/// A Zero (USB/NFS boot) from `chbuild image z1`, its tree served from the
/// host as the root file system.
///
/// Why 9p and not NFS: ClusterCTRL serves the Zero's root over NFS, but an
/// NFS root needs the kernel NFS server on the host (nfsd), which a CI
/// container does not have (no `nfsd` in /proc/filesystems, no way to load
/// it). A virtio 9p share exports the same directory without a server;
/// the Zero's initramfs mounts it like its NFS root.
#[test]
fn zero_boots_from_its_tree() {
    skip_unless_ready!();
    let _one = one_at_a_time();
    let dir = workdir("z1");
    let (secrets, store) = shared();
    let out = dir.join("out");
    chbuild_ok(
        &[
            "image",
            "z1",
            "--format",
            "dir",
            "--output",
            out.to_str().unwrap(),
        ],
        secrets,
        store,
    );
    // Boot a copy: the guest writes to its root, and the built tree shares
    // inodes with the store.
    let root = dir.join("z1-root");
    chbuild::tools::run(Command::new("cp").arg("-a").arg(out.join("z1")).arg(&root)).unwrap();
    let hostname = hostname_of(&root);

    // What cannot work outside a ClusterHAT, neutralized in the copy only:
    // 1. fstab mounts /boot/firmware from the controller's NFS export
    //    (172.19.180.254, absent under QEMU): commented out.
    let fstab_path = root.join("etc/fstab");
    let fstab = std::fs::read_to_string(&fstab_path).unwrap();
    let nfs_boot = fstab
        .lines()
        .find(|l| l.contains(" /boot/firmware nfs "))
        .expect("the Zero's fstab mounts /boot/firmware over NFS")
        .to_string();
    std::fs::write(
        &fstab_path,
        fstab.replace(&nfs_boot, &format!("# boot test: {nfs_boot}")),
    )
    .unwrap();
    // 2. The Zero's network is the USB gadget usb0; the virtual NIC takes
    //    its name, so the baked usb0 configuration is what brings it up.
    let mac = "52:54:00:c1:05:01";
    std::fs::create_dir_all(root.join("etc/systemd/network")).unwrap();
    std::fs::write(
        root.join("etc/systemd/network/10-boot-test-usb0.link"),
        format!("# boot test: the virtual NIC plays the Zero's USB gadget\n[Match]\nMACAddress={mac}\n\n[Link]\nName=usb0\n"),
    )
    .unwrap();

    let boot = root.join("boot/firmware");
    let baked = std::fs::read_to_string(boot.join("cmdline.txt")).unwrap();
    let spec = BootSpec {
        kernel: find_in(&boot, "vmlinuz-"),
        initrd: find_in(&boot, "initrd.img-"),
        cmdline: ninep_cmdline(&baked),
        root_args: vec![
            "-fsdev".into(),
            format!(
                "local,id=rootfs,path={},security_model=passthrough",
                root.display()
            ),
            "-device".into(),
            "virtio-9p-pci,fsdev=rootfs,mount_tag=rootfs,romfile=".into(),
        ],
        net: "172.19.181.0/24".into(),
        gateway: "172.19.181.254".into(),
        guest: "172.19.181.1".into(),
        mac,
    };
    let mut vm = Vm::start("z1", &spec, &dir, &out.join("known_hosts"));
    let id = vm.wait_booted(None);
    vm.check_roles(&hostname);
    vm.check_baked(&["slurmd", "munge"], &["slurmd.service", "munge.service"]);
    assert_eq!(
        vm.run("sudo -n systemctl is-active slurmd || true"),
        "active"
    );
    vm.check_firstboot_once(&id);
    vm.check_roles(&hostname);
    eprintln!("z1: all checks passed");
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

/// Copy `name` out of the FAT partition at `offset` with mtools.
fn mcopy(image: &Path, offset: u64, name: &str, dest: &Path) {
    chbuild::tools::run(
        Command::new("mcopy")
            .arg("-n")
            .arg("-i")
            .arg(format!("{}@@{offset}", image.display()))
            .arg(format!("::/{name}"))
            .arg(dest),
    )
    .unwrap();
}

/// The SD node p5 from `chbuild sd p5`: kernel, initramfs and command line
/// read out of the image's own boot partition, the image as the disk,
/// grown first so the first-boot grow step has room.
#[test]
fn sd_node_boots_from_its_image() {
    skip_unless_ready!();
    for (tool, package) in [("mcopy", "mtools"), ("sfdisk", "fdisk")] {
        if chbuild::tools::which(tool).is_none() {
            common::skip(&format!(
                "{tool} is not installed (Debian package {package})"
            ));
            return;
        }
    }
    let _one = one_at_a_time();
    let dir = workdir("p5");
    let (secrets, store) = shared();
    let out = dir.join("out");
    // known_hosts comes with the image output.
    chbuild_ok(
        &[
            "image",
            "p5",
            "--format",
            "dir",
            "--output",
            out.to_str().unwrap(),
        ],
        secrets,
        store,
    );
    let image = dir.join("p5.img");
    let o = Command::new(env!("CARGO_BIN_EXE_chbuild"))
        .args(["sd", "p5", "--output"])
        .arg(&image)
        .arg("--profile")
        .arg(PROFILE)
        .arg("--secrets")
        .arg(secrets)
        .arg("--store")
        .arg(store)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .expect("running chbuild sd");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "chbuild sd p5 failed: {err}");
    let hostname = hostname_of(&out.join("p5"));

    let parts = partitions(&image);
    assert_eq!(parts.len(), 2, "boot and root partitions: {parts:?}");
    let (boot_off, _) = parts[0];
    let (_, root_size) = parts[1];
    let listing = chbuild::tools::run_stdout(
        Command::new("mdir")
            .arg("-b")
            .arg("-i")
            .arg(format!("{}@@{boot_off}", image.display()))
            .arg("::/"),
    )
    .unwrap();
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("::/"))
        .collect();
    let pick = |prefix: &str| -> String {
        let mut n: Vec<&&str> = names.iter().filter(|n| n.starts_with(prefix)).collect();
        n.sort();
        n.last()
            .unwrap_or_else(|| panic!("no {prefix}* in the boot partition: {listing}"))
            .to_string()
    };
    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initrd.img");
    let cmdline_txt = dir.join("cmdline.txt");
    mcopy(&image, boot_off, &pick("vmlinuz-"), &kernel);
    mcopy(&image, boot_off, &pick("initrd.img-"), &initrd);
    mcopy(&image, boot_off, "cmdline.txt", &cmdline_txt);
    let baked = std::fs::read_to_string(&cmdline_txt).unwrap();
    assert!(baked.contains("root=PARTUUID="), "cmdline.txt: {baked}");
    // The image's own arguments, so root=PARTUUID=... is what finds the
    // root; the serial console added last becomes /dev/console.
    let cmdline = format!("{} console=ttyAMA0", baked.trim());

    // A card larger than the image: the first boot grows the root into it.
    let grow_by: u64 = 512 << 20;
    let len = std::fs::metadata(&image).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(len + grow_by)
        .unwrap();

    let spec = BootSpec {
        kernel,
        initrd,
        cmdline,
        root_args: vec![
            "-drive".into(),
            format!("file={},format=raw,if=none,id=sd", image.display()),
            "-device".into(),
            "virtio-blk-pci,drive=sd".into(),
        ],
        net: "172.16.2.0/24".into(),
        gateway: "172.16.2.200".into(),
        guest: "172.16.2.205".into(),
        mac: "52:54:00:c1:05:05",
    };
    let mut vm = Vm::start("p5", &spec, &dir, &out.join("known_hosts"));
    let id = vm.wait_booted(None);
    vm.check_roles(&hostname);
    vm.check_baked(
        &["nfs-kernel-server", "docker.io"],
        &["nfs-server.service", "docker.service"],
    );
    // The LAN address of the profile, from the product's own network
    // configuration (no test overlay).
    let addr = vm.run("ip -4 -o addr show dev eth0");
    assert!(addr.contains("172.16.2.205/24"), "eth0: {addr}");
    assert_eq!(
        vm.run("sudo -n systemctl is-active nfs-server docker || true"),
        "active\nactive"
    );
    let exports = vm.run("sudo -n exportfs -v");
    assert!(exports.contains("/opt/data"), "exports: {exports}");
    assert!(vm.run("groups").split_whitespace().any(|g| g == "docker"));
    vm.run("sudo -n docker info --format '{{.ServerVersion}}'");

    // The root (found by PARTUUID) was grown to the end of the larger disk.
    let root = vm.run("findmnt -no SOURCE /");
    let part = vm.run(&format!("lsblk -bdno SIZE {root}"));
    let part: u64 = part.parse().unwrap();
    assert!(
        part >= root_size + grow_by - (8 << 20),
        "root partition {root} is {part} bytes, was {root_size} in a disk grown by {grow_by}"
    );
    let fs = vm.run(&format!(
        "sudo -n dumpe2fs -h {root} 2>/dev/null | awk -F: '/^Block count/ {{c=$2}} /^Block size/ {{s=$2}} END {{print c*s}}'"
    ));
    let fs: u64 = fs.trim().parse().unwrap();
    assert!(
        fs + (8 << 20) >= part && fs > root_size + grow_by / 2,
        "root file system is {fs} bytes in a {part}-byte partition (was {root_size})"
    );

    vm.check_firstboot_once(&id);
    vm.check_roles(&hostname);
    eprintln!("p5: all checks passed");
}
