//! Overlays: admin-supplied files and templates laid over a node tree.
//!
//! The overlays directory (`overlays/` beside `profiles/`, found at run time
//! as `profile.dir().join("../overlays")`) holds one folder per layer:
//! `common/`, `kind/<usbboot|sd>/`, `group/<g>/`, `feature/<f>/`,
//! `host/<node>/`; the profile's own `overlay_dir` comes last. A layer
//! mirrors the root file system (`common/etc/motd` becomes `/etc/motd`).
//! Files ending in `.j2` are minijinja templates (strict: an undefined
//! variable is an error), rendered with the node's `NodePlan` plus
//! `chbuild_version` and `source_date_epoch`; the suffix is dropped.
//! When two layers carry the same path the later one wins, so precedence
//! is base < roles < common < kind < group < feature < host < profile.
//!
//! Owners and modes are declared, never copied from the overlay files: each
//! layer may hold a `_meta.toml` (see [`Meta`]); undeclared files are
//! 0644 root:root, undeclared new directories 0755 root:root.

pub mod write;

use crate::profile::plan::NodePlan;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use walkdir::WalkDir;
use write::TreeWriter;

use crate::roles::accounts::Accounts;

/// Name of the per-layer declaration file.
pub const META_FILE: &str = "_meta.toml";

/// `_meta.toml`: owners and modes of a layer's files and directories, by
/// tree path (for templates, without `.j2`). Owner and group are names in
/// the node's own `etc/passwd`/`etc/group` (or numbers) and may use
/// template syntax, e.g. `owner = "{{ user.name }}"`.
///
/// ```toml
/// [defaults]
/// file_mode = "0644"
/// dir_mode = "0755"
/// owner = "root"
/// group = "root"
///
/// [files."etc/sudoers.d/90-ops"]
/// mode = "0440"
///
/// [dirs."srv/scratch"]
/// mode = "1777"
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub files: BTreeMap<String, Attr>,
    #[serde(default)]
    pub dirs: BTreeMap<String, Attr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default = "default_file_mode")]
    pub file_mode: String,
    #[serde(default = "default_dir_mode")]
    pub dir_mode: String,
    #[serde(default = "root")]
    pub owner: String,
    #[serde(default = "root")]
    pub group: String,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            file_mode: default_file_mode(),
            dir_mode: default_dir_mode(),
            owner: root(),
            group: root(),
        }
    }
}

fn default_file_mode() -> String {
    "0644".into()
}
fn default_dir_mode() -> String {
    "0755".into()
}
fn root() -> String {
    "root".into()
}

/// Declared attributes of one path; unset fields take the layer defaults.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attr {
    pub mode: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
}

/// One overlay layer that exists on disk.
#[derive(Debug, Clone)]
pub struct Layer {
    /// `common`, `group/zerocluster`, ..., or `profile`.
    pub name: String,
    pub dir: PathBuf,
}

/// The layers of a node, lowest precedence first, keeping only those that
/// exist.
pub fn layers(plan: &NodePlan, overlays_dir: &Path, profile_overlay: Option<&Path>) -> Vec<Layer> {
    plan.overlays
        .iter()
        .map(|name| Layer {
            name: name.clone(),
            dir: overlays_dir.join(name),
        })
        .chain(profile_overlay.map(|d| Layer {
            name: "profile".into(),
            dir: d.to_path_buf(),
        }))
        .filter(|l| l.dir.is_dir())
        .collect()
}

/// Variables templates see: every `NodePlan` field at the top level plus
/// `chbuild_version` and `source_date_epoch` (none when unset).
pub fn template_context(plan: &NodePlan) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(plan).context("serializing the node plan")?;
    let obj = v.as_object_mut().context("the node plan is not a map")?;
    obj.insert("chbuild_version".into(), env!("CARGO_PKG_VERSION").into());
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok());
    obj.insert("source_date_epoch".into(), epoch.into());
    Ok(v)
}

fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env
}

/// Render one template source with the node's variables.
pub fn render(name: &str, source: &str, ctx: &serde_json::Value) -> Result<String> {
    let mut env = environment();
    env.add_template_owned(name.to_string(), source.to_string())
        .with_context(|| format!("parsing template {name}"))?;
    env.get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| anyhow::anyhow!("rendering template {name}: {e:#}"))
}

pub(crate) fn parse_mode(s: &str, what: &str) -> Result<u32> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .with_context(|| format!("{what}: mode `{s}` is not octal such as \"0644\""))?;
    if m > 0o7777 {
        bail!("{what}: mode `{s}` is out of range");
    }
    Ok(m)
}

struct Entry {
    layer: String,
    src: PathBuf,
    template: bool,
    mode: u32,
    owner: String,
    group: String,
}

