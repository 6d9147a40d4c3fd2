//! Ansible inventories in both common forms: INI (`[group]`,
//! `[group:children]`, `[group:vars]`, `host key=value`, host ranges such as
//! `z[1:4]`) and YAML (`all: {hosts, children, vars}`).

use super::vars::{self, Sourced, Vars};
use anyhow::{bail, Context, Result};
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Default)]
pub struct Inventory {
    /// group -> hosts, in file order.
    pub hosts: BTreeMap<String, Vec<String>>,
    /// group -> child groups, in file order.
    pub children: BTreeMap<String, Vec<String>>,
    /// host -> variables set in the inventory itself.
    pub host_vars: BTreeMap<String, Vars>,
    /// group -> variables set in the inventory itself (`[g:vars]`, `vars:`).
    pub group_vars: BTreeMap<String, Vars>,
    /// Groups in the order they first appear.
    pub order: Vec<String>,
}

impl Inventory {
    fn group(&mut self, g: &str) {
        if !self.order.iter().any(|o| o == g) {
            self.order.push(g.to_string());
        }
    }

    fn add_host(&mut self, group: &str, host: &str) {
        self.group(group);
        let hs = self.hosts.entry(group.to_string()).or_default();
        if !hs.iter().any(|h| h == host) {
            hs.push(host.to_string());
        }
        self.host_vars.entry(host.to_string()).or_default();
    }

    fn add_child(&mut self, group: &str, child: &str) {
        self.group(group);
        self.group(child);
        let cs = self.children.entry(group.to_string()).or_default();
        if !cs.iter().any(|c| c == child) {
            cs.push(child.to_string());
        }
    }

    /// The groups a host is directly in, in inventory order.
    pub fn groups_of(&self, host: &str) -> Vec<String> {
        self.order
            .iter()
            .filter(|g| {
                self.hosts
                    .get(*g)
                    .is_some_and(|h| h.iter().any(|x| x == host))
            })
            .cloned()
            .collect()
    }
}

/// Read an inventory file, INI or YAML (by extension, or by content).
pub fn load_inventory(path: &Path) -> Result<Inventory> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let yaml = match path.extension().and_then(|x| x.to_str()) {
        Some("yml" | "yaml") => true,
        Some("ini") => false,
        _ => looks_like_yaml(&text),
    };
    if yaml {
        parse_yaml(&text, path)
    } else {
        parse_ini(&text, path)
    }
}

fn looks_like_yaml(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .is_some_and(|l| l == "---" || (l.ends_with(':') && !l.starts_with('[')))
}

/// Parse an INI inventory.
pub fn parse_ini(text: &str, file: &Path) -> Result<Inventory> {
    let mut inv = Inventory::default();
    let mut section: Option<(String, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let at = || format!("{}:{}", file.display(), i + 1);
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(h) = line.strip_prefix('[') {
            let h = h
                .split(['#', ';'])
                .next()
                .unwrap_or("")
                .trim()
                .strip_suffix(']')
                .with_context(|| format!("{}: unclosed section header", at()))?;
            let (g, kind) = h.split_once(':').unwrap_or((h, "hosts"));
            if !matches!(kind, "hosts" | "children" | "vars") {
                bail!("{}: unknown section kind `:{kind}`", at());
            }
            inv.group(g);
            section = Some((g.to_string(), kind.to_string()));
            continue;
        }
        let words = split_words(line).with_context(at)?;
        let Some((group, kind)) = section.clone() else {
            bail!("{}: host outside any [group]", at());
        };
        match kind.as_str() {
            "children" => inv.add_child(&group, &words[0]),
            "vars" => {
                let (k, v) = line
                    .split_once('=')
                    .with_context(|| format!("{}: expected key=value", at()))?;
                inv.group_vars
                    .entry(group)
                    .or_default()
                    .insert(k.trim().to_string(), ini_value(v.trim(), file));
            }
            _ => {
                for host in expand_range(&words[0]).with_context(at)? {
                    inv.add_host(&group, &host);
                    for w in &words[1..] {
                        let (k, v) = w.split_once('=').with_context(|| {
                            format!("{}: expected key=value, found `{w}`", at())
                        })?;
                        let hv = inv.host_vars.entry(host.clone()).or_default();
                        hv.insert(k.to_string(), ini_value(v, file));
                    }
                }
            }
        }
    }
    Ok(inv)
}

