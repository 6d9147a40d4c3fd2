//! `chbuild import-ansible`: turn the reference Ansible project (inventory,
//! `group_vars/`, `host_vars/`, `vars/vars.yml`) into an equivalent chbuild
//! profile, and say for every variable what it became.

mod inventory;
pub mod mapping;
mod nodes;
mod render;
mod report;
mod resolve;
mod vars;

use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What to import and where its results go.
pub struct ImportOptions<'a> {
    /// The inventory (INI or YAML).
    pub inventory: &'a Path,
    /// `group_vars/` (default: beside the inventory).
    pub group_vars: Option<&'a Path>,
    /// Cluster name of the profile.
    pub cluster: &'a str,
    /// Where the password hash goes.
    pub secrets_dir: &'a Path,
    /// `[secrets] dir` to write into the profile (None: the default).
    pub secrets_key: Option<String>,
    /// Replace an existing password hash file.
    pub force: bool,
}

/// One variable and what became of it.
#[derive(Debug, Serialize, Clone)]
pub struct Outcome {
    /// The file (or inventory) and, for host variables, the host.
    pub scope: String,
    pub variable: String,
    /// `profile`, `deploy` or `unmapped`.
    pub kind: &'static str,
    /// The profile key, the deploy flag, or why it has no meaning offline.
    pub note: String,
}

#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    /// Secret files written.
    pub secrets: Vec<String>,
    /// Secret files kept because they exist (and differ).
    pub kept: Vec<String>,
    /// What the import chose where the project says nothing.
    pub assumed: Vec<String>,
    /// Loud warnings (an unverified download).
    pub warnings: Vec<String>,
    /// Every variable found, with what it became.
    pub variables: Vec<Outcome>,
}

/// The profile text and what the import found, before anything is written.
pub struct Imported {
    pub profile: String,
    pub password_hash: Option<String>,
    pub report: ImportReport,
}

/// Read the project and build the profile; writes nothing.
pub fn import_ansible(o: &ImportOptions) -> Result<Imported> {
    let root = o
        .inventory
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let group_vars_dir = o
        .group_vars
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("group_vars"));
    // host_vars/ and vars/ sit beside group_vars/ in the project.
    let project = group_vars_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let play_vars_file = project.join("vars/vars.yml");
    let sources = resolve::Sources {
        inventory_file: o.inventory.to_path_buf(),
        inv: inventory::load_inventory(o.inventory)?,
        group_files: vars::load_dir(&group_vars_dir)?,
        host_files: vars::load_dir(&project.join("host_vars"))?,
        play_vars: if play_vars_file.exists() {
            vars::load_file(&play_vars_file)?
        } else {
            Default::default()
        },
        project,
    };
    let (settings, report) = resolve::resolve(&sources, o.cluster, o.secrets_key.clone())?;
    let profile = render::profile_text(&settings, o.inventory, &group_vars_dir)?;
    Ok(Imported {
        profile,
        password_hash: settings.user.password_hash.clone(),
        report,
    })
}

/// Validate the imported profile as if it were at `target`, then write the
/// password hash (never replacing one without `force`) and the profile
/// (`None`: the caller prints it).
pub fn write_import(
    imported: &mut Imported,
    o: &ImportOptions,
    target: Option<&Path>,
) -> Result<()> {
    let as_if = target
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("profiles/imported.toml"));
    // Prove the result is a valid profile before anything is written.
    crate::profile::parse_profile_with_secrets(&imported.profile, &as_if, o.secrets_dir)?;
    if let Some(hash) = &imported.password_hash {
        let file = o.secrets_dir.join(crate::secrets::PASSWORD_HASH);
        let want = format!("{hash}\n");
        match std::fs::read_to_string(&file) {
            Ok(have) if have == want => {}
            Ok(_) if !o.force => imported.report.kept.push(file.display().to_string()),
            _ => {
                crate::secrets::write_private(&file, want.as_bytes())?;
                imported.report.secrets.push(file.display().to_string());
            }
        }
    }
    if let Some(out) = target {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        crate::artifact::write_atomic(out, imported.profile.as_bytes())?;
    }
    Ok(())
}
