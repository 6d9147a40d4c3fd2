//! The only module that runs external programs. Each run is logged with its
//! command line, and a failure carries the tail of the program's stderr.
//! Every tool is checked before work starts, with the package to install.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A program chbuild needs, with the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
    pub why: &'static str,
}

pub const MKE2FS: Tool = Tool {
    program: "mke2fs",
    package: "e2fsprogs (>= 1.47.1, from bookworm-backports on Debian 12)",
    why: "to build the ext4 root partition",
};
pub const LSBLK: Tool = Tool {
    program: "lsblk",
    package: "util-linux",
    why: "to show a device's partitions before it is overwritten",
};
pub const MMDEBSTRAP: Tool = Tool {
    program: "mmdebstrap",
    package: "mmdebstrap",
    why: "to build a base from Debian packages",
};

pub const CLUSTERCTRL: Tool = Tool {
    program: "clusterctrl",
    package: "clusterctrl (from the ClusterCTRL controller image)",
    why: "to switch Zero power and read its state",
};
pub const USBBOOT_INIT: Tool = Tool {
    program: "usbboot-init",
    package: "clusterctrl (from the ClusterCTRL controller image)",
    why: "to configure a Zero's tree for USB boot the way ClusterCTRL does",
};

/// Find a program on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

impl Tool {
    /// Fail with what to install when the tool is missing.
    pub fn require(&self) -> Result<PathBuf> {
        which(self.program).ok_or_else(|| {
            anyhow::anyhow!(
                "`{}` is needed {} but is not on PATH: install the package {} (apt-get install {})",
                self.program,
                self.why,
                self.package,
                self.package
                    .split_whitespace()
                    .next()
                    .unwrap_or(self.package)
            )
        })
    }

    pub fn command(&self) -> Result<Command> {
        Ok(Command::new(self.require()?))
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    lines[start..].join("\n")
}

/// Run a command to completion, capturing output; a non-zero exit is an
/// error that includes the command line and the tail of stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let line = describe(cmd);
    tracing::debug!(command = %line, "running");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}):\n{}{}",
            out.status,
            tail(&out.stderr),
            if out.stderr.is_empty() {
                tail(&out.stdout)
            } else {
                String::new()
            }
        );
    }
    Ok(out)
}