/// Words of a host line; quotes group, `#` after a blank starts a comment.
fn split_words(line: &str) -> Result<Vec<String>> {
    let mut words = vec![];
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut prev_blank = true;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') if prev_blank => break,
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            (None, c) => cur.push(c),
        }
        prev_blank = c.is_whitespace();
    }
    if quote.is_some() {
        bail!("unclosed quote");
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    Ok(words)
}

/// INI values are text; YAML reads them so `true`, `22` keep their types.
fn ini_value(v: &str, file: &Path) -> Sourced {
    let value = serde_yaml_ng::from_str::<Value>(v)
        .ok()
        .filter(|x| !matches!(x, Value::Mapping(_) | Value::Sequence(_)))
        .unwrap_or_else(|| Value::String(v.to_string()));
    Sourced {
        value,
        file: file.to_path_buf(),
    }
}

/// `z[1:4]` -> z1..z4; `p[01:03]` keeps the width; anything else as is.
fn expand_range(name: &str) -> Result<Vec<String>> {
    // The first `]` after the first `[`: a `]` before it is part of the name.
    let Some((open, close)) = name
        .find('[')
        .and_then(|o| name[o..].find(']').map(|c| (o, o + c)))
    else {
        return Ok(vec![name.to_string()]);
    };
    let (pre, inner, post) = (&name[..open], &name[open + 1..close], &name[close + 1..]);
    let (a, b) = inner
        .split_once(':')
        .with_context(|| format!("host range `{name}`: expected [start:end]"))?;
    let width = if a.starts_with('0') { a.len() } else { 0 };
    let (a, b): (u32, u32) = (
        a.parse().with_context(|| format!("host range `{name}`"))?,
        b.parse().with_context(|| format!("host range `{name}`"))?,
    );
    if a > b {
        bail!("host range `{name}`: the start is after the end");
    }
    // A cluster's worth; a typo's million hosts is refused, not allocated.
    if b - a >= MAX_RANGE {
        bail!("host range `{name}`: more than {MAX_RANGE} hosts");
    }
    Ok((a..=b).map(|i| format!("{pre}{i:0width$}{post}")).collect())
}

const MAX_RANGE: u32 = 4096;

/// Parse a YAML inventory: `all:` (or top-level groups) with `hosts`,
/// `children` and `vars` at every level.
pub fn parse_yaml(text: &str, file: &Path) -> Result<Inventory> {
    let doc: Value =
        serde_yaml_ng::from_str(text).with_context(|| format!("parsing {}", file.display()))?;
    let Value::Mapping(top) = doc else {
        bail!(
            "{}: expected a mapping of groups at the top",
            file.display()
        );
    };
    let mut inv = Inventory::default();
    for (k, v) in top {
        let g = vars::text(&k)
            .with_context(|| format!("{}: a group name is not a string", file.display()))?;
        yaml_group(&mut inv, &g, v, file)?;
    }
    Ok(inv)
}

