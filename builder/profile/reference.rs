//! The profile reference, generated from the raw profile types: their field
//! names (as written in TOML) and doc comments, read through
//! `documented::DocumentedFields`, so the settings are documented in one
//! place only. `chbuild profile-reference` prints it; a test keeps README.md
//! in step.

use super::schema::*;
use documented::DocumentedFields;

/// One key of a table with its doc comment on one line.
struct Field {
    key: &'static str,
    doc: String,
}

/// The keys of `T` in declaration order.
fn fields<T: DocumentedFields>() -> Vec<Field> {
    T::FIELD_NAMES
        .iter()
        .zip(T::FIELD_DOCS)
        .map(|(key, doc)| Field {
            key,
            doc: doc.split_whitespace().collect::<Vec<_>>().join(" "),
        })
        .collect()
}

/// Each TOML table with its keys, in the order the reference lists them.
fn tables() -> [(&'static str, Vec<Field>); 11] {
    [
        ("top level", fields::<RawProfile>()),
        ("[cluster]", fields::<RawCluster>()),
        ("[controller]", fields::<RawController>()),
        ("[base]", fields::<RawBase>()),
        ("[user]", fields::<RawUser>()),
        ("[features]", fields::<RawFeatures>()),
        ("[packages]", fields::<RawPackages>()),
        ("[tree]", fields::<RawTree>()),
        ("[secrets]", fields::<RawSecrets>()),
        ("[[node]]", fields::<RawNode>()),
        ("[node.overrides]", fields::<RawOverrides>()),
    ]
}

/// The reference as Markdown.
pub fn markdown() -> String {
    let mut s = String::new();
    for (table, fields) in tables() {
        s.push_str(&format!("\n### {table}\n\n| key | meaning |\n|---|---|\n"));
        for f in fields {
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
        for (table, fields) in super::tables() {
            for f in fields {
                assert!(!f.doc.is_empty(), "{table} {} has no doc comment", f.key);
            }
        }
    }

    /// A field serde renames is listed by its TOML key.
    #[test]
    fn documented_keys_are_the_toml_keys() {
        let names: Vec<&str> = super::fields::<super::RawProfile>()
            .iter()
            .map(|f| f.key)
            .collect();
        assert!(
            names.contains(&"node") && !names.contains(&"nodes"),
            "{names:?}"
        );
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
