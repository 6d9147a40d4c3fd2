//! One function per verb: load the profile, call the library, report.

use super::{Cli, SecretsVerb, StoreVerb, UsageError, Verb};
use crate::profile::{self, plan::NodePlan, Profile};
use anyhow::{Context, Result};
use std::io::Write;

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
        Verb::Check => check(cli),
        Verb::Show { node } => show(cli, node),
        Verb::Secrets(SecretsVerb::Init { force }) => {
            let p = load(cli)?;
            let report = crate::secrets::init(&p, &p.secrets_dir, *force)?;
            if cli.global.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for c in &report.created {
                    tracing::info!("created {}", p.secrets_dir.join(c).display());
                }
                for k in &report.kept {
                    tracing::info!(
                        "kept existing {} (use --force to replace)",
                        p.secrets_dir.join(k).display()
                    );
                }
            }
            Ok(())
        }
        Verb::Image(args) => {
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
            let report = crate::pipeline::image(&p, &st, &nodes, &out, args.format, None)?;
            if cli.global.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            Ok(())
        }
        Verb::Sd(args) => {
            let p = load(cli)?;
            let nodes = select(&p, std::slice::from_ref(&args.node))?;
            let st = store(cli)?;
            let report = crate::pipeline::sd(&p, &st, &nodes[0], args)?;
            if cli.global.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            Ok(())
        }
        Verb::Deploy(args) if args.controller => {
            let p = load(cli)?;
            super::controller::deploy(cli, &p, args)
        }
        Verb::Deploy(args) => {
            let p = load(cli)?;
            crate::deploy::run(&p, cli, args)
        }
        Verb::Rollback(args) => {
            let p = load(cli)?;
            if super::controller::names_controller(&p, &args.nodes)? {
                return super::controller::rollback(cli, args);
            }
            crate::deploy::rollback(&p, args)
        }
        Verb::ProfileReference => {
            print!("{}", profile::reference::markdown());
            Ok(())
        }
        Verb::Release(a) => {
            let p = load(cli)?;
            let out = a
                .output
                .clone()
                .unwrap_or_else(|| std::path::PathBuf::from("images/release").join(&p.name));
            let bundle = a.public.then(|| {
                a.secrets_bundle.clone().unwrap_or_else(|| {
                    let name = out.file_name().unwrap_or_default().to_string_lossy();
                    out.with_file_name(format!("{name}.secrets.tar.zst"))
                })
            });
            let st = store(cli)?;
            let report = crate::pipeline::release(&p, &st, &out, a.compress, bundle.as_deref())?;
            if cli.global.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            Ok(())
        }
        Verb::Verify { dir } => {
            let files = crate::artifact::verify(dir)?;
            if cli.global.json {
                println!("{}", serde_json::to_string_pretty(&files)?);
            } else {
                tracing::info!("{}: {} files verified", dir.display(), files.len());
            }
            Ok(())
        }
        Verb::ImportAnsible(a) => {
            let secrets = cli
                .global
                .secrets
                .clone()
                .unwrap_or_else(|| std::path::PathBuf::from(format!("secrets/{}", a.name)));
            let (text, report) =
                crate::import::import_ansible(&a.inventory, &a.vars, &a.name, &secrets)?;
            // Prove the result is a valid profile before anyone uses it.
            let target = a
                .output
                .clone()
                .unwrap_or_else(|| std::path::PathBuf::from("imported.toml"));
            profile::parse_profile_with_secrets(&text, &target, &secrets)?;
            match &a.output {
                Some(out) => crate::artifact::write_atomic(out, text.as_bytes())?,
                None => print!("{text}"),
            }
            if cli.global.json {
                eprintln!("{}", serde_json::to_string_pretty(&report.unmapped)?);
            } else {
                for s in &report.secrets {
                    tracing::info!("password hash moved to {s}");
                }
                for a in &report.assumed {
                    tracing::info!("assumed: {a}");
                }
                for u in &report.unmapped {
                    tracing::warn!("not mapped: {} {} ({})", u.scope, u.variable, u.note);
                }
            }
            Ok(())
        }
        Verb::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "chbuild", &mut std::io::stdout());
            Ok(())
        }
        Verb::Man { dir } => write_man_pages(dir),
        Verb::Store(v) => {
            let st = store(cli)?;
            match v {
                StoreVerb::List => {
                    let entries = st.list()?;
                    if cli.global.json {
                        println!("{}", serde_json::to_string_pretty(&entries)?);
                    } else {
                        for e in entries {
                            println!("{}  {:>8} MiB  {}", e.digest, e.size >> 20, e.source);
                        }
                    }
                    Ok(())
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
                    Ok(())
                }
                StoreVerb::Ingest => {
                    let p = load(cli)?;
                    let base = st.ensure_base(&p.base)?;
                    println!("{}", base.digest);
                    Ok(())
                }
            }
        }
    }
}

