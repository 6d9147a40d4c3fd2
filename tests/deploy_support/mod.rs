//! Shared by the deploy tests: small node trees written as `chbuild image`
//! writes its output directory (trees, `<node>.tar.zst`, manifest.json,
//! SHA256SUMS), shell test doubles of `clusterctrl` and `usbboot-init` that
//! log their calls and edit the tree as the real ones do, and a runner for
//! the real `chbuild` binary under `--root`.
#![allow(dead_code)] // each test file uses a different part

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PROFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/clusterhat.toml");

#[derive(Clone)]
pub struct NodeSpec {
    pub name: &'static str,
    pub slot: u8,
    /// Distinguishes builds: file contents and one file name depend on it.
    pub label: &'static str,
    /// An official-archive-like tree: has reconfig-usbboot and the
    /// placeholder slots p252/p253 that usbboot-init rewrites.
    pub reconfig: bool,
    /// Filler files, to make staging take a while.
    pub filler: usize,
    /// Content of `etc/site`, the one file a site overlay changes.
    pub site: Option<&'static str>,
}

impl NodeSpec {
    pub fn new(name: &'static str, slot: u8, label: &'static str) -> NodeSpec {
        NodeSpec {
            name,
            slot,
            label,
            reconfig: false,
            filler: 0,
            site: None,
        }
    }
}

fn write(root: &Path, rel: &str, content: &str, mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A node tree with the NFS-boot files of its slot (or placeholders).
pub fn make_tree(root: &Path, s: &NodeSpec) {
    let n = s.slot;
    let x = if s.reconfig { 252 } else { n as u32 };
    let f = if s.reconfig { 253 } else { n as u32 };
    fs::create_dir_all(root).unwrap();
    write(root, "etc/hostname", &format!("{}\n", s.name), 0o644);
    write(
        root,
        "etc/hosts",
        &format!("127.0.0.1\tlocalhost\n127.0.1.1\t{}\n", s.name),
        0o644,
    );
    write(
        root,
        "etc/fstab",
        &format!("proc /proc proc defaults 0 0\n172.19.180.254:/var/lib/clusterctrl/nfs/p{f}/boot/firmware /boot/firmware nfs defaults 0 0\n"),
        0o644,
    );
    write(
        root,
        "boot/firmware/cmdline.txt",
        &format!("console=serial0,115200 rootfstype=nfs nfsroot=172.19.180.254:/var/lib/clusterctrl/nfs/p{x} rw ip=172.19.180.{x}:172.19.180.254::255.255.255.0:p{x}:usb0.10:static fsck.mode=skip rootwait\n"),
        0o755,
    );
    write(root, "etc/motd", &format!("build {}\n", s.label), 0o644);
    write(root, "etc/shadow", "root:*:19000:0:99999:7:::\n", 0o640);
    write(
        root,
        "usr/bin/hello",
        &format!("#!/bin/sh\necho {}\n", s.label),
        0o755,
    );
    write(root, "usr/bin/su", "setuid", 0o4755);
    fs::hard_link(root.join("usr/bin/hello"), root.join("usr/bin/hello-again")).unwrap();
    write(
        root,
        &format!("usr/share/doc/{}.txt", s.label),
        s.label,
        0o644,
    );
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    fs::create_dir_all(root.join("var/log")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    nix::unistd::mkfifo(
        &root.join("dev/initctl"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    if nix::unistd::geteuid().is_root() {
        nix::sys::stat::mknod(
            &root.join("dev/null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        fs::set_permissions(root.join("dev/null"), fs::Permissions::from_mode(0o666)).unwrap();
    }
    if s.reconfig {
        write(
            root,
            "usr/share/clusterctrl/reconfig-usbboot",
            "#!/bin/sh\n# stands in for the official script\n",
            0o755,
        );
    }
    for i in 0..s.filler {
        write(
            root,
            &format!("usr/lib/filler/{:03}/{i:05}", i / 500),
            &format!("{} {i}\n", s.label).repeat(40),
            0o644,
        );
    }
    if let Some(site) = s.site {
        write(root, "etc/site", site, 0o644);
    }
    // As chbuild's trees: every time clamped to SOURCE_DATE_EPOCH, so two
    // builds of the same content have the same files.
    let epoch = filetime::FileTime::from_unix_time(1_700_000_000, 0);
    for e in walkdir::WalkDir::new(root).contents_first(true) {
        let e = e.unwrap();
        filetime::set_symlink_file_times(e.path(), epoch, epoch).unwrap();
    }
}

/// A deterministic `./`-prefixed, sorted tarball of a tree (as `chbuild
/// image` writes it), compressed with zstd.
pub fn make_tarball(tree: &Path, out: &Path) {
    let mut b = tar::Builder::new(Vec::new());
    let mut seen: HashMap<u64, String> = HashMap::new();
    for e in walkdir::WalkDir::new(tree).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(tree)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let m = e.path().symlink_metadata().unwrap();
        let ft = m.file_type();
        let name = if rel.is_empty() {
            "./".to_string()
        } else if ft.is_dir() {
            format!("./{rel}/")
        } else {
            format!("./{rel}")
        };
        let mut h = tar::Header::new_gnu();
        h.set_mode(m.mode() & 0o7777);
        h.set_uid(m.uid() as u64);
        h.set_gid(m.gid() as u64);
        h.set_mtime(m.mtime() as u64);
        h.set_size(0);
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            b.append_data(&mut h, &name, std::io::empty()).unwrap();
        } else if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            b.append_link(&mut h, &name, fs::read_link(e.path()).unwrap())
                .unwrap();
        } else if ft.is_fifo() || ft.is_char_device() {
            if ft.is_fifo() {
                h.set_entry_type(tar::EntryType::Fifo);
            } else {
                h.set_entry_type(tar::EntryType::Char);
                h.set_device_major(nix::sys::stat::major(m.rdev()) as u32)
                    .unwrap();
                h.set_device_minor(nix::sys::stat::minor(m.rdev()) as u32)
                    .unwrap();
            }
            b.append_data(&mut h, &name, std::io::empty()).unwrap();
        } else if let Some(first) = seen.get(&m.ino()) {
            h.set_entry_type(tar::EntryType::Link);
            b.append_link(&mut h, &name, first).unwrap();
        } else {
            if m.nlink() > 1 {
                seen.insert(m.ino(), name.clone());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(m.len());
            b.append_data(&mut h, &name, fs::File::open(e.path()).unwrap())
                .unwrap();
        }
    }
    let data = b.into_inner().unwrap();
    fs::write(out, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
}

pub fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(path).unwrap()))
}

/// An output directory as `chbuild image` writes it. With `bundle`, the
/// tree directories are left out (what CI ships). Returns build ids.
pub fn make_output(dir: &Path, nodes: &[NodeSpec], bundle: bool) -> BTreeMap<String, String> {
    fs::create_dir_all(dir).unwrap();
    let mut sums = String::new();
    let mut entries = Vec::new();
    let mut ids = BTreeMap::new();
    for s in nodes {
        let tree = dir.join(s.name);
        make_tree(&tree, s);
        let tarball = dir.join(format!("{}.tar.zst", s.name));
        make_tarball(&tree, &tarball);
        let files = walkdir::WalkDir::new(&tree).into_iter().count();
        if bundle {
            fs::remove_dir_all(&tree).unwrap();
        }
        let sha = sha256(&tarball);
        sums.push_str(&format!("{sha}  {}.tar.zst\n", s.name));
        entries.push(serde_json::json!({
            "name": s.name, "hostname": s.name, "kind": "usbboot", "slot": s.slot,
            "tree": s.name, "tarball": format!("{}.tar.zst", s.name), "sha256": sha,
            "size": fs::metadata(&tarball).unwrap().len(), "files": files,
        }));
        ids.insert(s.name.to_string(), sha);
    }
    let manifest = serde_json::json!({
        "cluster": "clusterhat", "profile": "profiles/clusterhat.toml",
        "base_digest": "0".repeat(64), "source_date_epoch": 1700000000,
        "nodes": entries,
    });
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest).unwrap(),
    )
    .unwrap();
    fs::write(dir.join("SHA256SUMS"), sums).unwrap();
    ids
}