/// Run and return stdout as text.
pub fn run_stdout(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run and parse stdout as JSON (for tools that offer it: lsblk, sfdisk).
pub fn run_json(cmd: &mut Command) -> Result<serde_json::Value> {
    let line = describe(cmd);
    let text = run_stdout(cmd)?;
    serde_json::from_str(&text).with_context(|| format!("parsing the JSON printed by `{line}`"))
}

/// Run a command whose exit status cannot be trusted (usbboot-init exits 0
/// on every failure): return its output whatever the status.
pub fn run_unchecked(cmd: &mut Command) -> Result<Output> {
    let line = describe(cmd);
    tracing::debug!(command = %line, "running");
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{line}`"))
}

/// Build a command for a program that is not one of the fixed tools (for
/// instance `usbboot-init` under a test prefix).
pub fn command<S: AsRef<OsStr>>(program: S) -> Command {
    Command::new(program)
}

/// Install Debian packages on the system at `root` with apt-get: directly
/// on `/`, through `chroot` under another root (a mounted card). The
/// program is `$CHBUILD_APT_GET` when set (a wrapper, or a stand-in in
/// tests; under another root it is a path inside that root), else
/// `apt-get`. A non-zero exit is an error carrying apt's stderr.
pub fn apt_install(root: &Path, packages: &[String]) -> Result<()> {
    let apt = std::env::var("CHBUILD_APT_GET").unwrap_or_else(|_| "apt-get".into());
    let mut cmd = if root == Path::new("/") {
        Command::new(&apt)
    } else {
        let mut c = Command::new("chroot");
        c.arg(root).arg(&apt);
        c
    };
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends", "--"])
        .args(packages);
    run(&mut cmd)?;
    Ok(())
}

pub const APT_GET: Tool = Tool {
    program: "apt-get",
    package: "apt",
    why: "to install the packages of a package layer",
};
pub const APT_CACHE: Tool = Tool {
    program: "apt-cache",
    package: "apt",
    why: "to check that every package of a layer exists",
};
pub const LAYER_UNSHARE: Tool = Tool {
    program: "unshare",
    package: "util-linux",
    why: "to build a package layer in a private mount namespace",
};
pub const LAYER_SETPRIV: Tool = Tool {
    program: "setpriv",
    package: "util-linux",
    why: "to stop a package layer build when chbuild stops",
};

/// Run `argv` after the shell `script` (given `script_args`) has set up
/// mounts, in a mount namespace of its own: the mounts vanish with it, and
/// it is killed with chbuild (`setpriv --pdeathsig`, `unshare
/// --kill-child`), so a killed build never leaves a mount behind. The exit
/// status is the caller's to judge; the output is returned whole.
pub fn run_with_private_mounts(
    script: &str,
    script_args: &[&Path],
    argv: &[std::ffi::OsString],
    env: &[(&str, &str)],
) -> Result<Output> {
    let mut cmd = LAYER_SETPRIV.command()?;
    cmd.args(["--pdeathsig", "KILL", "--"])
        .arg(LAYER_UNSHARE.require()?)
        .args([
            "--mount",
            "--propagation",
            "private",
            "--fork",
            "--kill-child=SIGKILL",
            "--",
            "sh",
            "-c",
            script,
            "chbuild-layer",
        ])
        .args(script_args)
        .arg("--")
        .args(argv);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_unchecked(&mut cmd)
}

/// `systemctl ARGS` on the running system.
pub fn systemctl(args: &[&str]) -> Result<()> {
    run(Command::new("systemctl").args(args))?;
    Ok(())
}

/// Check that binfmt_misc can run binaries of a foreign architecture, and
/// say exactly what to run when it cannot.
pub fn check_foreign_arch(qemu_name: &str) -> Result<()> {
    let native = std::env::consts::ARCH;
    if native == qemu_name || (native == "aarch64" && qemu_name == "arm") {
        return Ok(());
    }
    let status = Path::new("/proc/sys/fs/binfmt_misc/status");
    let handler = Path::new("/proc/sys/fs/binfmt_misc").join(format!("qemu-{qemu_name}"));
    let qemu = format!("qemu-{qemu_name}-static");
    if which(&qemu).is_none() && which(&format!("qemu-{qemu_name}")).is_none() {
        bail!(
            "building a {qemu_name} base on {native} needs `{qemu}`: apt-get install qemu-user-static binfmt-support"
        );
    }
    if !status.exists() {
        bail!(
            "binfmt_misc is not mounted, so {qemu_name} binaries cannot run here: run\n  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc\n  update-binfmts --enable"
        );
    }
    let enabled = std::fs::read_to_string(&handler)
        .map(|s| s.lines().next() == Some("enabled"))
        .unwrap_or(false);
    if !enabled {
        bail!(
            "the binfmt_misc handler {} is not registered or not enabled: run\n  update-binfmts --enable qemu-{qemu_name}",
            handler.display()
        );
    }
    Ok(())
}

// Checkers: the real daemons read chbuild's configuration in the tests
// (`tests/roles_checkers.rs`), each skipped with a message when missing.
pub const SSHD: Tool = Tool {
    program: "/usr/sbin/sshd",
    package: "openssh-server",
    why: "to check the sshd configuration",
};
pub const SYSTEMD_ANALYZE: Tool = Tool {
    program: "systemd-analyze",
    package: "systemd",
    why: "to verify the systemd units",
};
pub const SLURMCTLD: Tool = Tool {
    program: "/usr/sbin/slurmctld",
    package: "slurmctld",
    why: "to check slurm.conf",
};
pub const SLURMD: Tool = Tool {
    program: "/usr/sbin/slurmd",
    package: "slurmd",
    why: "to check slurm.conf",
};
pub const MUNGED: Tool = Tool {
    program: "/usr/sbin/munged",
    package: "munge",
    why: "to check the munge key",
};
pub const MUNGE: Tool = Tool {
    program: "munge",
    package: "munge",
    why: "to encode a credential with the munge key",
};
pub const UNMUNGE: Tool = Tool {
    program: "unmunge",
    package: "munge",
    why: "to decode a credential with the munge key",
};
pub const EXPORTFS: Tool = Tool {
    program: "/usr/sbin/exportfs",
    package: "nfs-kernel-server",
    why: "to check the NFS exports",
};
pub const UNSHARE: Tool = Tool {
    program: "unshare",
    package: "util-linux",
    why: "to check exports in a private mount namespace",
};
pub const SETPRIV: Tool = Tool {
    program: "setpriv",
    package: "util-linux",
    why: "to run munged as the tree's munge user",
};
