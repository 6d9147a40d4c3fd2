//! Replacing several files of an output directory as one: node trees,
//! tarballs, `manifest.json` and `SHA256SUMS` must never disagree, even
//! when chbuild is killed between two renames.
//!
//! Everything new is first written under a staged name in the directory
//! and synced. Then a journal listing the renames is written and renamed
//! into place: that rename is the commit point. The renames follow and the
//! journal is removed. A run killed before the commit point leaves the old
//! artifacts (and staged leftovers, overwritten by the next run); one
//! killed after it leaves a journal that the next command touching the
//! directory replays ([`recover`]), so the new artifacts are complete.
//! Every step of the replay can be repeated, so a kill during the replay
//! is recovered the same way.

use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The journal of a commit in progress.
pub const JOURNAL: &str = ".chbuild-commit";
/// Prefix of every staged name: whatever carries it and is not in a
/// journal is a leftover of an interrupted run.
pub const STAGED: &str = ".chbuild-";

/// A staged name for `name` in the same directory.
pub fn staged(name: &str) -> String {
    format!("{STAGED}new-{name}")
}

/// Lock `dir` for writing: a second chbuild writing there waits, saying so.
/// The lock is on the directory itself, so a release directory holds
/// nothing but its artifacts.
pub fn lock(dir: &Path) -> Result<File> {
    use fs4::fs_std::FileExt;
    let f = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    if f.try_lock_exclusive().is_err() {
        tracing::info!("waiting for another chbuild writing to {}", dir.display());
        f.lock_exclusive()
            .with_context(|| format!("locking {}", dir.display()))?;
    }
    Ok(f)
}

/// For readers: finish an interrupted commit before reading, so what is
/// read is the complete new state (a directory without one is not touched,
/// so read-only copies stay readable).
pub fn finish_pending(dir: &Path) -> Result<()> {
    if dir.join(JOURNAL).symlink_metadata().is_ok() {
        let _lock = lock(dir)?;
        recover(dir)?;
    }
    Ok(())
}

/// With the lock held: finish an interrupted commit, then remove staged
/// leftovers of interrupted runs.
pub fn prepare(dir: &Path) -> Result<()> {
    recover(dir)?;
    clean(dir)
}

/// Remove staged names that no journal vouches for (the lock is held, so
/// no other run is writing them).
pub fn clean(dir: &Path) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for e in rd {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with(STAGED) || name.starts_with(&format!(".{STAGED}"));
        if !ours || name == JOURNAL {
            continue;
        }
        tracing::debug!("removing {name}, left by an interrupted run");
        remove_any(&e.path())?;
    }
    Ok(())
}

/// One step: rename the staged name to the final one, or (without a
/// staged name) remove the final one. Names are relative to the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub staged: Option<String>,
    pub name: String,
}

impl Move {
    pub fn rename(staged: impl Into<String>, name: impl Into<String>) -> Move {
        Move {
            staged: Some(staged.into()),
            name: name.into(),
        }
    }

    pub fn remove(name: impl Into<String>) -> Move {
        Move {
            staged: None,
            name: name.into(),
        }
    }
}

/// Put every staged name in place, all or nothing as seen after a crash.
pub fn commit(dir: &Path, moves: &[Move]) -> Result<()> {
    if moves.is_empty() {
        return Ok(());
    }
    // The staged contents are on disk before the journal vouches for them.
    sync_fs(dir)?;
    let mut text = String::new();
    for m in moves {
        text.push_str(m.staged.as_deref().unwrap_or(""));
        text.push('\t');
        text.push_str(&m.name);
        text.push('\n');
    }
    let journal = dir.join(JOURNAL);
    let tmp = dir.join(format!("{JOURNAL}.tmp"));
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &journal)
        .with_context(|| format!("renaming {} into place", journal.display()))?;
    sync_dir(dir)?;
    replay(dir, moves)
}

/// Finish a commit that was interrupted after its commit point; remove
/// what an interrupted replay left aside. Returns whether there was one.
pub fn recover(dir: &Path) -> Result<bool> {
    let journal = dir.join(JOURNAL);
    let text = match fs::read_to_string(&journal) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", journal.display())),
    };
    let mut moves = vec![];
    for (i, line) in text.lines().enumerate() {
        let (staged, name) = line
            .split_once('\t')
            .with_context(|| format!("{}:{}: not a journal line", journal.display(), i + 1))?;
        for n in [staged, name] {
            if n.contains('/') || n == ".." {
                anyhow::bail!(
                    "{}:{}: `{n}` is not a name in {}",
                    journal.display(),
                    i + 1,
                    dir.display()
                );
            }
        }
        moves.push(Move {
            staged: (!staged.is_empty()).then(|| staged.to_string()),
            name: name.to_string(),
        });
    }
    tracing::info!(
        "finishing an interrupted update of {} ({} files)",
        dir.display(),
        moves.len()
    );
    replay(dir, &moves)?;
    Ok(true)
}

fn aside(name: &str) -> String {
    format!("{STAGED}old-{name}")
}

