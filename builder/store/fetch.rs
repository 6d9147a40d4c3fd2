//! Getting archive bytes: checksums, and downloads into the store's cache
//! that resume where an interrupted one stopped and are never kept when
//! their checksum fails.

use crate::profile::{Checksum, ChecksumAlgorithm};
use crate::progress::Progress;
use anyhow::{bail, Context, Result};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Attempts per download; each one resumes from what is on disk.
const ATTEMPTS: u32 = 3;

/// A running hash of the algorithm a checksum names.
pub enum Hasher {
    Sha256(Sha256),
    Md5(Md5),
}

impl Hasher {
    pub fn new(alg: ChecksumAlgorithm) -> Hasher {
        match alg {
            ChecksumAlgorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            ChecksumAlgorithm::Md5 => Hasher::Md5(Md5::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Md5(h) => h.update(data),
        }
    }

    fn algorithm(&self) -> ChecksumAlgorithm {
        match self {
            Hasher::Sha256(_) => ChecksumAlgorithm::Sha256,
            Hasher::Md5(_) => ChecksumAlgorithm::Md5,
        }
    }

    pub fn hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Md5(h) => hex::encode(h.finalize()),
        }
    }
}

/// Error unless `actual` (hex) is what the checksum says.
pub fn verify(what: &str, want: &Checksum, actual: &str) -> Result<()> {
    if !actual.eq_ignore_ascii_case(&want.hex) {
        bail!(
            "checksum mismatch for {what}: the profile says {want}, the data has {}:{actual}",
            match want.algorithm {
                ChecksumAlgorithm::Sha256 => "sha256",
                ChecksumAlgorithm::Md5 => "md5",
            }
        );
    }
    Ok(())
}

/// Download `url` into `cache` and return the verified file. A partial
/// file from an earlier attempt is resumed with an HTTP range request; a
/// file whose checksum fails is deleted, never returned.
pub fn download(url: &str, want: &Checksum, cache: &Path) -> Result<PathBuf> {
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let name = format!("{}-{}", alg_name(want), want.hex);
    let done = cache.join(&name);
    let part = cache.join(format!("{name}.part"));
    if done.exists() {
        return Ok(done);
    }
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .build();
    // The hash follows the partial file, so only a resumed download
    // reads back what it already has.
    let mut state = Partial {
        hasher: Hasher::new(want.algorithm),
        len: 0,
    };
    if part.exists() {
        hash_file(&part, &mut state.hasher)?;
        state.len = fs::metadata(&part)
            .with_context(|| format!("inspecting {}", part.display()))?
            .len();
    }
    let mut last_err = None;
    for attempt in 1..=ATTEMPTS {
        match fetch_once(&agent, url, &part, &mut state) {
            Ok(()) => {
                last_err = None;
                break;
            }
            Err(e) => {
                tracing::warn!("download of {url} failed (attempt {attempt} of {ATTEMPTS}): {e:#}");
                last_err = Some(e);
            }
        }
    }
    if let Some(e) = last_err {
        return Err(e.context(format!(
            "downloading {url} (the partial file {} is kept; run again to resume)",
            part.display()
        )));
    }
    if let Err(e) = verify(url, want, &state.hasher.hex()) {
        fs::remove_file(&part).with_context(|| format!("removing {}", part.display()))?;
        return Err(e.context("the download was deleted"));
    }
    fs::rename(&part, &done)
        .with_context(|| format!("renaming {} to {}", part.display(), done.display()))?;
    Ok(done)
}

fn alg_name(c: &Checksum) -> &'static str {
    match c.algorithm {
        ChecksumAlgorithm::Sha256 => "sha256",
        ChecksumAlgorithm::Md5 => "md5",
    }
}

/// The bytes of the partial file so far: their hash and count.
struct Partial {
    hasher: Hasher,
    len: u64,
}

/// One request: append to `part` from what `state` holds.
fn fetch_once(agent: &ureq::Agent, url: &str, part: &Path, state: &mut Partial) -> Result<()> {
    let have = state.len;
    let mut req = agent.get(url);
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        // The server has nothing past what we hold: the file is complete.
        Err(ureq::Error::Status(416, _)) if have > 0 => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("requesting {url}")),
    };
    let append = have > 0 && resp.status() == 206;
    if append {
        let range = resp.header("Content-Range").unwrap_or("");
        if !range.starts_with(&format!("bytes {have}-")) {
            bail!("{url}: the server answered the range request with `{range}`");
        }
    } else if have > 0 {
        tracing::info!("{url}: the server does not resume; downloading from the start");
    }
    let remaining: Option<u64> = resp.header("Content-Length").and_then(|l| l.parse().ok());
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .with_context(|| format!("opening {}", part.display()))?;
    let start = if append {
        have
    } else {
        state.hasher = Hasher::new(state.hasher.algorithm());
        state.len = 0;
        0
    };
    // Drop any tail an earlier attempt wrote but did not account for.
    out.set_len(start)
        .with_context(|| format!("truncating {}", part.display()))?;
    let mut progress = Progress::bytes("downloading", remaining.map(|r| r + start));
    progress.inc(start);
    let mut body = resp.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                out.flush().ok();
                return Err(e).with_context(|| format!("reading {url} after {got} bytes"));
            }
        };
        out.write_all(&buf[..n])
            .with_context(|| format!("writing {}", part.display()))?;
        state.hasher.update(&buf[..n]);
        state.len += n as u64;
        got += n as u64;
        progress.inc(n as u64);
    }
    progress.finish();
    out.sync_all()
        .with_context(|| format!("syncing {}", part.display()))?;
    if let Some(r) = remaining {
        if got < r {
            bail!("{url}: the connection closed after {got} of {r} bytes");
        }
    }
    Ok(())
}

pub fn hash_file(path: &Path, h: &mut Hasher) -> Result<()> {
    crate::fs::read_chunks(path, |b| h.update(b))
}
