//! Overlays: files and templates laid over a node tree, role files and
//! admin files alike.
//!
//! The built-in overlays (the repository's `overlays/`, embedded into the
//! binary at build time; `CHBUILD_OVERLAYS=DIR` replaces them with a
//! directory) hold one folder per layer: `roles/<role>/` (the files the
//! roles write, applied when the role's code says the role applies),
//! `common/`, `kind/<usbboot|sd>/`, `group/<g>/`, `feature/<f>/`,
//! `host/<node>/`; the profile's own `overlay_dir` comes last. A layer
//! mirrors the root file system (`common/etc/motd` becomes `/etc/motd`).
//! Files ending in `.j2` are minijinja templates (strict: an undefined
//! variable is an error), rendered with the node's `NodePlan` plus
//! `chbuild_version`, `source_date_epoch`, `roles.<role>` (values the
//! role code computed) and `secrets.*`; the suffix is dropped. A path may
//! itself hold template syntax (`{{ boot_dir }}/ssh`). When two layers
//! carry the same path the later one wins, so precedence is base < roles
//! < common < kind < group < feature < host < profile.
//!
//! Owners and modes are declared, never copied from the overlay files: each
//! layer may hold a `_meta.toml` (see [`Meta`]); undeclared files are
//! 0644 root:root, undeclared new directories 0755 root:root. A template
//! that reads `secrets.*` must be declared with a mode that neither group
//! nor others can read, or the build fails naming the template.

pub mod write;

use crate::profile::plan::NodePlan;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
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
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub files: BTreeMap<String, Attr>,
    #[serde(default)]
    pub dirs: BTreeMap<String, Attr>,
}

#[derive(Debug, Clone, Deserialize)]
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

/// The overlays compiled into chbuild: `ENTRIES` lists every directory
/// (`None`) and file of the repository's `overlays/`, sorted by path.
mod embedded {
    include!(concat!(env!("OUT_DIR"), "/overlays.rs"));
}

/// Environment variable naming a directory that replaces the built-in
/// overlays (for trying a template change without rebuilding chbuild).
pub const OVERRIDE_ENV: &str = "CHBUILD_OVERLAYS";

/// Where the built-in layers come from.
#[derive(Debug, Clone)]
pub enum Overlays {
    /// The copy embedded in the binary.
    Embedded,
    /// A directory with the same layout as `overlays/`.
    Dir(PathBuf),
}

impl Overlays {
    /// The embedded overlays, or the directory `CHBUILD_OVERLAYS` names.
    pub fn builtin() -> Result<Overlays> {
        match std::env::var_os(OVERRIDE_ENV) {
            Some(d) if !d.is_empty() => {
                let d = PathBuf::from(d);
                if !d.is_dir() {
                    bail!("{OVERRIDE_ENV}={}: not a directory", d.display());
                }
                Ok(Overlays::Dir(d))
            }
            _ => Ok(Overlays::Embedded),
        }
    }

    /// One layer (`roles/slurm`, `common`, `host/z1`...), if present.
    pub fn layer(&self, name: &str) -> Result<Option<Layer>> {
        match self {
            Overlays::Embedded => Layer::embedded(name),
            Overlays::Dir(d) => Layer::from_dir(name, &d.join(name)),
        }
    }

    /// Hash of every path and file content, for the incremental-build key.
    pub fn digest(&self) -> Result<String> {
        let mut h = Sha256::new();
        match self {
            Overlays::Embedded => {
                for (rel, data) in embedded::ENTRIES {
                    h.update(rel.as_bytes());
                    h.update([0]);
                    if let Some(d) = data {
                        h.update((d.len() as u64).to_le_bytes());
                        h.update(d);
                    }
                }
            }
            Overlays::Dir(d) => hash_dir(&mut h, d)?,
        }
        Ok(hex::encode(h.finalize()))
    }
}

