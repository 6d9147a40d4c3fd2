//! One function per verb: load the profile, call the library, report.

use super::{check, deploy, Cli, ImageArgs, ReleaseArgs, SdArgs, SecretsVerb, StoreVerb, Verb};
use crate::error::UsageError;
use crate::profile::{self, Profile};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub fn load(cli: &Cli) -> Result<Profile> {
    let path = &cli.global.profile;
    if !path.is_file() {
        return Err(UsageError(format!(
            "no profile at {}: give one with -p FILE or CHBUILD_PROFILE (the default is \
             profiles/clusterhat.toml in the current directory)",
            path.display()
        ))
        .into());
    }
    let p = load_from(cli, path)?;
    if let profile::BaseSource::Url {
        url,
        checksum: None,
    } = &p.base.source
    {
        tracing::warn!(
            "{}: base {url} has checksum = \"unverified\": its download is not checked",
            p.file.display()
        );
    }
    Ok(p)
}

fn load_from(cli: &Cli, path: &std::path::Path) -> Result<Profile> {
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
        Verb::Check { nodes } => check::check(cli, nodes),
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
        Verb::Doctor(args) => doctor(cli, args),
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
    let (controller, rest) = super::controller::split(&p, &args.nodes);
    if controller {
        super::controller::image(cli, &p, args)?;
        if rest.is_empty() {
            return Ok(());
        }
    }
    let nodes = select(&p, &rest)?;
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
    let node = if p.controller.is_named(&args.node) {
        p.controller.hostname.clone()
    } else {
        select(&p, std::slice::from_ref(&args.node))?.remove(0)
    };
    let st = store(cli)?;
    let report = crate::pipeline::sd(&p, &st, &node, &args.options())?;
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
    if !dir.is_dir() {
        return Err(UsageError(format!(
            "{} does not exist or is not a directory (give a release or output directory)",
            dir.display()
        ))
        .into());
    }
    let files = crate::artifact::verify(dir)?;
    if cli.global.json {
        return print_json(cli, &files);
    }
    tracing::info!("{}: {} files verified", dir.display(), files.len());
    Ok(())
}