/// The chbuild binary this test was built with, pinned by a hard link: the
/// target directory may be shared with other checkouts whose builds
/// replace `target/debug/chbuild` while a long test runs.
pub fn chbuild_bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_BIN_EXE_chbuild"));
        let stem = std::env::current_exe()
            .ok()
            .and_then(|e| e.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "tests".into());
        let dst = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chbuild-for-{stem}"));
        let _ = fs::remove_file(&dst);
        if fs::hard_link(&src, &dst).is_ok() {
            dst
        } else {
            src
        }
    })
}

/// A controller root, test doubles on PATH, and a call log.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub bin: PathBuf,
}

const CLUSTERCTRL: &str = r#"#!/bin/sh
# Test double of clusterctrl: power state is a file per slot.
D=@BIN@
echo "clusterctrl $*" >> "$D/calls.log"
if [ -n "$CHBUILD_TEST_SLEEP" ]; then sleep "$CHBUILD_TEST_SLEEP"; fi
case "$1" in
  status)
    echo "clusterhat:1"; echo "hat_version:2.3"; echo "hat_size:4"
    for n in 1 2 3 4; do
      if [ -e "$D/power/p$n" ]; then echo "p$n:1"; else echo "p$n:0"; fi
    done
    echo "throttled:0x0" ;;
  on)
    if [ "$CHBUILD_TEST_FAIL" = "clusterctrl-on" ]; then
      echo "Error: I2C write to the HAT failed" >&2; exit 1
    fi
    touch "$D/power/$2" ;;
  off) rm -f "$D/power/$2" ;;
  init) mkdir -p "@ROOT@/var/lib/clusterctrl/boot" ;;
  *) echo "usage: clusterctrl ..." >&2; exit 1 ;;