/// Feed every path and file content under `dir` (sorted) into `h`.
pub fn hash_dir(h: &mut Sha256, dir: &Path) -> Result<()> {
    for e in WalkDir::new(dir).sort_by_file_name().min_depth(1) {
        let e = e.with_context(|| format!("walking {}", dir.display()))?;
        let rel = e.path().strip_prefix(dir).unwrap_or(e.path());
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        if e.file_type().is_file() {
            let data = std::fs::read(e.path())
                .with_context(|| format!("reading {}", e.path().display()))?;
            h.update((data.len() as u64).to_le_bytes());
            h.update(&data);
        }
    }
    Ok(())
}

/// One overlay layer, read into memory: its files (tree path as written in
/// the layer, `.j2` kept), its directories and its declarations.
#[derive(Debug, Clone)]
pub struct Layer {
    /// `roles/slurm`, `common`, `group/zerocluster`, ..., or `profile`.
    pub name: String,
    /// Where the layer is, for messages (`built-in overlays/common`, a path).
    pub origin: String,
    meta: Meta,
    files: Vec<(String, Vec<u8>)>,
    dirs: Vec<String>,
}

impl Layer {
    /// The layer in directory `dir`; `None` when there is no such directory.
    pub fn from_dir(name: &str, dir: &Path) -> Result<Option<Layer>> {
        if !dir.is_dir() {
            return Ok(None);
        }
        let mut layer = Layer {
            name: name.to_string(),
            origin: dir.display().to_string(),
            meta: Meta::default(),
            files: vec![],
            dirs: vec![],
        };
        for e in WalkDir::new(dir)
            .follow_links(false)
            .sort_by_file_name()
            .min_depth(1)
        {
            let e = e.with_context(|| format!("walking {}", dir.display()))?;
            let rel = e.path().strip_prefix(dir).unwrap().to_string_lossy();
            let ft = e.file_type();
            if ft.is_dir() {
                layer.dirs.push(rel.into_owned());
            } else if ft.is_file() {
                let data = std::fs::read(e.path())
                    .with_context(|| format!("reading {}", e.path().display()))?;
                layer.add_file(rel.into_owned(), data)?;
            } else {
                bail!(
                    "{}: only files and directories are supported in overlays",
                    e.path().display()
                );
            }
        }
        Ok(Some(layer))
    }

    /// The layer of the embedded overlays; `None` when it has no such layer.
    fn embedded(name: &str) -> Result<Option<Layer>> {
        if !embedded::ENTRIES
            .iter()
            .any(|(p, d)| *p == name && d.is_none())
        {
            return Ok(None);
        }
        let prefix = format!("{name}/");
        let mut layer = Layer {
            name: name.to_string(),
            origin: format!("built-in overlays/{name}"),
            meta: Meta::default(),
            files: vec![],
            dirs: vec![],
        };
        for (path, data) in embedded::ENTRIES {
            let Some(rel) = path.strip_prefix(&prefix) else {
                continue;
            };
            match data {
                None => layer.dirs.push(rel.to_string()),
                Some(d) => layer.add_file(rel.to_string(), d.to_vec())?,
            }
        }
        Ok(Some(layer))
    }

    fn add_file(&mut self, rel: String, data: Vec<u8>) -> Result<()> {
        if rel == META_FILE {
            let text = String::from_utf8(data)
                .with_context(|| format!("{}/{META_FILE} is not UTF-8", self.origin))?;
            self.meta = toml::from_str(&text)
                .with_context(|| format!("parsing {}/{META_FILE}", self.origin))?;
        } else {
            self.files.push((rel, data));
        }
        Ok(())
    }

    fn what(&self, rel: &str) -> String {
        format!("overlay {}: {rel}", self.name)
    }
}

/// The layers of a node after its role layers, lowest precedence first,
/// keeping only those that exist: the plan's (`common`, `kind/...`,
/// `group/...`, `feature/...`, `host/...`) from the built-in overlays,
/// then the profile's `overlay_dir`.
pub fn layers(
    plan: &NodePlan,
    overlays: &Overlays,
    profile_overlay: Option<&Path>,
) -> Result<Vec<Layer>> {
    let mut out = vec![];
    for name in &plan.overlays {
        out.extend(overlays.layer(name)?);
    }
    if let Some(d) = profile_overlay {
        out.extend(Layer::from_dir("profile", d)?);
    }
    Ok(out)
}

