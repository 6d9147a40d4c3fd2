//! SSH: the user's `authorized_keys`, an sshd drop-in (key-only login, no
//! root login, as the profile says), the node's own host key from the
//! secrets directory (so the cluster's `known_hosts` holds from the first
//! connection) and the `ssh` flag in the boot directory.

use super::{enable_unit, user_owner, RoleCtx};
use crate::overlay::write::{Owner, TreeWriter};
use crate::profile::plan::UserPlan;
use anyhow::{bail, Result};

pub const DROP_IN: &str = "etc/ssh/sshd_config.d/50-chbuild.conf";
pub const HOST_KEY: &str = "etc/ssh/ssh_host_ed25519_key";

/// Used when the base has no `sshd_config` and no Debian template: the
/// Debian defaults that matter, and the drop-in directory.
const MINIMAL_SSHD_CONFIG: &str = "\
Include /etc/ssh/sshd_config.d/*.conf
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
";

pub fn drop_in(u: &UserPlan) -> String {
    let root = match (u.permit_root_login, u.ssh_key_only) {
        (false, _) => "no",
        (true, true) => "prohibit-password",
        (true, false) => "yes",
    };
    let pw = if u.ssh_key_only { "no" } else { "yes" };
    format!(
        "# Written by chbuild from the profile's [user] settings.\n\
         # Only the host key baked from the secrets directory, so every node\n\
         # presents the key the cluster's known_hosts lists.\n\
         HostKey /{HOST_KEY}\n\
         PasswordAuthentication {pw}\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin {root}\n\
         PubkeyAuthentication yes\n"
    )
}

pub fn apply(ctx: &RoleCtx, w: &mut TreeWriter) -> Result<()> {
    let u = &ctx.plan.user;
    let keys = &ctx.secrets.authorized_keys;
    if keys.is_empty() && u.ssh_key_only {
        bail!(
            "the user {} may only log in with a key, but the profile gives no key \
             (user.ssh_authorized_keys or ssh_authorized_keys_file)",
            u.name
        );
    }
    let owner = user_owner(w, ctx.plan)?;
    let ssh_dir = format!("home/{}/.ssh", u.name);
    w.mkdir(&ssh_dir, 0o700, owner)?;
    let mut text = String::new();
    for k in keys {
        text.push_str(k.trim());
        text.push('\n');
    }
    w.write(
        format!("{ssh_dir}/authorized_keys"),
        text.as_bytes(),
        0o600,
        owner,
    )?;

    // The drop-in only counts when sshd_config includes its directory
    // (Debian's does); a base without one gets Debian's template.
    let main = match w.read_string("etc/ssh/sshd_config")? {
        Some(t) => Some(t),
        None => w.read_string("usr/share/openssh/sshd_config")?,
    };
    let main = match main {
        Some(t)
            if t.lines().any(|l| {
                l.trim_start().starts_with("Include") && l.contains("/etc/ssh/sshd_config.d/")
            }) =>
        {
            t
        }
        Some(t) => format!("Include /etc/ssh/sshd_config.d/*.conf\n{t}"),
        None => MINIMAL_SSHD_CONFIG.to_string(),
    };
    w.write("etc/ssh/sshd_config", main.as_bytes(), 0o644, Owner::ROOT)?;
    w.write(DROP_IN, drop_in(u).as_bytes(), 0o644, Owner::ROOT)?;

    // Host keys from the base would be the same on every node built from
    // it: only the node's own key stays.
    let etc_ssh = w.host_path("etc/ssh")?;
    if let Ok(rd) = std::fs::read_dir(&etc_ssh) {
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ssh_host_"))
            .collect();
        names.sort();
        for n in names {
            w.remove(format!("etc/ssh/{n}"))?;
        }
    }
    let key = ctx.secrets.host_key(&ctx.plan.name)?;
    w.write(HOST_KEY, key.private.as_bytes(), 0o600, Owner::ROOT)?;
    w.write(
        format!("{HOST_KEY}.pub"),
        key.public.as_bytes(),
        0o644,
        Owner::ROOT,
    )?;
    // Raspberry Pi OS regenerates host keys at first boot: mask that, or the
    // node would no longer match known_hosts.
    let regen = "regenerate_ssh_host_keys.service";
    if super::find_unit(w, regen).is_some() {
        w.remove(format!(
            "etc/systemd/system/multi-user.target.wants/{regen}"
        ))?;
        w.symlink(format!("etc/systemd/system/{regen}"), "/dev/null")?;
    }
    enable_unit(w, "ssh.service", "multi-user.target")?;
    // The flag Raspberry Pi OS's sshswitch reads to enable sshd.
    w.write(
        format!("{}/ssh", ctx.plan.boot_dir),
        b"",
        0o644,
        Owner::ROOT,
    )?;
    Ok(())
}
