//! SD card layouts (`images/sd-*.toml`): partition table type, boot size,
//! alignment and the root margin. Raw TOML and validated values are
//! different types; parsing is pure, loading only reads.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// DOS partition table: every Pi firmware boots it.
    Mbr,
    /// GPT: Pi 4/5 bootloader EEPROMs boot it.
    Gpt,
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLayout {
    /// Partition table type: "mbr" or "gpt".
    table: TableKind,
    /// Partition start and size alignment, MiB.
    alignment_mib: u64,
    /// FAT32 boot partition size, MiB.
    boot_size_mib: u64,
    /// Free space left in the root file system of the image, MiB.
    root_margin_mib: u64,
}

/// A validated layout, sizes in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub file: PathBuf,
    pub table: TableKind,
    pub alignment: u64,
    pub boot_size: u64,
    pub root_margin: u64,
}

/// The layouts shipped in `images/`, embedded at build time so that an
/// installed binary needs no source tree. The first is the default.
const BUILT_IN: [(&str, &str); 2] = [
    ("sd-mbr.toml", include_str!("../../images/sd-mbr.toml")),
    ("sd-gpt.toml", include_str!("../../images/sd-gpt.toml")),
];

/// The default layout (MBR), as the README names it.
pub fn default_layout_path() -> PathBuf {
    PathBuf::from("images").join(BUILT_IN[0].0)
}

/// The layout to use and its text (an input of the image): the file given,
/// else the built-in default. A shipped name (`images/sd-gpt.toml`, as the
/// README writes it) that is not there from the current directory is the
/// built-in copy.
pub fn resolve_layout(path: Option<&Path>) -> Result<(Layout, String)> {
    let path = path
        .map(Path::to_path_buf)
        .unwrap_or_else(default_layout_path);
    let shipped = BUILT_IN.iter().find(|(name, _)| {
        path.file_name() == Some(std::ffi::OsStr::new(name))
            && matches!(path.parent().and_then(Path::to_str), Some("" | "images"))
    });
    let text = match (path.exists(), shipped) {
        (false, Some((_, text))) => text.to_string(),
        _ => std::fs::read_to_string(&path)
            .with_context(|| format!("reading the disk layout {}", path.display()))?,
    };
    Ok((parse_layout(&text, &path)?, text))
}

pub fn load_layout(path: &Path) -> Result<Layout> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the disk layout {}", path.display()))?;
    parse_layout(&text, path)
}

/// Parse and validate; every error names the file and, where it can, the key.
pub fn parse_layout(text: &str, file: &Path) -> Result<Layout> {
    let raw: RawLayout = toml::from_str(text)
        .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.to_string().trim_end()))?;
    let bad = |key: &str, why: &str| anyhow::anyhow!("{}: key `{key}`: {why}", file.display());
    if raw.alignment_mib == 0 || !raw.alignment_mib.is_power_of_two() || raw.alignment_mib > 64 {
        return Err(bad(
            "alignment_mib",
            "must be a power of two between 1 and 64",
        ));
    }
    // FAT32 needs at least 65525 clusters: with 512-byte clusters that is
    // about 33 MiB; the Pi firmware and kernels want far more anyway.
    if !(64..=4096).contains(&raw.boot_size_mib) {
        return Err(bad("boot_size_mib", "must be between 64 and 4096"));
    }
    if raw.boot_size_mib % raw.alignment_mib != 0 {
        return Err(bad(
            "boot_size_mib",
            "must be a multiple of alignment_mib so the root partition stays aligned",
        ));
    }
    if raw.root_margin_mib > 1 << 20 {
        return Err(bad("root_margin_mib", "must be at most 1048576 (1 TiB)"));
    }
    Ok(Layout {
        file: file.to_path_buf(),
        table: raw.table,
        alignment: raw.alignment_mib * MIB,
        boot_size: raw.boot_size_mib * MIB,
        root_margin: raw.root_margin_mib * MIB,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Layout> {
        parse_layout(text, Path::new("lay.toml"))
    }

    #[test]
    fn built_in_layouts_need_no_source_tree() {
        let (mbr, _) = resolve_layout(None).unwrap();
        assert_eq!(mbr.table, TableKind::Mbr);
        // Tests run in the source tree: a bare name is not on disk there, so
        // this is the embedded copy.
        assert!(!Path::new("sd-gpt.toml").exists());
        let (gpt, text) = resolve_layout(Some(Path::new("sd-gpt.toml"))).unwrap();
        assert_eq!(gpt.table, TableKind::Gpt);
        assert_eq!(text, BUILT_IN[1].1);
        let e = resolve_layout(Some(Path::new("/nonexistent/sd-gpt.toml"))).unwrap_err();
        assert!(
            format!("{e:#}").contains("/nonexistent/sd-gpt.toml"),
            "{e:#}"
        );
    }

    #[test]
    fn shipped_layouts_parse() {
        let mbr = load_layout(&default_layout_path()).unwrap();
        assert_eq!(mbr.table, TableKind::Mbr);
        assert_eq!(mbr.boot_size, 512 * MIB);
        let gpt = load_layout(&default_layout_path().with_file_name("sd-gpt.toml")).unwrap();
        assert_eq!(gpt.table, TableKind::Gpt);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let e =
            parse("table='mbr'\nalignment_mib=4\nboot_size_mib=256\nroot_margin_mib=1\nbot=1\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("lay.toml") && e.contains("bot"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = parse("table='mbr'\nalignment_mib=3\nboot_size_mib=256\nroot_margin_mib=1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lay.toml: key `alignment_mib`"), "{e}");
        let e = parse("table='mbr'\nalignment_mib=4\nboot_size_mib=16\nroot_margin_mib=1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`boot_size_mib`"), "{e}");
        let e = parse("table='dos'\nalignment_mib=4\nboot_size_mib=256\nroot_margin_mib=1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lay.toml") && e.contains("dos"), "{e}");
    }
}
