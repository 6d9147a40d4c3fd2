//! Command line: argument structs only; each verb calls one library
//! function. Machine output (`--json`) goes to stdout, the rest to stderr.

mod check;
mod commands;
mod controller;
mod deploy;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Bake ready-to-boot root filesystems for a Raspberry Pi ClusterHAT
/// cluster, offline.
#[derive(Debug, Parser)]
#[command(name = "chbuild", version, max_term_width = 80)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Verb,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Cluster profile (TOML)
    #[arg(
        long,
        short = 'p',
        global = true,
        env = "CHBUILD_PROFILE",
        default_value = "profiles/clusterhat.toml"
    )]
    pub profile: PathBuf,
    /// Secrets directory (default: the profile's `[secrets] dir`, or
    /// `secrets/<cluster>` beside the profile's `profiles/` directory)
    #[arg(long, global = true, env = "CHBUILD_SECRETS")]
    pub secrets: Option<PathBuf>,
    /// Base store directory (default: ~/.cache/chbuild/store)
    #[arg(long, global = true, env = "CHBUILD_STORE")]
    pub store: Option<PathBuf>,
    /// Print machine-readable JSON on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Only print errors
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more detail (repeat for debug output)
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Validate the profile and print the plan of the selected nodes
    Check {
        /// Nodes to show
        #[arg(default_value = "all")]
        nodes: Vec<String>,
    },
    /// Print every resolved variable of one node
    Show {
        /// Node name
        node: String,
    },
    /// Manage the cluster's secrets
    #[command(subcommand)]
    Secrets(SecretsVerb),
    /// Build node trees and tarballs (z1..z4, z1,z3, @group, all)
    Image(ImageArgs),
    /// Build an SD card image of an SD-booted node (or the controller), or
    /// write it to a card
    Sd(SdArgs),
    /// Install Zero trees into ClusterCTRL's NFS directories (on the
    /// controller)
    Deploy(DeployArgs),
    /// Swap a deployed Zero back to its previous tree
    Rollback(RollbackArgs),
    /// Show and prune the base store
    #[command(subcommand)]
    Store(StoreVerb),
    /// Build every artifact of the profile into one release directory
    Release(ReleaseArgs),
    /// Re-check a release or output directory against its manifest
    Verify {
        /// The directory holding manifest.json and SHA256SUMS
        dir: PathBuf,
    },
    /// On the controller: find what keeps a Zero from booting, with fixes
    Doctor(DoctorArgs),
    /// Write a profile equivalent to an Ansible project (inventory,
    /// group_vars, host_vars, vars/vars.yml)
    ImportAnsible(ImportArgs),
    /// Print the profile reference (Markdown), generated from the schema
    ProfileReference,
    /// Print shell completions
    Completions {
        /// Shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (chbuild.1 and one per verb) into a directory
    Man {
        /// Output directory
        #[arg(default_value = "target/man")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// Release directory (default: images/release/<cluster>)
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Leave every secret out of the artifacts; they go to a separate
    /// secrets bundle for deploy time
    #[arg(long)]
    pub public: bool,
    /// Where --public puts the secrets (default: <output>.secrets.tar.zst)
    #[arg(long, requires = "public")]
    pub secrets_bundle: Option<PathBuf>,
    /// Compression of the SD images
    #[arg(long, value_enum, default_value_t = Compress::Zst)]
    pub compress: Compress,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Check the controller under this prefix instead of /
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Also check that the deployed builds are this release's (a release or
    /// `chbuild image` output directory)
    #[arg(long)]
    pub release: Option<PathBuf>,
    /// Free space the NFS directory needs for one more tree, MiB
    #[arg(long, default_value_t = 1024)]
    pub min_free_mib: u64,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The Ansible inventory (INI or YAML)
    #[arg(long)]
    pub inventory: PathBuf,
    /// The group_vars directory (default: beside the inventory); host_vars/
    /// and vars/vars.yml are read beside it
    #[arg(long)]
    pub vars: Option<PathBuf>,
    /// Replace an existing password hash in the secrets directory
    #[arg(long)]
    pub force: bool,
    /// Write the profile here (default: stdout)
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Cluster name
    #[arg(long, default_value = "clusterhat")]
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum SecretsVerb {
    /// Create the munge key, k3s token, SSH host keys, admin key and
    /// password hash that do not exist yet
    Init {
        /// Replace existing secrets
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreVerb {
    /// List stored bases
    List,
    /// Remove stored bases no profile given here uses
    Gc {
        /// Remove every entry, not only unused ones
        #[arg(long)]
        all: bool,
    },
    /// Ingest the profile's base now (done by `image` when needed)
    Ingest,
}

#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Nodes to build (default: all)
    #[arg(default_value = "all")]
    pub nodes: Vec<String>,
    /// Output directory (default: images/out/<cluster>)
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Artifact format
    #[arg(long, value_enum, default_value_t = Format::TarZst)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Only the node tree directory
    Dir,
    /// The tree and a deterministic <node>.tar.zst
    #[value(name = "tar.zst", alias = "tar-zst")]
    TarZst,
}

impl From<Format> for crate::pipeline::Format {
    fn from(f: Format) -> Self {
        match f {
            Format::Dir => Self::Dir,
            Format::TarZst => Self::TarZst,
        }
    }
}

#[derive(Debug, Args)]
pub struct SdArgs {
    /// The SD-booted node, or the controller (with `[controller.base]`)
    pub node: String,
    /// Write the image file here (default: <output>/<node>.img)
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Write the image to this whole block device (for example /dev/sdX)
    #[arg(long)]
    pub dev: Option<PathBuf>,
    /// Disk layout (TOML, default: images/sd-mbr.toml)
    #[arg(long)]
    pub layout: Option<PathBuf>,
    /// Also write a compressed copy of the image
    #[arg(long, value_enum)]
    pub compress: Option<Compress>,
    /// Do not ask for confirmation before writing a device
    #[arg(long)]
    pub yes: bool,
    /// Allow writing a non-removable device
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compress {
    Zst,
    Xz,
}

impl From<Compress> for crate::disk::Compress {
    fn from(c: Compress) -> Self {
        match c {
            Compress::Zst => Self::Zst,
            Compress::Xz => Self::Xz,
        }
    }
}

impl SdArgs {
    pub fn options(&self) -> crate::pipeline::SdOptions {
        crate::pipeline::SdOptions {
            output: self.output.clone(),
            dev: self.dev.clone(),
            layout: self.layout.clone(),
            compress: self.compress.map(Into::into),
            write: crate::device::WriteOptions {
                yes: self.yes,
                force: self.force,
            },
        }
    }
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Zero nodes to deploy (default: every usbboot node)
    pub nodes: Vec<String>,
    /// Deploy the controller's own files (Slurm controller, munge key,
    /// hosts, SSH config...) on this machine, installing missing packages
    #[arg(long, conflicts_with_all = ["nodes", "bundle", "uninstall"])]
    pub controller: bool,
    /// Deploy under this prefix instead of /
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Deploy a bundle built elsewhere (the output directory of `image`)
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Where to read the trees from: the output directory of `chbuild
    /// image` (default: images/out/<cluster>)
    #[arg(long = "from", alias = "output", conflicts_with = "bundle")]
    pub from: Option<PathBuf>,
    /// Put each node's secrets back from this bundle (made by
    /// `chbuild release --public`)
    #[arg(long)]
    pub secrets_bundle: Option<PathBuf>,
    /// Show what would happen, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// List the files that would change against the deployed tree
    #[arg(long)]
    pub diff: bool,
    /// Deploy even when the same build is already in place
    #[arg(long)]
    pub force: bool,
    /// Remove the pN directories instead
    #[arg(long)]
    pub uninstall: bool,
    /// Do not switch node power (for unused slots)
    #[arg(long)]
    pub no_power: bool,
    /// Leave the node powered off after deploying
    #[arg(long)]
    pub no_power_on: bool,
    /// Wait this many seconds for SSH on the node after power-on
    #[arg(long, default_value_t = 300)]
    pub wait_for_ssh: u64,
    /// Do not wait for SSH after power-on
    #[arg(long, conflicts_with = "wait_for_ssh")]
    pub no_wait: bool,
    /// Do not ask before disturbing running Zeros
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Zero nodes to roll back, or the controller's name for the files of
    /// the last `deploy --controller`
    #[arg(required = true)]
    pub nodes: Vec<String>,
    /// Deployed under this prefix instead of /
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Do not switch node power
    #[arg(long)]
    pub no_power: bool,
    /// Do not ask before disturbing running Zeros
    #[arg(long)]
    pub yes: bool,
}

impl DeployArgs {
    pub fn options(&self) -> crate::deploy::DeployOptions {
        crate::deploy::DeployOptions {
            nodes: self.nodes.clone(),
            root: self.root.clone(),
            bundle: self.bundle.clone(),
            from: self.from.clone(),
            secrets_bundle: self.secrets_bundle.clone(),
            dry_run: self.dry_run,
            diff: self.diff,
            force: self.force,
            uninstall: self.uninstall,
            no_power: self.no_power,
            no_power_on: self.no_power_on,
            wait_for_ssh: self.wait_for_ssh,
            no_wait: self.no_wait,
            yes: self.yes,
        }
    }
}

impl RollbackArgs {
    pub fn options(&self) -> crate::deploy::RollbackOptions {
        crate::deploy::RollbackOptions {
            nodes: self.nodes.clone(),
            root: self.root.clone(),
            no_power: self.no_power,
            yes: self.yes,
        }
    }
}

/// Parse arguments, run, and map the outcome to an exit code:
/// 0 ok, 1 failure, 2 bad usage or bad profile.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    crate::progress::init_logging(cli.global.quiet, cli.global.verbose);
    match commands::dispatch(&cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            if crate::error::is_usage(&e) {
                2
            } else {
                1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
