//! Cluster secrets: munge key, k3s token, SSH host keys, the admin key and
//! the user's password hash. Kept in one directory (0700, files 0600),
//! never logged, never written world-readable.

use crate::profile::{check_secret_mode, Profile};
use anyhow::{bail, Context, Result};
use rand::RngCore;
use ssh_key::{rand_core::OsRng, Algorithm, LineEnding, PrivateKey};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const MUNGE_KEY: &str = "munge.key";
pub const K3S_TOKEN: &str = "k3s-token";
pub const ADMIN_KEY: &str = "admin_ed25519";
pub const PASSWORD: &str = "password";
pub const PASSWORD_HASH: &str = "password.sha512crypt";

/// Path of a node's SSH host key inside the secrets directory.
pub fn host_key_path(dir: &Path, node: &str) -> PathBuf {
    dir.join("hostkeys").join(node).join("ssh_host_ed25519_key")
}

/// Write a secret file with mode 0600, refusing to replace one unless
/// `force`. Returns false when it was kept.
fn write_secret(path: &Path, data: &[u8], mode: u32, force: bool) -> Result<bool> {
    if path.exists() && !force {
        return Ok(false);
    }
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .with_context(|| format!("creating {}", parent.display()))?;
    // A new inode renamed into place: a crash never leaves a truncated key.
    let inode = crate::fs::Inode::new(mode, crate::fs::Durability::Publish);
    crate::fs::write_new(path, data, inode)?;
    Ok(true)
}

/// Write (or replace) one private file, 0600, in a 0700 directory.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    write_secret(path, data, 0o600, true).map(|_| ())
}

/// What `secrets init` did, for the report (names only, never contents).
#[derive(Debug, Default, serde::Serialize)]
pub struct InitReport {
    pub created: Vec<String>,
    pub kept: Vec<String>,
}

/// Create every secret the profile needs that does not exist yet.
pub fn init(profile: &Profile, dir: &Path, force: bool) -> Result<InitReport> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod {}", dir.display()))?;
    let mut report = InitReport::default();
    let mut note = |path: &Path, created: bool| {
        let rel = path.strip_prefix(dir).unwrap_or(path).display().to_string();
        if created {
            report.created.push(rel)
        } else {
            report.kept.push(rel)
        }
    };

    let mut munge = vec![0u8; 1024];
    OsRng.fill_bytes(&mut munge);
    let p = dir.join(MUNGE_KEY);
    note(&p, write_secret(&p, &munge, 0o600, force)?);

    let mut token = [0u8; 32];
    OsRng.fill_bytes(&mut token);
    let p = dir.join(K3S_TOKEN);
    note(
        &p,
        write_secret(
            &p,
            format!("{}\n", hex::encode(token)).as_bytes(),
            0o600,
            force,
        )?,
    );

    let p = dir.join(ADMIN_KEY);
    if !p.exists() || force {
        let (private, public) = new_ed25519(&format!("admin@{}", profile.name))?;
        write_secret(&p, private.as_bytes(), 0o600, true)?;
        write_secret(
            &dir.join(format!("{ADMIN_KEY}.pub")),
            public.as_bytes(),
            0o644,
            true,
        )?;
        note(&p, true);
    } else {
        note(&p, false);
    }

    // A random password, so the default profile builds unattended; the
    // admin reads it from the file (never from a log) or replaces the hash.
    let p = dir.join(PASSWORD_HASH);
    if !p.exists() || force {
        let mut raw = [0u8; 12];
        OsRng.fill_bytes(&mut raw);
        let password = hex::encode(raw);
        let params = sha_crypt::Sha512Params::new(5000).expect("5000 rounds are valid");
        let hash = sha_crypt::sha512_simple(&password, &params)
            .map_err(|e| anyhow::anyhow!("hashing the password: {e:?}"))?;
        write_secret(
            &dir.join(PASSWORD),
            format!("{password}\n").as_bytes(),
            0o600,
            true,
        )?;
        write_secret(&p, format!("{hash}\n").as_bytes(), 0o600, true)?;
        note(&p, true);
    } else {
        note(&p, false);
    }

    // The controller's key serves its card (`chbuild sd <controller>`).
    let controller = &profile.controller.hostname;
    let hosts = profile
        .nodes
        .iter()
        .map(|n| (&n.name, &n.hostname))
        .chain(std::iter::once((controller, controller)));
    for (name, hostname) in hosts {
        let p = host_key_path(dir, name);
        if p.exists() && !force {
            note(&p, false);
            continue;
        }
        let (private, public) = new_ed25519(&format!("root@{hostname}"))?;
        write_secret(&p, private.as_bytes(), 0o600, true)?;
        write_secret(&p.with_extension("pub"), public.as_bytes(), 0o644, true)?;
        note(&p, true);
    }
    Ok(report)
}

fn new_ed25519(comment: &str) -> Result<(String, String)> {
    let mut key =
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519).context("generating an ed25519 key")?;
    key.set_comment(comment);
    let private = key.to_openssh(LineEnding::LF)?.to_string();
    let public = format!("{}\n", key.public_key().to_openssh()?);
    Ok((private, public))
}

