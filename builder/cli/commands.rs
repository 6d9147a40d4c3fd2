//! One function per verb: load the profile, call the library, report.

use super::{
    check, deploy, Cli, ImageArgs, ImportArgs, ReleaseArgs, SdArgs, SecretsVerb, StoreVerb, Verb,
};
use crate::error::UsageError;
use crate::profile::{self, Profile};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub fn load(cli: &Cli) -> Result<Profile> {
    let path = &cli.global.profile;
    match &cli.global.secrets {
        None => profile::load_profile(path),
        Some(dir) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(profile::parse_profile_with_secrets(&text, path, dir)?)
        }
    }
}

pub fn select(p: &Profile, nodes: &[String]) -> Result<Vec<String>> {
    profile::select_nodes(p, nodes).map_err(|e| UsageError(format!("{e:#}")).into())
}

pub fn store(cli: &Cli) -> Result<crate::store::Store> {
    let dir = cli
        .global
        .store
        .clone()
        .unwrap_or_else(crate::store::Store::default_dir);
    crate::store::Store::open(&dir)
}

pub fn dispatch(cli: &Cli) -> Result<()> {
    match &cli.command {
        Verb::Check => check::check(cli),
        Verb::Show { node } => check::show(cli, node),
        Verb::Secrets(SecretsVerb::Init { force }) => secrets_init(cli, *force),
        Verb::Image(args) => image(cli, args),
        Verb::Sd(args) => sd(cli, args),
        Verb::Deploy(args) => deploy::deploy(cli, args),
        Verb::Rollback(args) => deploy::rollback(cli, args),
        Verb::ProfileReference => {
            print!("{}", profile::reference::markdown());
            Ok(())
        }
        Verb::Release(args) => release(cli, args),
        Verb::Verify { dir } => verify(cli, dir),
        Verb::ImportAnsible(args) => import_ansible(cli, args),
        Verb::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "chbuild", &mut std::io::stdout());
            Ok(())
        }
        Verb::Man { dir } => write_man_pages(dir),
        Verb::Store(v) => store_verb(cli, v),
    }
}

/// Print a report as JSON on stdout when `--json` asks for it.
pub fn print_json(cli: &Cli, report: &impl serde::Serialize) -> Result<()> {
    if cli.global.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    }
    Ok(())
}

fn secrets_init(cli: &Cli, force: bool) -> Result<()> {
    let p = load(cli)?;
    let report = crate::secrets::init(&p, &p.secrets_dir, force)?;
    if cli.global.json {
        return print_json(cli, &report);
    }
    for c in &report.created {
        tracing::info!("created {}", p.secrets_dir.join(c).display());
    }
    for k in &report.kept {
        tracing::info!(
            "kept existing {} (use --force to replace)",
            p.secrets_dir.join(k).display()
        );
    }
    Ok(())
}

fn image(cli: &Cli, args: &ImageArgs) -> Result<()> {
    let p = load(cli)?;
    let nodes = select(&p, &args.nodes)?;
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| crate::artifact::default_output_dir(&p));
    let st = store(cli)?;
    let report = crate::pipeline::image(&p, &st, &nodes, &out, args.format.into(), None)?;
    print_json(cli, &report)
}

fn sd(cli: &Cli, args: &SdArgs) -> Result<()> {
    let p = load(cli)?;
    let nodes = select(&p, std::slice::from_ref(&args.node))?;
    let st = store(cli)?;
    let report = crate::pipeline::sd(&p, &st, &nodes[0], &args.options())?;
    print_json(cli, &report)
}

fn release(cli: &Cli, args: &ReleaseArgs) -> Result<()> {
    let p = load(cli)?;
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from("images/release").join(&p.name));
    let bundle = args.public.then(|| {
        args.secrets_bundle.clone().unwrap_or_else(|| {
            let name = out.file_name().unwrap_or_default().to_string_lossy();
            out.with_file_name(format!("{name}.secrets.tar.zst"))
        })
    });
    let st = store(cli)?;
    let report = crate::pipeline::release(&p, &st, &out, args.compress.into(), bundle.as_deref())?;
    print_json(cli, &report)
}

fn verify(cli: &Cli, dir: &Path) -> Result<()> {
    let files = crate::artifact::verify(dir)?;
    if cli.global.json {
        return print_json(cli, &files);
    }
    tracing::info!("{}: {} files verified", dir.display(), files.len());
    Ok(())
}

fn import_ansible(cli: &Cli, args: &ImportArgs) -> Result<()> {
    let secrets = cli
        .global
        .secrets
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("secrets/{}", args.name)));
    let (text, report) =
        crate::import::import_ansible(&args.inventory, &args.vars, &args.name, &secrets)?;
    // Prove the result is a valid profile before anyone uses it.
    let target = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from("imported.toml"));
    profile::parse_profile_with_secrets(&text, &target, &secrets)?;
    match &args.output {
        Some(out) => crate::artifact::write_atomic(out, text.as_bytes())?,
        None => print!("{text}"),
    }
    if cli.global.json {
        eprintln!("{}", serde_json::to_string_pretty(&report.unmapped)?);
        return Ok(());
    }
    for s in &report.secrets {
        tracing::info!("password hash moved to {s}");
    }
    for a in &report.assumed {
        tracing::info!("assumed: {a}");
    }
    for u in &report.unmapped {
        tracing::warn!("not mapped: {} {} ({})", u.scope, u.variable, u.note);
    }
    Ok(())
}

fn store_verb(cli: &Cli, verb: &StoreVerb) -> Result<()> {
    let st = store(cli)?;
    match verb {
        StoreVerb::List => {
            let entries = st.list()?;
            if cli.global.json {
                return print_json(cli, &entries);
            }
            for e in entries {
                println!("{}  {:>8} MiB  {}", e.digest, e.size >> 20, e.source);
            }
        }
        StoreVerb::Gc { all } => {
            let keep = if *all {
                vec![]
            } else {
                let p = load(cli)?;
                st.digest_of(&p.base).into_iter().collect()
            };
            for d in st.gc(&keep)? {
                tracing::info!("removed {d}");
            }
        }
        StoreVerb::Ingest => {
            let p = load(cli)?;
            let base = st.ensure_base(&p.base)?;
            println!("{}", base.digest);
        }
    }
    Ok(())
}

/// chbuild.1 plus chbuild-<verb>.1 for every verb, from the definitions.
fn write_man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = <Cli as clap::CommandFactory>::command();
    let mut pages = vec![("chbuild".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        // clap names commands with 'static strings; a page name is made
        // once per verb per run, so leaking it is harmless.
        let name: &'static str = Box::leak(format!("chbuild-{}", sub.get_name()).into_boxed_str());
        pages.push((name.to_string(), sub.clone().name(name)));
    }
    for (name, c) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).render(&mut buf)?;
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        tracing::info!("wrote {}", path.display());
    }
    Ok(())
}
