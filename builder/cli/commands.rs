//! One function per verb: load the profile, call the library, report.

use super::{Cli, SecretsVerb, StoreVerb, UsageError, Verb};
use crate::profile::{self, plan::NodePlan, Profile};
use anyhow::{Context, Result};
use std::io::Write;

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
        Verb::Check { nodes } => check(cli, nodes),
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
            let nodes = select(&p, &args.nodes)?;
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
        Verb::Deploy(args) => {
            let p = load(cli)?;
            crate::deploy::run(&p, cli, args)
        }
        Verb::Rollback(args) => {
            let p = load(cli)?;
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
            if !dir.is_dir() {
                return Err(UsageError(format!(
                    "{} does not exist or is not a directory (give a release or output directory)",
                    dir.display()
                ))
                .into());
            }
            let files = crate::artifact::verify(dir)?;
            if cli.global.json {
                println!("{}", serde_json::to_string_pretty(&files)?);
            } else {
                tracing::info!("{}: {} files verified", dir.display(), files.len());
            }
            Ok(())
        }
        Verb::ImportAnsible(a) => import_ansible(cli, a),
        Verb::Doctor(a) => doctor(cli, a),
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
                    } else if entries.is_empty() {
                        tracing::info!(
                            "the store {} is empty (`chbuild store ingest` or `chbuild image` fills it)",
                            st.root.display()
                        );
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

fn check(cli: &Cli, nodes: &[String]) -> Result<()> {
    let p = load(cli)?;
    let names = select(&p, nodes)?;
    let mut plans: Vec<NodePlan> = p
        .nodes
        .iter()
        .filter(|n| names.contains(&n.name))
        .map(|n| p.plan(n))
        .collect();
    // Only the layers that exist apply; the plan lists every candidate.
    let overlays = crate::pipeline::overlays_dir(&p);
    for pl in &mut plans {
        pl.overlays = crate::overlay::layers(pl, &overlays, p.overlay_dir.as_deref())
            .into_iter()
            .map(|l| l.name)
            .collect();
    }
    if cli.global.quiet && !cli.global.json {
        return Ok(());
    }
    if cli.global.json {
        let v = serde_json::json!({
            "profile": p.file,
            "cluster": p.name,
            "base": p.base,
            "secrets_dir": p.secrets_dir,
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
        let overlays = if pl.overlays.is_empty() {
            "(none exist)".to_string()
        } else {
            pl.overlays.join(" < ")
        };
        writeln!(o, "  overlays:  {overlays}")?;
        writeln!(o, "  packages:  {}", pl.packages.join(" "))?;
        writeln!(o, "  artifacts: {}", artifacts(pl).join(", "))?;
    }
    Ok(())
}

fn describe_base(p: &Profile) -> String {
    match &p.base.source {
        profile::BaseSource::Archive { path, .. } => format!("archive {}", path.display()),
        profile::BaseSource::Url { url, checksum } => match checksum {
            Some(c) => format!("{url} ({c})"),
            None => format!("{url} (UNVERIFIED: no checksum, the download is not checked)"),
        },
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
    let n = p.node(node).ok_or_else(|| {
        let names: Vec<&str> = p.nodes.iter().map(|n| n.name.as_str()).collect();
        UsageError(format!(
            "unknown node `{node}` in {} (its nodes: {})",
            p.file.display(),
            names.join(", ")
        ))
    })?;
    let mut plan = p.plan(n);
    // The keys a node gets include those of ssh_authorized_keys_file.
    match crate::secrets::authorized_keys(&p) {
        Ok(keys) => plan.user.ssh_authorized_keys = keys,
        Err(e) => tracing::warn!("{e:#}"),
    }
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