/// Secrets loaded for a build. Debug output never shows the contents.
pub struct Secrets {
    pub dir: PathBuf,
    pub munge_key: Vec<u8>,
    pub k3s_token: String,
    pub password_hash: String,
    pub authorized_keys: Vec<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets {{ dir: {:?}, .. }}", self.dir)
    }
}

/// A node's SSH host key pair (OpenSSH private key text, public key line).
pub struct HostKey {
    pub private: String,
    pub public: String,
}

fn read_secret(path: &Path) -> Result<Vec<u8>> {
    if !path.exists() {
        bail!(
            "missing secret {}: run `chbuild secrets init` first",
            path.display()
        );
    }
    check_secret_mode(path).map_err(anyhow::Error::msg)?;
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The user's keys: `ssh_authorized_keys` and those of
/// `ssh_authorized_keys_file`.
pub fn authorized_keys(profile: &Profile) -> Result<Vec<String>> {
    let mut keys = profile.user.ssh_authorized_keys.clone();
    if let Some(f) = &profile.user.ssh_authorized_keys_file {
        let text = fs::read_to_string(f)
            .with_context(|| format!("reading {} (run `chbuild secrets init`)", f.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            ssh_key::PublicKey::from_openssh(line)
                .with_context(|| format!("{}:{}: not an OpenSSH public key", f.display(), i + 1))?;
            keys.push(line.to_string());
        }
    }
    Ok(keys)
}

impl Secrets {
    pub fn load(profile: &Profile) -> Result<Secrets> {
        let dir = profile.secrets_dir.clone();
        let munge_key = read_secret(&dir.join(MUNGE_KEY))?;
        if munge_key.len() < 32 {
            bail!(
                "{}: a munge key needs at least 32 bytes",
                dir.join(MUNGE_KEY).display()
            );
        }
        let k3s_token = String::from_utf8_lossy(&read_secret(&dir.join(K3S_TOKEN))?)
            .trim()
            .to_string();
        let password_hash = password_hash(profile)?;
        let authorized_keys = authorized_keys(profile)?;
        Ok(Secrets {
            dir,
            munge_key,
            k3s_token,
            password_hash,
            authorized_keys,
        })
    }

    pub fn host_key(&self, node: &str) -> Result<HostKey> {
        let p = host_key_path(&self.dir, node);
        let private = String::from_utf8(read_secret(&p)?)
            .with_context(|| format!("{} is not text", p.display()))?;
        let key = PrivateKey::from_openssh(&private)
            .with_context(|| format!("{} is not an OpenSSH private key", p.display()))?;
        let public = format!("{}\n", key.public_key().to_openssh()?);
        Ok(HostKey { private, public })
    }
}

/// `$6$[rounds=N$]salt$digest`, salt and digest in crypt's alphabet: a
/// space, a colon or a newline would break the shadow file it goes into.
fn is_sha512crypt(hash: &str) -> bool {
    let Some(rest) = hash.strip_prefix("$6$") else {
        return false;
    };
    let rest = match rest.strip_prefix("rounds=") {
        Some(r) => match r.split_once('$') {
            Some((n, tail)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => tail,
            _ => return false,
        },
        None => rest,
    };
    let crypt = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
    };
    match rest.split_once('$') {
        Some((salt, digest)) => {
            salt.len() <= 16 && crypt(salt) && digest.len() == 86 && crypt(digest)
        }
        None => false,
    }
}

/// The user's sha512crypt hash: from the environment variable when set,
/// else from the file. Checked for shape, never printed.
pub fn password_hash(profile: &Profile) -> Result<String> {
    let u = &profile.user;
    let (hash, origin) = match u
        .password_hash_env
        .as_ref()
        .and_then(|v| std::env::var(v).ok().map(|h| (v, h)))
    {
        Some((var, h)) => (h, format!("environment variable {var}")),
        None => match &u.password_hash_file {
            Some(f) => (
                String::from_utf8_lossy(&read_secret(f)?).trim().to_string(),
                f.display().to_string(),
            ),
            None => bail!(
                "the password hash variable {} is not set",
                u.password_hash_env.as_deref().unwrap_or("?")
            ),
        },
    };
    if !is_sha512crypt(&hash) {
        bail!("{origin}: not a sha512crypt hash (`$6$salt$hash`, as `openssl passwd -6` prints)");
    }
    Ok(hash)
}

#[cfg(test)]
mod hash_tests {
    #[test]
    fn only_well_formed_sha512crypt_hashes_pass() {
        let d = "a".repeat(86);
        assert!(super::is_sha512crypt(&format!("$6$salt${d}")));
        assert!(super::is_sha512crypt(&format!("$6$rounds=5000$s./1${d}")));
        for bad in [
            format!("$6$salt${d} trailing"),
            format!("$6$salt${d}:x"),
            format!("$5$salt${d}"),
            format!("$6$salt${}", &d[1..]),
            format!("$6$rounds=$salt${d}"),
            "$6$salt".to_string(),
        ] {
            assert!(!super::is_sha512crypt(&bad), "{bad}");
        }
    }
}
