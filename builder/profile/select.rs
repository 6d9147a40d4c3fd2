//! Node selection: `z1..z4`, `z1,z3`, `@zerocluster`, `all`, and mixes.

use super::Profile;
use anyhow::{bail, Result};

/// Resolve selection expressions (each may hold comma-separated terms) to
/// node names, in profile order, without duplicates.
pub fn select_nodes(profile: &Profile, exprs: &[String]) -> Result<Vec<String>> {
    let mut wanted: Vec<String> = Vec::new();
    for expr in exprs {
        for term in expr.split(',').map(str::trim) {
            if term.is_empty() {
                bail!("empty node name in selection `{expr}`");
            }
            for name in select_term(profile, term)? {
                if !wanted.contains(&name) {
                    wanted.push(name);
                }
            }
        }
    }
    if wanted.is_empty() {
        bail!("no nodes selected");
    }
    Ok(profile
        .nodes
        .iter()
        .filter(|n| wanted.contains(&n.name))
        .map(|n| n.name.clone())
        .collect())
}

fn known(profile: &Profile, name: &str) -> Result<String> {
    if profile.node(name).is_some() {
        Ok(name.to_string())
    } else {
        let names: Vec<&str> = profile.nodes.iter().map(|n| n.name.as_str()).collect();
        bail!(
            "unknown node `{name}` (the profile {} has: {})",
            profile.file.display(),
            names.join(", ")
        )
    }
}

fn select_term(profile: &Profile, term: &str) -> Result<Vec<String>> {
    if term == "all" {
        return Ok(profile.nodes.iter().map(|n| n.name.clone()).collect());
    }
    if let Some(group) = term.strip_prefix('@') {
        let groups = profile.group_names();
        if !groups.contains(group) {
            let known: Vec<String> = groups.iter().map(|g| format!("@{g}")).collect();
            bail!(
                "unknown group `@{group}` (known groups: {})",
                known.join(", ")
            );
        }
        let members: Vec<String> = profile
            .nodes
            .iter()
            .filter(|n| n.groups.contains(group))
            .map(|n| n.name.clone())
            .collect();
        if members.is_empty() {
            bail!("group `@{group}` has no nodes to build");
        }
        return Ok(members);
    }
    if let Some((a, b)) = term.split_once("..") {
        let (pa, na) = split_number(a).ok_or_else(|| bad_range(term))?;
        let (pb, nb) = split_number(b).ok_or_else(|| bad_range(term))?;
        if pa != pb {
            bail!("range `{term}` mixes prefixes `{pa}` and `{pb}`");
        }
        if na > nb {
            bail!("range `{term}` is empty: {na} is greater than {nb}");
        }
        return (na..=nb)
            .map(|i| known(profile, &format!("{pa}{i}")))
            .collect();
    }
    Ok(vec![known(profile, term)?])
}

fn bad_range(term: &str) -> anyhow::Error {
    anyhow::anyhow!("range `{term}` must look like `z1..z4`")
}

fn split_number(s: &str) -> Option<(&str, u32)> {
    let idx = s.find(|c: char| c.is_ascii_digit())?;
    let (prefix, digits) = s.split_at(idx);
    if prefix.is_empty() {
        return None;
    }
    Some((prefix, digits.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        crate::profile::default_profile_for_tests()
    }

    fn sel(s: &[&str]) -> Result<Vec<String>> {
        select_nodes(
            &profile(),
            &s.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn ranges_lists_groups_and_all() {
        assert_eq!(sel(&["z1..z4"]).unwrap(), ["z1", "z2", "z3", "z4"]);
        assert_eq!(sel(&["z3,z1"]).unwrap(), ["z1", "z3"]);
        assert_eq!(sel(&["@zerocluster"]).unwrap(), ["z1", "z2", "z3", "z4"]);
        assert_eq!(
            sel(&["@management", "z2..z3", "z2"]).unwrap(),
            ["z2", "z3", "p5"]
        );
        assert_eq!(sel(&["all"]).unwrap().len(), 9);
        assert_eq!(
            sel(&["p5,@zerocluster"]).unwrap(),
            ["z1", "z2", "z3", "z4", "p5"]
        );
    }

    #[test]
    fn bad_selections_are_errors() {
        let e = sel(&["z9"]).unwrap_err().to_string();
        assert!(e.contains("unknown node `z9`"), "{e}");
        let e = sel(&["z4..z1"]).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        let e = sel(&["z1..p3"]).unwrap_err().to_string();
        assert!(e.contains("mixes prefixes"), "{e}");
        let e = sel(&["z1..z7"]).unwrap_err().to_string();
        assert!(e.contains("unknown node `z5`"), "{e}");
        let e = sel(&["@nope"]).unwrap_err().to_string();
        assert!(e.contains("unknown group `@nope`"), "{e}");
        let e = sel(&["z1,,z2"]).unwrap_err().to_string();
        assert!(e.contains("empty node name"), "{e}");
    }
}
