//! Ansible variable files as the reference project lays them out:
//! `group_vars/<group>` and `host_vars/<host>` as a file with or without
//! `.yml`/`.yaml`, or as a directory of such files, and `vars/vars.yml`.
//! Every value remembers the file it came from, for the report.

use anyhow::{bail, Context, Result};
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One variable's value and the file that set it.
#[derive(Debug, Clone)]
pub struct Sourced {
    pub value: Value,
    pub file: PathBuf,
}

pub type Vars = BTreeMap<String, Sourced>;

const VAULT_HEADER: &str = "$ANSIBLE_VAULT;";

/// The variables of one YAML file (a mapping at the top, or empty).
pub fn load_file(path: &Path) -> Result<Vars> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_file(&text, path)
}

pub fn parse_file(text: &str, path: &Path) -> Result<Vars> {
    if text.trim_start().starts_with(VAULT_HEADER) {
        bail!(
            "{p} is encrypted with Ansible Vault: decrypt it for the import with \
             `ansible-vault decrypt {p}` (and `ansible-vault encrypt {p}` afterwards), \
             then run import-ansible again",
            p = path.display()
        );
    }
    let value: Value =
        serde_yaml_ng::from_str(text).with_context(|| format!("parsing {}", path.display()))?;
    from_mapping(value, path)
}

/// The variables of a YAML mapping found in `path` (a vars file, or the
/// `vars:` of a YAML inventory).
pub fn from_mapping(value: Value, path: &Path) -> Result<Vars> {
    let map = match value {
        Value::Null => return Ok(Vars::new()),
        Value::Mapping(m) => m,
        _ => bail!("{}: expected a mapping of variables", path.display()),
    };
    let mut out = Vars::new();
    for (k, v) in map {
        let Some(name) = text(&k) else {
            bail!("{}: a variable name is not a string", path.display());
        };
        reject_inline_vault(&name, &v, path)?;
        out.insert(
            name,
            Sourced {
                value: v,
                file: path.to_path_buf(),
            },
        );
    }
    Ok(out)
}

fn reject_inline_vault(name: &str, v: &Value, path: &Path) -> Result<()> {
    if let Value::Tagged(t) = v {
        if t.tag == "vault" {
            bail!(
                "{p}: `{name}` is encrypted inline with Ansible Vault (`!vault`): print it with \
                 `ansible localhost -m debug -a var={name} -e @{p} --ask-vault-pass`, put the \
                 plain value in a copy of {p} for the import, and delete the copy afterwards",
                p = path.display()
            );
        }
    }
    Ok(())
}

/// Every name in a `group_vars/` or `host_vars/` directory with its
/// variables: `NAME`, `NAME.yml`, `NAME.yaml` and `NAME/` (all merged, in
/// name order, later files winning as in Ansible). A missing directory is
/// empty.
pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, Vars>> {
    let mut out: BTreeMap<String, Vars> = BTreeMap::new();
    if !dir.exists() {
        return Ok(out);
    }
    if !dir.is_dir() {
        bail!("{} is not a directory of variables", dir.display());
    }
    for p in sorted_entries(dir)? {
        let Some(name) = vars_name(&p) else { continue };
        let vars = if p.is_dir() {
            load_tree(&p)?
        } else {
            load_file(&p)?
        };
        out.entry(name).or_default().extend(vars);
    }
    Ok(out)
}

/// All variable files under a `group_vars/<group>/` directory, merged.
fn load_tree(dir: &Path) -> Result<Vars> {
    let mut out = Vars::new();
    for p in sorted_entries(dir)? {
        if vars_name(&p).is_none() {
            continue;
        }
        out.extend(if p.is_dir() {
            load_tree(&p)?
        } else {
            load_file(&p)?
        });
    }
    Ok(out)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    v.sort();
    Ok(v)
}

/// The group or host a path in a vars directory names, as Ansible reads
/// it: no extension, `.yml`, `.yaml` or `.json`; hidden and backup files
/// are not variables.
fn vars_name(p: &Path) -> Option<String> {
    let file = p.file_name()?.to_str()?;
    if file.starts_with('.') || file.ends_with('~') {
        return None;
    }
    if p.is_dir() {
        return Some(file.to_string());
    }
    match p.extension().and_then(|x| x.to_str()) {
        None => Some(file.to_string()),
        Some("yml" | "yaml" | "json") => Some(p.file_stem()?.to_str()?.to_string()),
        Some(_) => None,
    }
}

/// A scalar as text (numbers and booleans as written).
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A boolean as Ansible's `| bool` reads it (`yes`, `on`, `1`...).
pub fn truthy(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_i64().map(|i| i != 0),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "y" | "1" => Some(true),
            "false" | "no" | "off" | "n" | "0" | "" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A list of strings, or one string as a one-item list.
pub fn list(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(s) => s.iter().filter_map(text).collect(),
        Value::Null => vec![],
        other => text(other).into_iter().collect(),
    }
}

/// A value holding a Jinja expression cannot be evaluated offline.
pub fn is_templated(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains("{{") || s.contains("{%"),
        Value::Sequence(s) => s.iter().any(is_templated),
        _ => false,
    }
}

/// The same value as TOML, for free-form host variables (nulls have no
/// TOML form).
pub fn to_toml(v: &Value) -> Option<toml::Value> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Sequence(s) => toml::Value::Array(s.iter().filter_map(to_toml).collect()),
        Value::Mapping(m) => toml::Value::Table(
            m.iter()
                .filter_map(|(k, v)| Some((text(k)?, to_toml(v)?)))
                .collect(),
        ),
        Value::Tagged(t) => return to_toml(&t.value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_one_one_booleans_read_as_ansible_does() {
        for (s, b) in [("yes", true), ("no", false), ("True", true), ("off", false)] {
            assert_eq!(truthy(&Value::String(s.into())), Some(b), "{s}");
        }
        assert_eq!(truthy(&Value::String("maybe".into())), None);
    }

    #[test]
    fn vault_files_and_values_are_refused_with_the_way_out() {
        let e = parse_file("$ANSIBLE_VAULT;1.1;AES256\n6162\n", Path::new("g/all"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("g/all is encrypted with Ansible Vault"), "{e}");
        assert!(e.contains("ansible-vault decrypt g/all"), "{e}");
        let e = parse_file(
            "pi_pwhash: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  6162\n",
            Path::new("all.yml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`pi_pwhash` is encrypted inline"), "{e}");
    }

    #[test]
    fn names_in_a_vars_directory() {
        let t = tempfile::tempdir().unwrap();
        for f in [
            "all",
            "picluster.yml",
            "management.yaml",
            "README.md",
            ".hidden",
            "x~",
        ] {
            std::fs::write(t.path().join(f), "a: 1\n").unwrap();
        }
        std::fs::create_dir(t.path().join("zerocluster")).unwrap();
        std::fs::write(t.path().join("zerocluster/main.yml"), "b: 2\n").unwrap();
        let names: Vec<_> = load_dir(t.path()).unwrap().into_keys().collect();
        assert_eq!(names, ["all", "management", "picluster", "zerocluster"]);
    }
}
