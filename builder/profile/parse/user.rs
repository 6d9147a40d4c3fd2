//! `[user]` and `[secrets]`.

use super::Ctx;
use crate::profile::schema::{RawSecrets, RawUser};
use crate::profile::{check_secret_mode, ProfileError, User};
use std::path::{Path, PathBuf};

/// The profile's secrets directory: `[secrets] dir`, else
/// `secrets/<cluster>`.
pub(super) fn secrets_dir(raw: &RawSecrets, cluster: &str) -> PathBuf {
    PathBuf::from(
        raw.dir
            .clone()
            .unwrap_or_else(|| format!("secrets/{cluster}")),
    )
}

/// The login user; its password hash comes from a private file or the
/// environment, never inline.
pub(super) fn user(ctx: &Ctx, u: &RawUser, secrets_dir: &Path) -> Result<User, ProfileError> {
    if u.password_hash_file.is_none() && u.password_hash_env.is_none() {
        return Err(ctx.err(
            u.name.span(),
            "user.password_hash_file",
            "give `password_hash_file` or `password_hash_env`: the hash is never written inline",
        ));
    }
    let password_hash_file = match &u.password_hash_file {
        Some(f) => {
            let p = secrets_dir.join(f.get_ref());
            check_secret_mode(&p).map_err(|m| ctx.err(f.span(), "user.password_hash_file", m))?;
            Some(p)
        }
        None => None,
    };
    for k in &u.ssh_authorized_keys {
        if ssh_key::PublicKey::from_openssh(k.get_ref()).is_err() {
            return Err(ctx.err(
                k.span(),
                "user.ssh_authorized_keys",
                "not an OpenSSH public key (`ssh-ed25519 AAAA... comment`)",
            ));
        }
    }
    Ok(User {
        name: u.name.get_ref().clone(),
        password_hash_file,
        password_hash_env: u.password_hash_env.clone(),
        ssh_authorized_keys: u
            .ssh_authorized_keys
            .iter()
            .map(|k| k.get_ref().clone())
            .collect(),
        ssh_authorized_keys_file: u
            .ssh_authorized_keys_file
            .as_ref()
            .map(|f| secrets_dir.join(f)),
        ssh_key_only: u.ssh_key_only,
        permit_root_login: u.permit_root_login,
        sudo: u.sudo,
        uid: u.uid,
    })
}