/// Variables templates see: every `NodePlan` field at the top level plus
/// `chbuild_version`, `source_date_epoch` (the build's, whether it came
/// from `SOURCE_DATE_EPOCH` or from the base), `secrets` (an object of
/// secret strings) and `roles` (an empty object the role code fills).
pub fn template_context(
    plan: &NodePlan,
    epoch: Option<i64>,
    secrets: serde_json::Value,
) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(plan).context("serializing the node plan")?;
    let obj = v.as_object_mut().context("the node plan is not a map")?;
    obj.insert("chbuild_version".into(), env!("CARGO_PKG_VERSION").into());
    obj.insert("source_date_epoch".into(), epoch.into());
    obj.insert(SECRETS_NAMESPACE.into(), secrets);
    obj.insert("roles".into(), serde_json::json!({}));
    Ok(v)
}

/// The only name under which templates see secrets.
pub const SECRETS_NAMESPACE: &str = "secrets";

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

/// Whether a template reads anything under `secrets`.
fn reads_secrets(name: &str, source: &str) -> Result<bool> {
    let mut env = environment();
    env.add_template_owned(name.to_string(), source.to_string())
        .with_context(|| format!("parsing template {name}"))?;
    let t = env.get_template(name)?;
    Ok(t.undeclared_variables(true).iter().any(|v| {
        v == SECRETS_NAMESPACE
            || v.strip_prefix(SECRETS_NAMESPACE)
                .is_some_and(|r| r.starts_with('.'))
    }))
}

fn parse_mode(s: &str, what: &str) -> Result<u32> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .with_context(|| format!("{what}: mode `{s}` is not octal such as \"0644\""))?;
    if m > 0o7777 {
        bail!("{what}: mode `{s}` is out of range");
    }
    Ok(m)
}

/// A tree path from a layer path that may hold template syntax: rendered,
/// then checked to stay a plain relative path.
fn tree_path(raw: &str, what: &str, ctx: &serde_json::Value) -> Result<String> {
    if !raw.contains("{{") && !raw.contains("{%") {
        return Ok(raw.to_string());
    }
    let p = minijinja::Environment::new()
        .render_str(raw, ctx)
        .map_err(|e| anyhow::anyhow!("{what}: rendering the path: {e:#}"))?;
    let p = p.trim_matches('/').to_string();
    if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        bail!("{what}: the path renders to `{p}`, not a plain relative path");
    }
    Ok(p)
}

struct Entry<'a> {
    layer: &'a Layer,
    raw: String,
    data: &'a [u8],
    template: bool,
    mode: u32,
    owner: String,
    group: String,
}

/// One file or directory of the layers, rendered: its tree path, content
/// (none for a directory), mode, and owner and group as names.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub path: PathBuf,
    pub content: Option<Vec<u8>>,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    /// `overlay <layer>: <path>`, for messages.
    pub what: String,
}

/// Lay the layers over the tree, later layers winning by tree path.
/// Directories are created when missing, never changed. Returns nothing:
/// the writer records paths.
pub fn apply_layers(w: &mut TreeWriter, ctx: &serde_json::Value, layers: &[Layer]) -> Result<()> {
    let rendered = render_layers(ctx, layers)?;
    // Owners are names in the tree, read after the roles created users.
    let accounts = Accounts::load(w)?;
    for r in &rendered {
        let owner = accounts
            .owner(&r.owner, &r.group)
            .with_context(|| r.what.clone())?;
        match &r.content {
            None if w.exists(&r.path) => {}
            None => w.mkdir(&r.path, r.mode, owner)?,
            Some(data) => w.write(&r.path, data, r.mode, owner)?,
        }
    }
    Ok(())
}