esac
"#;

const USBBOOT_INIT: &str = r#"#!/bin/sh
# Test double of usbboot-init: edits the tree as reconfig-usbboot does and,
# like the real one, exits 0 whatever happens.
D=@BIN@
echo "usbboot-init $*" >> "$D/calls.log"
N=$1
T="@ROOT@/var/lib/clusterctrl/nfs/p$N"
if [ ! -x "$T/usr/share/clusterctrl/reconfig-usbboot" ]; then
  echo "Have you downloaded and expanded the usbboot archive?"; exit 0
fi
echo "p$N" > "$T/etc/hostname"
sed -i "s/^127.0.1.1.*/127.0.1.1	p$N/" "$T/etc/hosts"
if [ "$CHBUILD_TEST_FAIL" = "usbboot-init" ]; then
  echo "sed: can't read $T/boot/firmware/cmdline.txt: Input/output error"; exit 0
fi
if [ -n "$CHBUILD_TEST_SLEEP" ]; then sleep "$CHBUILD_TEST_SLEEP"; fi
sed -i "s#172.19.180.254:/var/lib/clusterctrl/nfs/p[0-9]*/#172.19.180.254:/var/lib/clusterctrl/nfs/p$N/#" "$T/etc/fstab"
sed -i "s#nfsroot=.*:static#nfsroot=172.19.180.254:/var/lib/clusterctrl/nfs/p$N rw ip=172.19.180.$N:172.19.180.254::255.255.255.0:p$N:usb0.10:static#" "$T/boot/firmware/cmdline.txt"
clusterctrl init
exit 0
"#;

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let bin = tmp.path().join("bin");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(bin.join("power")).unwrap();
        for (name, text) in [("clusterctrl", CLUSTERCTRL), ("usbboot-init", USBBOOT_INIT)] {
            let text = text
                .replace("@BIN@", &bin.to_string_lossy())
                .replace("@ROOT@", &root.to_string_lossy());
            write(&bin, name, &text, 0o755);
        }
        fs::write(bin.join("calls.log"), "").unwrap();
        Env { tmp, root, bin }
    }

    pub fn nfs(&self) -> PathBuf {
        self.root.join("var/lib/clusterctrl/nfs")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn set_power(&self, pname: &str, on: bool) {
        let p = self.bin.join("power").join(pname);
        if on {
            fs::write(p, "").unwrap();
        } else {
            let _ = fs::remove_file(p);
        }
    }

    pub fn is_on(&self, pname: &str) -> bool {
        self.bin.join("power").join(pname).exists()
    }

    /// Calls logged since the last `take_calls`.
    pub fn take_calls(&self) -> Vec<String> {
        let log = self.bin.join("calls.log");
        let text = fs::read_to_string(&log).unwrap();
        fs::write(&log, "").unwrap();
        text.lines().map(str::to_string).collect()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(chbuild_bin());
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.env("PATH", path)
            .env_remove("CHBUILD_TEST_FAIL")
            .env_remove("CHBUILD_TEST_SLEEP")
            .env("NO_COLOR", "1")
            .arg("--profile")
            .arg(PROFILE)
            .args(args)
            .arg("--root")
            .arg(&self.root);
        // No Zero boots here: only the tests about waiting wait for SSH,
        // and dry runs, which show the wait they would do.
        let waits = args.contains(&"--wait-for-ssh") || args.contains(&"--dry-run");
        if args.first() == Some(&"deploy") && !waits {
            c.arg("--no-wait");
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Run and require success; returns stderr+stdout for assertions.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        assert!(o.status.success(), "chbuild {args:?} failed:\n{text}");
        text
    }
}

/// Type, mode, owner and content of every entry of a tree: two trees with
/// the same snapshot are the same tree.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if !root.exists() {
        return out;
    }
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let m = e.path().symlink_metadata().unwrap();
        let ft = m.file_type();
        let content = if ft.is_file() {
            hex::encode(Sha256::digest(fs::read(e.path()).unwrap()))
        } else if ft.is_symlink() {
            fs::read_link(e.path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        } else if ft.is_char_device() || ft.is_block_device() {
            format!("dev {}", m.rdev())
        } else if ft.is_fifo() {
            "fifo".into()
        } else {
            "dir".into()
        };
        out.insert(
            rel,
            format!("{:o} {}:{} {content}", m.mode(), m.uid(), m.gid()),
        );
    }
    out
}

/// Snapshot without chbuild's marker (to compare with a source tree).
pub fn snapshot_without_marker(root: &Path) -> BTreeMap<String, String> {
    let mut s = snapshot(root);
    s.remove(".chbuild-build");
    s.remove("");
    s
}

pub fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Hidden staging, discard and journal entries left in the NFS directory.
pub fn leftovers(nfs: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(nfs) else {
        return vec![];
    };
    let mut v: Vec<String> = rd
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".p"))
        .collect();
    v.sort();
    v
}