fn replay(dir: &Path, moves: &[Move]) -> Result<()> {
    for m in moves {
        let dest = dir.join(&m.name);
        let Some(staged) = &m.staged else {
            match fs::remove_file(&dest) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", dest.display()))
                }
                _ => continue,
            }
        };
        let src = dir.join(staged);
        let Ok(md) = src.symlink_metadata() else {
            // Moved already, by this replay or an interrupted one.
            continue;
        };
        if md.is_dir() && dest.symlink_metadata().is_ok() {
            // A directory cannot be renamed over a full one: the old tree
            // goes aside first, and is removed once the journal is gone.
            let old = dir.join(aside(&m.name));
            remove_any(&old)?;
            fs::rename(&dest, &old).with_context(|| format!("renaming {}", dest.display()))?;
        }
        fs::rename(&src, &dest)
            .with_context(|| format!("renaming {} to {}", src.display(), dest.display()))?;
    }
    sync_dir(dir)?;
    let journal = dir.join(JOURNAL);
    match fs::remove_file(&journal) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", journal.display()))
        }
        _ => {}
    }
    sync_dir(dir)?;
    for m in moves.iter().filter(|m| m.staged.is_some()) {
        remove_any(&dir.join(aside(&m.name)))?;
    }
    Ok(())
}

/// Remove a file, a symlink or a whole tree; nothing there is fine.
fn remove_any(path: &Path) -> Result<()> {
    match path.symlink_metadata() {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Ok(md) if md.is_dir() => crate::fs::remove_tree(path),
        _ => match fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        },
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

fn sync_fs(dir: &Path) -> Result<()> {
    let d = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    nix::unistd::syncfs(d.as_raw_fd()).with_context(|| format!("syncing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(dir: &Path) -> Vec<Move> {
        fs::create_dir_all(dir.join("z1/etc")).unwrap();
        fs::write(dir.join("z1/etc/hostname"), "old").unwrap();
        fs::write(dir.join("z1.tar.zst"), "old").unwrap();
        fs::write(dir.join("manifest.json"), "old").unwrap();
        fs::write(dir.join("stale.tar.zst"), "old").unwrap();
        fs::create_dir_all(dir.join(staged("z1")).join("etc")).unwrap();
        fs::write(dir.join(staged("z1")).join("etc/hostname"), "new").unwrap();
        fs::write(dir.join(staged("z1.tar.zst")), "new").unwrap();
        fs::write(dir.join(staged("manifest.json")), "new").unwrap();
        vec![
            Move::rename(staged("z1.tar.zst"), "z1.tar.zst"),
            Move::rename(staged("z1"), "z1"),
            Move::remove("stale.tar.zst"),
            Move::rename(staged("manifest.json"), "manifest.json"),
        ]
    }

    fn is_new(dir: &Path) {
        for f in ["z1/etc/hostname", "z1.tar.zst", "manifest.json"] {
            assert_eq!(fs::read_to_string(dir.join(f)).unwrap(), "new", "{f}");
        }
        assert!(!dir.join("stale.tar.zst").exists());
        let mut left: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        left.sort();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn commit_puts_everything_in_place() {
        let t = tempfile::tempdir().unwrap();
        let moves = setup(t.path());
        commit(t.path(), &moves).unwrap();
        is_new(t.path());
    }

    /// A crash after the commit point, at every step of the renames
    /// (including between moving the old tree aside and the new one in):
    /// the next run finishes the commit.
    #[test]
    fn an_interrupted_commit_is_finished_from_any_step() {
        for steps in 0..=5 {
            let t = tempfile::tempdir().unwrap();
            let dir = t.path();
            let moves = setup(dir);
            let text: String = moves
                .iter()
                .map(|m| format!("{}\t{}\n", m.staged.as_deref().unwrap_or(""), m.name))
                .collect();
            fs::write(dir.join(JOURNAL), text).unwrap();
            // Replay by hand up to `steps` single renames.
            let mut done = 0;
            if done < steps {
                fs::rename(dir.join(staged("z1.tar.zst")), dir.join("z1.tar.zst")).unwrap();
                done += 1;
            }
            if done < steps {
                fs::rename(dir.join("z1"), dir.join(aside("z1"))).unwrap();
                done += 1;
            }
            if done < steps {
                fs::rename(dir.join(staged("z1")), dir.join("z1")).unwrap();
                done += 1;
            }
            if done < steps {
                fs::remove_file(dir.join("stale.tar.zst")).unwrap();
                done += 1;
            }
            if done < steps {
                fs::rename(dir.join(staged("manifest.json")), dir.join("manifest.json")).unwrap();
            }
            assert!(recover(dir).unwrap(), "step {steps}");
            is_new(dir);
            assert!(!recover(dir).unwrap());
        }
    }

    /// Before the commit point nothing changed; staged leftovers go.
    #[test]
    fn staged_leftovers_without_a_journal_are_removed() {
        let t = tempfile::tempdir().unwrap();
        setup(t.path());
        prepare(t.path()).unwrap();
        assert_eq!(
            fs::read_to_string(t.path().join("z1.tar.zst")).unwrap(),
            "old"
        );
        assert!(!t.path().join(staged("z1")).exists());
        assert!(!t.path().join(staged("manifest.json")).exists());
    }
}
