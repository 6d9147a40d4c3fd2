//! URL bases against a small HTTP server on 127.0.0.1: checksums enforced,
//! interrupted downloads resumed with a range request, nothing downloaded
//! twice.

use chbuild::profile::model::Arch;
use chbuild::profile::{Base, BaseSource, Checksum, ChecksumAlgorithm};
use chbuild::store::Store;
use md5::Md5;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// A server for one file that honours `Range: bytes=N-`. With `cut_first`,
/// its first full response stops halfway, like a dropped connection.
struct Server {
    url: String,
    /// The Range header of each request (None when absent).
    requests: Arc<Mutex<Vec<Option<String>>>>,
}

fn serve(body: Vec<u8>, cut_first: bool) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(vec![]));
    let log = requests.clone();
    std::thread::spawn(move || {
        let mut cut = cut_first;
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range:") {
                    range = Some(v.trim().to_string());
                }
            }
            log.lock().unwrap().push(range.clone());
            let len = body.len();
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
            let head = match start {
                Some(s) if s >= len => {
                    format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                }
                Some(s) => format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    len - 1,
                    len - s
                ),
                None => format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"),
            };
            let from = start.unwrap_or(0).min(len);
            let to = if cut && start.is_none() { len / 2 } else { len };
            cut = false;
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body[from..to.max(from)]);
            let _ = conn.flush();
        }
    });
    Server {
        url: format!("http://127.0.0.1:{port}/base.tar.gz"),
        requests,
    }
}

/// A gzip'd tar of incompressible data (a few hundred KiB).
fn archive() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut x = 0x9E3779B97F4A7C15u64;
    let data: Vec<u8> = (0..400_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut h = tar::Header::new_gnu();
    h.set_path("etc/data").unwrap();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    b.append(&h, &data[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn url_base(url: &str, algorithm: ChecksumAlgorithm, hex: String) -> Base {
    Base {
        source: BaseSource::Url {
            url: url.to_string(),
            checksum: Some(Checksum { algorithm, hex }),
        },
        architecture: Arch::Arm64,
        boot_dir: "boot/firmware".into(),
    }
}

fn downloads(store: &Store) -> Vec<String> {
    std::fs::read_dir(store.root.join("downloads"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn download_is_verified_stored_and_not_repeated() {
    let body = archive();
    let sha = hex::encode(Sha256::digest(&body));
    let server = serve(body, false);
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let base = url_base(&server.url, ChecksumAlgorithm::Sha256, sha.clone());
    assert_eq!(store.digest_of(&base).as_deref(), Some(sha.as_str()));
    let t = store.ensure_base(&base).unwrap();
    assert_eq!(t.digest, sha);
    assert_eq!(
        std::fs::metadata(t.root.join("etc/data")).unwrap().len(),
        400_000
    );
    assert!(
        downloads(&store).is_empty(),
        "the archive is not kept once unpacked"
    );
    let again = store.ensure_base(&base).unwrap();
    assert_eq!(again.root, t.root);
    assert_eq!(server.requests.lock().unwrap().len(), 1, "downloaded twice");
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].source, server.url);
}

#[test]
fn wrong_checksum_is_refused_and_not_kept() {
    let server = serve(archive(), false);
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let base = url_base(&server.url, ChecksumAlgorithm::Sha256, "ab".repeat(32));
    let msg = format!("{:#}", store.ensure_base(&base).unwrap_err());
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert!(msg.contains(&"ab".repeat(32)), "{msg}");
    assert!(store.list().unwrap().is_empty());
    assert!(
        downloads(&store).is_empty(),
        "a bad download was kept: {:?}",
        downloads(&store)
    );
    assert!(!tmp.path().join("ab".repeat(32)).exists());
}

#[test]
fn interrupted_download_resumes_with_a_range_request() {
    let body = archive();
    let len = body.len();
    let md5 = hex::encode(Md5::digest(&body));
    let sha = hex::encode(Sha256::digest(&body));
    let server = serve(body, true);
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let base = url_base(&server.url, ChecksumAlgorithm::Md5, md5);
    assert_eq!(
        store.digest_of(&base),
        None,
        "an md5 says nothing about the sha256"
    );
    let t = store.ensure_base(&base).unwrap();
    assert_eq!(t.digest, sha);
    let reqs = server.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0], None);
    assert_eq!(
        reqs[1].as_deref(),
        Some(format!("bytes={}-", len / 2).as_str())
    );
    // Known from now on without downloading.
    assert_eq!(store.digest_of(&base).as_deref(), Some(sha.as_str()));
}

/// `checksum = "unverified"` (an Ansible project's empty checksum): the
/// profile loads, the download happens once, and every step says loudly
/// that nothing was verified, with the sha256 to pin.
#[test]
fn unverified_download_is_allowed_loudly_and_once() {
    let body = archive();
    let sha = hex::encode(Sha256::digest(&body));
    let server = serve(body, false);
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/profiles/clusterhat.toml"
    ))
    .unwrap();
    let (a, b) = (text.find("[base]").unwrap(), text.find("[user]").unwrap());
    let profile = tmp.path().join("profiles/u.toml");
    std::fs::create_dir_all(profile.parent().unwrap()).unwrap();
    std::fs::write(
        &profile,
        format!(
            "{}[base]\nsource = \"url\"\nurl = \"{}\"\nchecksum = \"unverified\"\narchitecture = \"arm64\"\n\n{}",
            &text[..a],
            server.url,
            &text[b..]
        ),
    )
    .unwrap();
    let ingest = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_chbuild"))
            .args(["store", "ingest", "-p"])
            .arg(&profile)
            .arg("--store")
            .arg(tmp.path().join("store"))
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let o = ingest();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), sha);
    assert!(err.contains("UNVERIFIED download"), "{err}");
    assert!(
        err.contains(&format!("checksum = \"sha256:{sha}\"")),
        "{err}"
    );
    let o = ingest();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("checksum = \"unverified\""));
    assert_eq!(server.requests.lock().unwrap().len(), 1, "downloaded twice");
}
