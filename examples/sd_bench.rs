//! Benchmark helper for bench/sd.sh: build the SD image of a node from a
//! finished tree (what `chbuild sd` does after `chbuild image`), and
//! optionally write it to a block device.
//!
//! usage: sd_bench TREE OUT.img [--node p5] [--layout images/sd-mbr.toml]
//!                 [--dev /dev/loopN]

use anyhow::{bail, Context, Result};
use chbuild::device::{write_image, WriteOptions};
use chbuild::disk::{build_sd_image, default_layout_path, load_layout};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<()> {
    chbuild::progress::init_logging(false, 0);
    let mut args = std::env::args().skip(1);
    let (mut pos, mut node, mut layout, mut dev) =
        (Vec::new(), "p5".to_string(), default_layout_path(), None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--node" => node = args.next().context("--node needs a value")?,
            "--layout" => layout = PathBuf::from(args.next().context("--layout needs a value")?),
            "--dev" => dev = Some(PathBuf::from(args.next().context("--dev needs a value")?)),
            _ => pos.push(PathBuf::from(a)),
        }
    }
    let [tree, out] = &pos[..] else {
        bail!("usage: sd_bench TREE OUT.img [--node N] [--layout FILE] [--dev DEVICE]");
    };
    let profile = chbuild::profile::load_profile(&chbuild::profile::default_profile_path())?;
    let plan = profile.plan(profile.node(&node).context("no such node")?);
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_700_000_000);
    let t = Instant::now();
    let img = build_sd_image(&plan, tree, &load_layout(&layout)?, out, epoch)?;
    println!("build_seconds={:.2}", t.elapsed().as_secs_f64());
    println!("image_size={}", img.size);
    println!("sha256={}", img.sha256);
    if let Some(dev) = dev {
        let opts = WriteOptions {
            yes: true,
            force: true,
        };
        let r = write_image(&img.image, &img.bmap, &dev, &opts)?;
        println!("bytes_written={}", r.bytes_written);
        println!("write_seconds={:.2}", r.seconds);
    }
    Ok(())
}