fn yaml_group(inv: &mut Inventory, group: &str, node: Value, file: &Path) -> Result<()> {
    inv.group(group);
    let map = match node {
        Value::Null => return Ok(()),
        Value::Mapping(m) => m,
        _ => bail!(
            "{}: group `{group}`: expected hosts, children or vars",
            file.display()
        ),
    };
    for (k, v) in map {
        match vars::text(&k).as_deref() {
            Some("hosts") => {
                let hosts = match v {
                    Value::Null => Default::default(),
                    Value::Mapping(m) => m,
                    _ => bail!(
                        "{}: group `{group}`: hosts must be a mapping",
                        file.display()
                    ),
                };
                for (h, hv) in hosts {
                    let h = vars::text(&h).with_context(|| {
                        format!("{}: a host name is not a string", file.display())
                    })?;
                    for host in expand_range(&h)? {
                        inv.add_host(group, &host);
                        let vs = vars::from_mapping(hv.clone(), file)?;
                        inv.host_vars.entry(host).or_default().extend(vs);
                    }
                }
            }
            Some("children") => {
                let children = match v {
                    Value::Null => Default::default(),
                    Value::Mapping(m) => m,
                    _ => bail!(
                        "{}: group `{group}`: children must be a mapping",
                        file.display()
                    ),
                };
                for (c, cv) in children {
                    let c = vars::text(&c).with_context(|| {
                        format!("{}: a group name is not a string", file.display())
                    })?;
                    if group != "all" {
                        inv.add_child(group, &c);
                    }
                    yaml_group(inv, &c, cv, file)?;
                }
            }
            Some("vars") => {
                let vs = vars::from_mapping(v, file)?;
                inv.group_vars
                    .entry(group.to_string())
                    .or_default()
                    .extend(vs);
            }
            other => bail!(
                "{}: group `{group}`: unknown key `{}` (expected hosts, children or vars)",
                file.display(),
                other.unwrap_or("?")
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ranges_expand_or_are_refused() {
        assert_eq!(expand_range("z[1:3]").unwrap(), ["z1", "z2", "z3"]);
        assert_eq!(expand_range("p[01:02]").unwrap(), ["p01", "p02"]);
        // A `]` before the `[` (found by the hostile-input test) is text.
        assert_eq!(expand_range("a]b[1:2]").unwrap(), ["a]b1", "a]b2"]);
        assert_eq!(expand_range("a]b").unwrap(), ["a]b"]);
        assert!(expand_range("z[3:1]").is_err());
        assert!(expand_range("z[0:4000000000]").is_err());
    }

    #[test]
    fn ini_sections_children_vars_and_ranges() {
        let inv = parse_ini(
            "[master]\nc ansible_host=1.2.3.4 # the controller\n[zerocluster]\nz[1:2]\n\
             [x:children]\nmaster\n[x:vars]\nflag = yes\n# comment\n",
            Path::new("hosts"),
        )
        .unwrap();
        assert_eq!(inv.hosts["master"], ["c"]);
        assert_eq!(inv.hosts["zerocluster"], ["z1", "z2"]);
        assert_eq!(inv.children["x"], ["master"]);
        assert_eq!(
            vars::text(&inv.host_vars["c"]["ansible_host"].value).unwrap(),
            "1.2.3.4"
        );
        assert_eq!(vars::truthy(&inv.group_vars["x"]["flag"].value), Some(true));
        let e = parse_ini("c ansible_host=1\n", Path::new("hosts")).unwrap_err();
        assert!(e.to_string().contains("hosts:1: host outside any [group]"));
    }

    #[test]
    fn yaml_inventory_nests_children() {
        let inv = parse_yaml(
            "all:\n  vars:\n    pi_user: pi\n  children:\n    master:\n      hosts:\n        clusterhat:\n          ansible_host: 172.16.2.200\n    zerocluster:\n      hosts:\n        z1:\n        z2:\n    munge:\n      children:\n        master:\n        zerocluster:\n",
            Path::new("hosts.yml"),
        )
        .unwrap();
        assert_eq!(inv.hosts["zerocluster"], ["z1", "z2"]);
        assert_eq!(inv.children["munge"], ["master", "zerocluster"]);
        assert!(inv.group_vars["all"].contains_key("pi_user"));
        assert!(!inv.children.contains_key("all"));
    }
}