fn load_meta(layer: &Layer) -> Result<Meta> {
    let p = layer.dir.join(META_FILE);
    if !p.exists() {
        return Ok(Meta::default());
    }
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

/// Lay the layers over the tree. Returns nothing: the writer records paths.
pub fn apply_overlays(w: &mut TreeWriter, plan: &NodePlan, layers: &[Layer]) -> Result<()> {
    let ctx = template_context(plan)?;
    let env = environment();
    let attr_text = |s: &str, what: &str| -> Result<String> {
        env.render_str(s, &ctx)
            .map_err(|e| anyhow::anyhow!("{what}: rendering `{s}`: {e:#}"))
    };
    let mut files: BTreeMap<PathBuf, Entry> = BTreeMap::new();
    let mut dirs: BTreeMap<PathBuf, Entry> = BTreeMap::new();
    for layer in layers {
        let meta = load_meta(layer)?;
        let what = |p: &str| format!("overlay {}: {p}", layer.name);
        let mut seen_files = Vec::new();
        let mut seen_dirs = Vec::new();
        for e in WalkDir::new(&layer.dir)
            .follow_links(false)
            .sort_by_file_name()
            .min_depth(1)
        {
            let e = e.with_context(|| format!("walking {}", layer.dir.display()))?;
            let rel = e.path().strip_prefix(&layer.dir).unwrap().to_path_buf();
            let ft = e.file_type();
            if rel == Path::new(META_FILE) {
                continue;
            }
            let rel_s = rel.to_string_lossy().into_owned();
            if ft.is_dir() {
                let attr = meta.dirs.get(&rel_s).cloned().unwrap_or_default();
                seen_dirs.push(rel_s.clone());
                dirs.insert(
                    rel.clone(),
                    Entry {
                        layer: layer.name.clone(),
                        src: e.path().to_path_buf(),
                        template: false,
                        mode: parse_mode(
                            attr.mode.as_deref().unwrap_or(&meta.defaults.dir_mode),
                            &what(&rel_s),
                        )?,
                        owner: attr.owner.unwrap_or(meta.defaults.owner.clone()),
                        group: attr.group.unwrap_or(meta.defaults.group.clone()),
                    },
                );
            } else if ft.is_file() {
                let (target, template) = match rel_s.strip_suffix(".j2") {
                    Some(t) => (t.to_string(), true),
                    None => (rel_s.clone(), false),
                };
                let attr = meta.files.get(&target).cloned().unwrap_or_default();
                seen_files.push(target.clone());
                files.insert(
                    PathBuf::from(&target),
                    Entry {
                        layer: layer.name.clone(),
                        src: e.path().to_path_buf(),
                        template,
                        mode: parse_mode(
                            attr.mode.as_deref().unwrap_or(&meta.defaults.file_mode),
                            &what(&target),
                        )?,
                        owner: attr.owner.unwrap_or(meta.defaults.owner.clone()),
                        group: attr.group.unwrap_or(meta.defaults.group.clone()),
                    },
                );
            } else {
                bail!(
                    "{}: only files and directories are supported in overlays",
                    e.path().display()
                );
            }
        }
        // A declaration for a path the layer does not carry is a typo.
        for k in meta.files.keys() {
            if !seen_files.contains(k) {
                bail!(
                    "{}: declares file `{k}` which the layer does not contain",
                    layer.dir.join(META_FILE).display()
                );
            }
        }
        for k in meta.dirs.keys() {
            if !seen_dirs.contains(k) {
                bail!(
                    "{}: declares directory `{k}` which the layer does not contain",
                    layer.dir.join(META_FILE).display()
                );
            }
        }
    }
    // Owners are names in the tree, read after the roles created users.
    let accounts = Accounts::load(w)?;
    for (rel, e) in &dirs {
        let what = format!("overlay {}: {}", e.layer, rel.display());
        let owner = accounts
            .owner(&attr_text(&e.owner, &what)?, &attr_text(&e.group, &what)?)
            .with_context(|| what.clone())?;
        if !w.exists(rel) {
            w.mkdir(rel, e.mode, owner)?;
        }
    }
    for (rel, e) in &files {
        let what = format!("overlay {}: {}", e.layer, rel.display());
        let owner = accounts
            .owner(&attr_text(&e.owner, &what)?, &attr_text(&e.group, &what)?)
            .with_context(|| what.clone())?;
        let data = std::fs::read(&e.src).with_context(|| format!("reading {}", e.src.display()))?;
        let data = if e.template {
            let src = String::from_utf8(data)
                .with_context(|| format!("{} is not UTF-8", e.src.display()))?;
            render(&format!("{}/{}.j2", e.layer, rel.display()), &src, &ctx)?.into_bytes()
        } else {
            data
        };
        w.write(rel, &data, e.mode, owner)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_undefined_is_an_error() {
        let ctx = serde_json::json!({"hostname": "z1"});
        assert_eq!(render("t", "{{ hostname }}\n", &ctx).unwrap(), "z1\n");
        let e = render("t", "{{ nope }}", &ctx).unwrap_err();
        assert!(format!("{e:#}").contains("undefined"), "{e:#}");
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("0440", "x").unwrap(), 0o440);
        assert!(parse_mode("644x", "x").is_err());
        assert!(parse_mode("77777", "x").is_err());
    }

    #[test]
    fn meta_rejects_unknown_keys() {
        assert!(toml::from_str::<Meta>("[files.\"a\"]\nmod = \"0644\"\n").is_err());
        let m: Meta = toml::from_str("[files.\"etc/x\"]\nmode = \"0600\"\n").unwrap();
        assert_eq!(m.files["etc/x"].mode.as_deref(), Some("0600"));
        assert_eq!(m.defaults.file_mode, "0644");
    }
}
