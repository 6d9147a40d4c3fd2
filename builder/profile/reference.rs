//! The profile reference, generated from the doc comments of the schema
//! (`schema.rs`), so the settings are documented in one place only.
//! `chbuild profile-reference` prints it; a test keeps README.md in step.

const SCHEMA: &str = include_str!("schema.rs");

/// TOML table of each raw struct, in the order the reference lists them.
const TABLES: [(&str, &str); 12] = [
    ("RawProfile", "top level"),
    ("RawCluster", "[cluster]"),
    ("RawController", "[controller]"),
    ("RawBase", "[base]"),
    ("RawUser", "[user]"),
    ("RawFeatures", "[features]"),
    ("RawPartition", "[[features.slurm_partitions_extra]]"),
    ("RawPackages", "[packages]"),
    ("RawTree", "[tree]"),
    ("RawSecrets", "[secrets]"),
    ("RawNode", "[[node]]"),
    ("RawOverrides", "[node.overrides]"),
];

struct Field {
    key: String,
    doc: String,
}

/// Fields of `struct name` with their doc comments, in source order.
fn fields(name: &str) -> Vec<Field> {
    let start = SCHEMA
        .find(&format!("pub struct {name} {{"))
        .unwrap_or_else(|| panic!("schema.rs has no struct {name}"));
    let body = &SCHEMA[start..];
    let body = &body[..body.find("\n}").unwrap_or(body.len())];
    let mut out = vec![];
    let mut doc: Vec<String> = vec![];
    let mut rename: Option<String> = None;
    for line in body.lines().skip(1) {
        let l = line.trim();
        if let Some(d) = l.strip_prefix("///") {
            doc.push(d.trim().to_string());
        } else if let Some(r) = l.strip_prefix("#[serde(rename = \"") {
            rename = r.split('"').next().map(str::to_string);
        } else if let Some(f) = l.strip_prefix("pub ") {
            let key = f.split(':').next().unwrap_or_default().trim().to_string();
            out.push(Field {
                key: rename.take().unwrap_or(key),
                doc: doc.join(" "),
            });
            doc.clear();
        }
    }
    out
}

/// The reference as Markdown.
pub fn markdown() -> String {
    let mut s = String::new();
    for (name, table) in TABLES {
        s.push_str(&format!("\n### {table}\n\n| key | meaning |\n|---|---|\n"));
        for f in fields(name) {
            s.push_str(&format!(
                "| `{}` | {} |\n",
                f.key,
                f.doc.replace('|', "\\|")
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_field_is_documented() {
        for (name, _) in super::TABLES {
            for f in super::fields(name) {
                assert!(!f.doc.is_empty(), "{name}.{} has no doc comment", f.key);
            }
        }
    }

    #[test]
    fn readme_carries_the_generated_reference() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("<!-- profile-reference:start -->")
            .expect("README marker")
            + "<!-- profile-reference:start -->".len();
        let end = readme
            .find("<!-- profile-reference:end -->")
            .expect("README end marker");
        assert_eq!(
            readme[start..end].trim(),
            super::markdown().trim(),
            "README.md's profile reference is stale: regenerate it with `chbuild profile-reference`"
        );
    }
}