fn store_verb(cli: &Cli, verb: &StoreVerb) -> Result<()> {
    let st = store(cli)?;
    match verb {
        StoreVerb::List => {
            let entries = st.list()?;
            let layers = st.layers()?;
            if cli.global.json {
                // One list: the bases, then the package layers built on
                // them, each saying which it is.
                let mut all = vec![];
                for e in &entries {
                    let mut v = serde_json::to_value(e)?;
                    v["kind"] = "base".into();
                    all.push(v);
                }
                for l in &layers {
                    let mut v = serde_json::to_value(l)?;
                    v["kind"] = if l.initramfs.is_some() {
                        "zero-boot".into()
                    } else {
                        "layer".into()
                    };
                    v["digest"] = l.key.clone().into();
                    all.push(v);
                }
                return print_json(cli, &all);
            }
            if entries.is_empty() {
                tracing::info!(
                    "the store {} is empty (`chbuild store ingest` or `chbuild image` fills it)",
                    st.root.display()
                );
            }
            for e in entries {
                println!("{}  {:>8} MiB  {}", e.digest, e.size >> 20, e.source);
            }
            for l in layers {
                let (what, holds) = match &l.initramfs {
                    Some(i) => (
                        "Zero boot layer",
                        format!("initramfs for {}", i.kernels.join(" ")),
                    ),
                    None => ("layer", l.packages.join(" ")),
                };
                println!(
                    "{}  {:>8} MiB  {what} on {}{}: {holds}",
                    l.key,
                    l.size >> 20,
                    &l.base[..12],
                    l.parent
                        .as_deref()
                        .map(|p| format!(" (built on layer {})", &p[..12]))
                        .unwrap_or_default(),
                );
            }
        }
        StoreVerb::Gc { all } => {
            let (keep, keep_blobs) = if *all {
                (vec![], vec![])
            } else {
                let p = load(cli)?;
                let blobs = p
                    .features
                    .k3s_bundle
                    .iter()
                    .flat_map(|b| [b.binary.sha256.clone(), b.images.sha256.clone()])
                    .collect();
                (crate::pipeline::store_keep(&p, &st)?, blobs)
            };
            for d in st.gc(&keep)? {
                tracing::info!("removed {d}");
            }
            for d in st.gc_blobs(&keep_blobs)? {
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
    let mut cmd = <Cli as clap::CommandFactory>::command();
    // Building propagates the global options into every verb and names
    // each `chbuild VERB` for its synopsis.
    cmd.build();
    let mut pages = vec![("chbuild".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        pages.push((format!("chbuild-{}", sub.get_name()), sub.clone()));
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

fn import_ansible(cli: &Cli, a: &super::ImportArgs) -> Result<()> {
    // The hash goes where the written profile will look for it: the
    // project's `secrets/<cluster>`, or the --secrets directory, which the
    // profile then names.
    let project = a
        .output
        .as_deref()
        .map(profile::project_root)
        .unwrap_or_default();
    let (secrets, key) = match &cli.global.secrets {
        Some(d) => (d.clone(), Some(profile_relative(d, &project)?)),
        None => (project.join(format!("secrets/{}", a.name)), None),
    };
    let opts = crate::import::ImportOptions {
        inventory: &a.inventory,
        group_vars: a.vars.as_deref(),
        cluster: &a.name,
        secrets_dir: &secrets,
        secrets_key: key,
        force: a.force,
    };
    let mut imported = crate::import::import_ansible(&opts)?;
    crate::import::write_import(&mut imported, &opts, a.output.as_deref())?;
    if a.output.is_none() {
        print!("{}", imported.profile);
    }
    let r = &imported.report;
    if cli.global.json {
        // stdout carries the profile when no -o is given.
        let report = serde_json::to_string_pretty(r)?;
        if a.output.is_some() {
            println!("{report}");
        } else {
            eprintln!("{report}");
        }
        return Ok(());
    }
    for s in &r.secrets {
        tracing::info!("password hash written to {s}");
    }
    for s in &r.kept {
        tracing::warn!("kept existing {s}: it differs from pi_pwhash (use --force to replace it)");
    }
    for s in &r.assumed {
        tracing::info!("assumed: {s}");
    }
    for v in &r.variables {
        match v.kind {
            "profile" => tracing::info!("{} {} -> {}", v.scope, v.variable, v.note),
            "deploy" => tracing::info!("{} {} -> deploy: {}", v.scope, v.variable, v.note),
            _ => tracing::warn!("not mapped: {} {} ({})", v.scope, v.variable, v.note),
        }
    }
    for w in &r.warnings {
        tracing::warn!("{w}");
    }
    Ok(())
}

/// `dir` as the profile's `[secrets] dir`: relative to the project root
/// when it lies inside it, absolute otherwise.
fn profile_relative(dir: &std::path::Path, project: &std::path::Path) -> Result<String> {
    let cwd = std::env::current_dir().context("finding the current directory")?;
    let abs = |p: &std::path::Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            cwd.join(p)
        }
    };
    let (d, root) = (abs(dir), abs(project));
    Ok(match d.strip_prefix(&root) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
        _ => d.display().to_string(),
    })
}

fn doctor(cli: &Cli, a: &super::DoctorArgs) -> Result<()> {
    use crate::doctor::Status;
    use std::io::Write;
    let findings = crate::doctor::diagnose(&crate::doctor::DoctorOptions {
        root: a.root.clone(),
        release: a.release.clone(),
        min_free: a.min_free_mib << 20,
    })?;
    if cli.global.json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        let mut o = std::io::stdout().lock();
        for f in &findings {
            match (&f.status, &f.fix) {
                (Status::Problem, Some(fix)) => writeln!(
                    o,
                    "PROBLEM {} {}: {} -- fix: {fix}",
                    f.check, f.subject, f.message
                )?,
                _ if !cli.global.quiet => {
                    writeln!(o, "ok      {} {}: {}", f.check, f.subject, f.message)?
                }
                _ => {}
            }
        }
    }
    let problems = findings
        .iter()
        .filter(|f| f.status == Status::Problem)
        .count();
    if problems > 0 {
        anyhow::bail!("{problems} problem(s) found");
    }
    Ok(())
}
