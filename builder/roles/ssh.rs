//! SSH: the user's `authorized_keys`, an sshd drop-in (key-only login, no
//! root login, as the profile says), the node's own host key from the
//! secrets directory (so the cluster's `known_hosts` holds from the first
//! connection) and the `ssh` flag in the boot directory. The files are
//! `overlays/roles/ssh/`; the host key is copied from the secrets.

use super::{enable_unit, user_owner, RoleCtx, Templates};
use crate::overlay::write::{Owner, TreeWriter};
use crate::profile::plan::UserPlan;
use anyhow::{bail, Result};
use serde_json::{json, Value};

pub const DROP_IN: &str = "etc/ssh/sshd_config.d/50-chbuild.conf";
pub const HOST_KEY: &str = "etc/ssh/ssh_host_ed25519_key";

/// What the templates read as `roles.ssh`: the user's keys, sshd's login
/// settings from the profile, and the base's `sshd_config` (the drop-in
/// only counts when it includes the drop-in directory, as Debian's does;
/// a base without one gets Debian's settings from the template).
pub fn values(u: &UserPlan, keys: &[String], base_config: Option<String>) -> Value {
    let permit_root_login = match (u.permit_root_login, u.ssh_key_only) {
        (false, _) => "no",
        (true, true) => "prohibit-password",
        (true, false) => "yes",
    };
    let includes = base_config.as_deref().is_some_and(|t| {
        t.lines()
            .any(|l| l.trim_start().starts_with("Include") && l.contains("/etc/ssh/sshd_config.d/"))
    });
    json!({
        "authorized_keys": keys.iter().map(|k| k.trim()).collect::<Vec<_>>(),
        "permit_root_login": permit_root_login,
        "password_authentication": if u.ssh_key_only { "no" } else { "yes" },
        "base_config": base_config,
        "base_includes_drop_ins": includes,
    })
}

pub fn apply(ctx: &RoleCtx, t: &mut Templates, w: &mut TreeWriter) -> Result<()> {
    let u = &ctx.plan.user;
    let keys = &ctx.secrets.authorized_keys;
    if keys.is_empty() && u.ssh_key_only {
        bail!(
            "the user {} may only log in with a key, but the profile gives no key \
             (user.ssh_authorized_keys or ssh_authorized_keys_file)",
            u.name
        );
    }
    // sshd's StrictModes: the user's own, unreadable to others, even when
    // the base's skeleton brought one.
    let owner = user_owner(w, ctx.plan)?;
    w.mkdir(format!("home/{}/.ssh", u.name), 0o700, owner)?;
    let base_config = match w.read_string("etc/ssh/sshd_config")? {
        Some(t) => Some(t),
        None => w.read_string("usr/share/openssh/sshd_config")?,
    };
    t.apply(w, "ssh", values(u, keys, base_config))?;

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
    Ok(())
}