/// Render the layers without writing anything: directories first, then
/// files, each sorted by tree path, later layers winning by path.
pub fn render_layers(ctx: &serde_json::Value, layers: &[Layer]) -> Result<Vec<Rendered>> {
    let env = environment();
    let attr_text = |s: &str, what: &str| -> Result<String> {
        env.render_str(s, ctx)
            .map_err(|e| anyhow::anyhow!("{what}: rendering `{s}`: {e:#}"))
    };
    let mut files: BTreeMap<PathBuf, Entry> = BTreeMap::new();
    let mut dirs: BTreeMap<PathBuf, Entry> = BTreeMap::new();
    for layer in layers {
        let meta = &layer.meta;
        for raw in &layer.dirs {
            let attr = meta.dirs.get(raw).cloned().unwrap_or_default();
            let what = layer.what(raw);
            dirs.insert(
                PathBuf::from(tree_path(raw, &what, ctx)?),
                Entry {
                    layer,
                    raw: raw.clone(),
                    data: &[],
                    template: false,
                    mode: parse_mode(
                        attr.mode.as_deref().unwrap_or(&meta.defaults.dir_mode),
                        &what,
                    )?,
                    owner: attr.owner.unwrap_or(meta.defaults.owner.clone()),
                    group: attr.group.unwrap_or(meta.defaults.group.clone()),
                },
            );
        }
        for (rel, data) in &layer.files {
            let (raw, template) = match rel.strip_suffix(".j2") {
                Some(t) => (t.to_string(), true),
                None => (rel.clone(), false),
            };
            let what = layer.what(&raw);
            let attr = meta.files.get(&raw).cloned().unwrap_or_default();
            let mode = parse_mode(
                attr.mode.as_deref().unwrap_or(&meta.defaults.file_mode),
                &what,
            )?;
            if template {
                let src = std::str::from_utf8(data)
                    .with_context(|| format!("{}/{rel} is not UTF-8", layer.origin))?;
                if reads_secrets(rel, src)? && (attr.mode.is_none() || mode & 0o044 != 0) {
                    bail!(
                        "{}/{rel} reads `{SECRETS_NAMESPACE}.*`: declare it in {}/{META_FILE} \
                         with a mode no group or other user can read, such as \
                         [files.\"{raw}\"] mode = \"0600\"",
                        layer.origin,
                        layer.origin
                    );
                }
            }
            files.insert(
                PathBuf::from(tree_path(&raw, &what, ctx)?),
                Entry {
                    layer,
                    raw,
                    data,
                    template,
                    mode,
                    owner: attr.owner.unwrap_or(meta.defaults.owner.clone()),
                    group: attr.group.unwrap_or(meta.defaults.group.clone()),
                },
            );
        }
        // A declaration for a path the layer does not carry is a typo.
        for k in meta.files.keys() {
            if !layer
                .files
                .iter()
                .any(|(f, _)| f == k || f.strip_suffix(".j2") == Some(k))
            {
                bail!(
                    "{}/{META_FILE}: declares file `{k}` which the layer does not contain",
                    layer.origin
                );
            }
        }
        for k in meta.dirs.keys() {
            if !layer.dirs.contains(k) {
                bail!(
                    "{}/{META_FILE}: declares directory `{k}` which the layer does not contain",
                    layer.origin
                );
            }
        }
    }
    let mut out = Vec::new();
    for (rel, e) in &dirs {
        let what = e.layer.what(&e.raw);
        out.push(Rendered {
            path: rel.clone(),
            content: None,
            mode: e.mode,
            owner: attr_text(&e.owner, &what)?,
            group: attr_text(&e.group, &what)?,
            what,
        });
    }
    for (rel, e) in &files {
        let what = e.layer.what(&e.raw);
        let data = if e.template {
            let src = std::str::from_utf8(e.data).expect("checked above");
            render(&format!("{}/{}.j2", e.layer.name, e.raw), src, ctx)?.into_bytes()
        } else {
            e.data.to_vec()
        };
        out.push(Rendered {
            path: rel.clone(),
            content: Some(data),
            mode: e.mode,
            owner: attr_text(&e.owner, &what)?,
            group: attr_text(&e.group, &what)?,
            what,
        });
    }
    Ok(out)
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

    /// A layer in a scratch directory from (path, content) pairs.
    fn layer(dir: &Path, name: &str, files: &[(&str, &str)]) -> Layer {
        let d = dir.join(name);
        for (p, text) in files {
            std::fs::create_dir_all(d.join(p).parent().unwrap()).unwrap();
            std::fs::write(d.join(p), text).unwrap();
        }
        Layer::from_dir(name, &d).unwrap().unwrap()
    }

    fn vars() -> serde_json::Value {
        serde_json::json!({
            "hostname": "z1",
            "boot_dir": "boot/firmware",
            "secrets": {"k3s_token": "t0ken"},
            "roles": {"k3s": {"role": "agent"}},
        })
    }

    #[test]
    fn a_template_reading_secrets_must_be_private() {
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        let mut w = TreeWriter::new(&tree).unwrap();
        let src = "token: {{ secrets.k3s_token }}\n";
        for meta in [
            "",
            "[files.\"etc/k3s.yaml\"]\nmode = \"0640\"\n",
            "[defaults]\nfile_mode = \"0600\"\n",
        ] {
            let l = layer(
                t.path(),
                "site",
                &[("etc/k3s.yaml.j2", src), ("_meta.toml", meta)],
            );
            let e = format!("{:#}", apply_layers(&mut w, &vars(), &[l]).unwrap_err());
            assert!(e.contains("etc/k3s.yaml.j2"), "{e}");
            assert!(e.contains("secrets"), "{e}");
        }
        assert!(!tree.join("etc/k3s.yaml").exists());
        assert!(reads_secrets("t", "{% set s = secrets %}{{ s.x }}").unwrap());
        assert!(!reads_secrets("t", "{{ roles.k3s.role }} {{ secretsx }}").unwrap());
    }

    #[test]
    fn paths_render_and_must_stay_relative() {
        let v = vars();
        assert_eq!(
            tree_path("{{ boot_dir }}/ssh", "x", &v).unwrap(),
            "boot/firmware/ssh"
        );
        assert_eq!(tree_path("etc/plain", "x", &v).unwrap(), "etc/plain");
        let v = serde_json::json!({"boot_dir": "../.."});
        assert!(tree_path("{{ boot_dir }}/ssh", "x", &v).is_err());
    }

    #[test]
    fn a_later_layer_replaces_a_role_file_by_its_rendered_path() {
        if !nix::unistd::geteuid().is_root() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "CI runs as root"
            );
            eprintln!("SKIP: setting owners needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(tree.join("etc/group"), "root:x:0:\n").unwrap();
        let mut w = TreeWriter::new(&tree).unwrap();
        let role = layer(
            t.path(),
            "roles/x",
            &[
                ("{{ boot_dir }}/cmdline.txt.j2", "role {{ hostname }}\n"),
                ("etc/kept", "role\n"),
            ],
        );
        let site = layer(
            t.path(),
            "host/z1",
            &[("boot/firmware/cmdline.txt", "mine\n")],
        );
        apply_layers(&mut w, &vars(), &[role, site]).unwrap();
        let read = |p: &str| std::fs::read_to_string(tree.join(p)).unwrap();
        assert_eq!(read("boot/firmware/cmdline.txt"), "mine\n");
        assert_eq!(read("etc/kept"), "role\n");
    }

    #[test]
    fn the_embedded_overlays_hold_every_role() {
        let o = Overlays::Embedded;
        for role in ["network", "slurm", "k3s", "firstboot"] {
            assert!(
                o.layer(&format!("roles/{role}")).unwrap().is_some(),
                "{role}"
            );
        }
        assert!(o.layer("roles/nope").unwrap().is_none());
        assert_eq!(o.digest().unwrap(), o.digest().unwrap());
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
