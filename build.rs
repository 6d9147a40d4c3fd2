//! Embeds `overlays/` (the role templates and the built-in layers) into the
//! binary, so chbuild finds them wherever it is installed: generates
//! `$OUT_DIR/overlays.rs` with every directory and file, sorted by path.

use std::fmt::Write as _;
use std::path::Path;

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, bool)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("reading a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        let rel = p.strip_prefix(root).unwrap().to_str().unwrap_or_else(|| {
            panic!("{}: overlay paths must be UTF-8", p.display());
        });
        let rel = rel.to_string();
        let ft = std::fs::symlink_metadata(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .file_type();
        if ft.is_dir() {
            out.push((rel, true));
            walk(root, &p, out);
        } else if ft.is_file() {
            out.push((rel, false));
        } else {
            panic!(
                "{}: only files and directories may be in overlays/",
                p.display()
            );
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("overlays");
    // A directory makes cargo rerun this script when anything under it
    // changes, is added or removed.
    println!("cargo:rerun-if-changed=overlays");
    println!("cargo:rerun-if-changed=build.rs");
    let mut entries = vec![];
    walk(&root, &root, &mut entries);
    let mut src = String::from("pub static ENTRIES: &[(&str, Option<&[u8]>)] = &[\n");
    for (rel, is_dir) in &entries {
        if *is_dir {
            writeln!(src, "    ({rel:?}, None),").unwrap();
        } else {
            let abs = root.join(rel);
            writeln!(
                src,
                "    ({rel:?}, Some(include_bytes!({:?}))),",
                abs.to_str().unwrap()
            )
            .unwrap();
        }
    }
    src.push_str("];\n");
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("overlays.rs");
    std::fs::write(&out, src).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
