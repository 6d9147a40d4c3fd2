//! Bases built from Debian packages: an mmdebstrap recipe becomes a tar
//! that is then ingested like any archive. The store key is the sha256 of
//! the recipe's canonical JSON, known before any work.

use crate::profile::DebianRecipe;
use crate::tools;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The store key of a recipe.
pub fn recipe_digest(r: &DebianRecipe) -> String {
    // serde_json writes struct fields in declaration order and the package
    // list is sorted by the profile loader: the same recipe, the same bytes.
    let json = serde_json::to_vec(r).expect("a recipe always serializes");
    hex::encode(Sha256::digest(&json))
}

pub fn describe(r: &DebianRecipe) -> String {
    format!(
        "debian {} {} {} ({} packages)",
        r.suite,
        r.architecture,
        r.variant,
        r.packages.len()
    )
}

/// Variants that only unpack packages and run none of their scripts, so a
/// foreign architecture needs no emulation.
fn runs_foreign_code(variant: &str) -> bool {
    !matches!(variant, "extract" | "custom")
}

/// Check what the recipe needs before any work starts.
pub fn check_tools(r: &DebianRecipe) -> Result<()> {
    tools::MMDEBSTRAP.require()?;
    if runs_foreign_code(&r.variant) {
        tools::check_foreign_arch(r.architecture.qemu())?;
    }
    Ok(())
}

/// Build the recipe into the tar file `out`.
pub fn build_tar(r: &DebianRecipe, out: &Path) -> Result<()> {
    check_tools(r)?;
    let mut cmd = tools::MMDEBSTRAP.command()?;
    cmd.arg(format!("--variant={}", r.variant))
        .arg(format!("--architectures={}", r.architecture.debian()))
        .arg("--format=tar");
    if !r.components.is_empty() {
        cmd.arg(format!("--components={}", r.components.join(",")));
    }
    if !r.packages.is_empty() {
        cmd.arg(format!("--include={}", r.packages.join(",")));
    }
    cmd.arg(&r.suite).arg(out);
    // Without a mirror mmdebstrap follows the machine's apt configuration.
    if let Some(m) = &r.mirror {
        cmd.arg(m);
    }
    tracing::info!("building {} with mmdebstrap", describe(r));
    tools::run(&mut cmd).with_context(|| format!("building the base {}", describe(r)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::model::Arch;

    fn recipe() -> DebianRecipe {
        DebianRecipe {
            suite: "bookworm".into(),
            architecture: Arch::Arm64,
            variant: "minbase".into(),
            components: vec!["main".into()],
            mirror: None,
            packages: vec!["sudo".into()],
        }
    }

    #[test]
    fn digest_follows_the_recipe() {
        let a = recipe();
        let mut b = recipe();
        assert_eq!(recipe_digest(&a), recipe_digest(&b));
        b.packages.push("vim-tiny".into());
        assert_ne!(recipe_digest(&a), recipe_digest(&b));
        assert_eq!(recipe_digest(&a).len(), 64);
    }

    #[test]
    fn extract_needs_no_emulation() {
        assert!(runs_foreign_code("minbase"));
        assert!(!runs_foreign_code("extract"));
    }
}