fn check(cli: &Cli) -> Result<()> {
    let p = load(cli)?;
    let plans: Vec<NodePlan> = p.nodes.iter().map(|n| p.plan(n)).collect();
    if cli.global.json {
        let v = serde_json::json!({
            "profile": p.file,
            "cluster": p.name,
            "base": p.base,
            "secrets_dir": p.secrets_dir,
            "controller": p.controller_plan(),
            "nodes": plans.iter().map(|pl| serde_json::json!({
                "name": pl.name,
                "hostname": pl.hostname,
                "kind": pl.kind,
                "model": pl.model,
                "address": pl.address,
                "groups": pl.groups,
                "features": features(pl),
                "overlays": pl.overlays,
                "artifacts": artifacts(pl),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "profile {} (cluster {}): valid",
        p.file.display(),
        p.name
    )?;
    writeln!(o, "base: {}", describe_base(&p))?;
    writeln!(
        o,
        "controller: {} ({}) lan {} zeros {}",
        p.controller.hostname,
        p.controller.aliases.join(", "),
        p.controller.lan_address,
        p.controller.zero_address
    )?;
    super::controller::write_plan(&mut o, &p.controller_plan())?;
    for pl in &plans {
        writeln!(
            o,
            "\n{} [{}] {} {} hostname={} groups={}",
            pl.name,
            serde_json::to_value(pl.kind)?.as_str().unwrap_or(""),
            pl.model,
            pl.address,
            pl.hostname,
            pl.groups.join(",")
        )?;
        writeln!(o, "  features:  {}", features(pl).join(", "))?;
        writeln!(o, "  overlays:  {}", pl.overlays.join(" < "))?;
        writeln!(o, "  packages:  {}", pl.packages.join(" "))?;
        writeln!(o, "  artifacts: {}", artifacts(pl).join(", "))?;
    }
    Ok(())
}

fn describe_base(p: &Profile) -> String {
    match &p.base.source {
        profile::BaseSource::Archive { path, .. } => format!("archive {}", path.display()),
        profile::BaseSource::Url { url, checksum } => format!("{url} ({checksum})"),
        profile::BaseSource::Debian(r) => format!(
            "Debian {} {} {} via mmdebstrap, {} packages",
            r.suite,
            r.architecture,
            r.variant,
            r.packages.len()
        ),
    }
}

fn features(pl: &NodePlan) -> Vec<String> {
    let mut f = vec![];
    if pl.munge {
        f.push("munge".to_string());
    }
    if pl.slurm {
        f.push("slurm".into());
    }
    if pl.docker {
        f.push("docker".into());
    }
    if let Some(r) = &pl.k3s_role {
        f.push(format!("k3s-{r}"));
    }
    if let Some(r) = &pl.nfs_role {
        f.push(format!("nfs-{r}"));
    }
    if let Some(u) = &pl.usbboot {
        f.push(format!("usbboot {}", u.pname));
    }
    if pl.zero_route.is_some() {
        f.push("zero-route".into());
    }
    f
}

fn artifacts(pl: &NodePlan) -> Vec<String> {
    let mut a = vec![
        format!("{}/ (tree)", pl.name),
        format!("{}.tar.zst", pl.name),
    ];
    if pl.kind == profile::NodeKind::Sd {
        a.push(format!("{}.img (+ .bmap, .sha256)", pl.name));
    }
    a
}

fn show(cli: &Cli, node: &str) -> Result<()> {
    let p = load(cli)?;
    let n = p
        .node(node)
        .ok_or_else(|| UsageError(format!("unknown node `{node}` in {}", p.file.display())))?;
    let plan = p.plan(n);
    let v = serde_json::to_value(&plan)?;
    if cli.global.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let mut o = std::io::stdout().lock();
        flatten(&mut o, "", &v)?;
    }
    Ok(())
}

/// Print a JSON value as `key.sub = value` lines, like an inventory dump.
fn flatten(o: &mut impl Write, prefix: &str, v: &serde_json::Value) -> Result<()> {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(o, &key, x)?;
            }
        }
        serde_json::Value::Array(a) if a.iter().all(|x| !x.is_object()) => {
            let items: Vec<String> = a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect();
            writeln!(o, "{prefix} = [{}]", items.join(", "))?;
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                flatten(o, &format!("{prefix}[{i}]"), x)?;
            }
        }
        serde_json::Value::String(s) => writeln!(o, "{prefix} = {s}")?,
        other => writeln!(o, "{prefix} = {other}")?,
    }
    Ok(())
}

/// chbuild.1 plus chbuild-<verb>.1 for every verb, from the definitions.
fn write_man_pages(dir: &std::path::Path) -> Result<()> {
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
