//! The tree's account database (`etc/passwd`, `shadow`, `group`,
//! `gshadow`), read and written offline. Owners in a tree always come from
//! here, never from the build machine's own users.
//!
//! These files stay Rust edits, not templates: they are the base's own
//! files, and what chbuild changes in them (which rows to add, rename or
//! extend) is a decision on existing content, not content of its own.

use crate::overlay::write::{Owner, TreeWriter};
use anyhow::{bail, Context, Result};

/// One colon-separated database file, kept line by line so entries chbuild
/// does not touch are written back exactly as they were.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn parse(text: &str) -> Table {
        Table {
            rows: text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.split(':').map(str::to_string).collect())
                .collect(),
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        for r in &self.rows {
            s.push_str(&r.join(":"));
            s.push('\n');
        }
        s
    }

    pub fn find(&self, name: &str) -> Option<&Vec<String>> {
        self.rows.iter().find(|r| r[0] == name)
    }

    pub fn find_mut(&mut self, name: &str) -> Option<&mut Vec<String>> {
        self.rows.iter_mut().find(|r| r[0] == name)
    }

    /// Numeric field `i` of the entry `name`.
    pub fn id(&self, name: &str, i: usize) -> Option<u32> {
        self.find(name)
            .and_then(|r| r.get(i))
            .and_then(|v| v.parse().ok())
    }

    /// Replace the row for `row[0]`, or append it.
    pub fn upsert(&mut self, row: Vec<String>) {
        match self.find_mut(&row[0]) {
            Some(r) => *r = row,
            None => self.rows.push(row),
        }
    }

    /// Add `member` to the comma-separated list in field `i` of `name`.
    pub fn add_member(&mut self, name: &str, i: usize, member: &str) -> bool {
        let Some(r) = self.find_mut(name) else {
            return false;
        };
        while r.len() <= i {
            r.push(String::new());
        }
        let mut list: Vec<&str> = r[i].split(',').filter(|m| !m.is_empty()).collect();
        if !list.contains(&member) {
            list.push(member);
        }
        r[i] = list.join(",");
        true
    }
}

pub struct Accounts {
    pub passwd: Table,
    pub shadow: Table,
    pub group: Table,
    pub gshadow: Table,
}

impl Accounts {
    pub fn load(w: &TreeWriter) -> Result<Accounts> {
        let t = |name: &str| -> Result<Table> {
            Ok(Table::parse(
                &w.read_string(format!("etc/{name}"))?.unwrap_or_default(),
            ))
        };
        Ok(Accounts {
            passwd: t("passwd")?,
            shadow: t("shadow")?,
            group: t("group")?,
            gshadow: t("gshadow")?,
        })
    }

    pub fn uid(&self, user: &str) -> Option<u32> {
        self.passwd.id(user, 2)
    }

    /// Primary group of a user.
    pub fn user_gid(&self, user: &str) -> Option<u32> {
        self.passwd.id(user, 3)
    }

    pub fn gid(&self, group: &str) -> Option<u32> {
        self.group.id(group, 2)
    }

    /// Resolve `user`/`group` (names in the tree, or numbers).
    pub fn owner(&self, user: &str, group: &str) -> Result<Owner> {
        let uid = match user.parse() {
            Ok(n) => n,
            Err(_) => self.uid(user).with_context(|| {
                format!("user `{user}` does not exist in the tree's etc/passwd")
            })?,
        };
        let gid = match group.parse() {
            Ok(n) => n,
            Err(_) => self.gid(group).with_context(|| {
                format!("group `{group}` does not exist in the tree's etc/group")
            })?,
        };
        Ok(Owner { uid, gid })
    }

    /// A free id at or above `from` in both passwd and group.
    pub fn free_id(&self, from: u32) -> Result<u32> {
        (from..60000)
            .find(|id| {
                !self
                    .passwd
                    .rows
                    .iter()
                    .any(|r| r.get(2) == Some(&id.to_string()))
                    && !self
                        .group
                        .rows
                        .iter()
                        .any(|r| r.get(2) == Some(&id.to_string()))
            })
            .context("no free id for a new account")
    }

    /// Write all four files back as new inodes with Debian's modes
    /// (shadow files 0640 root:shadow).
    /// Make `user` a member of `group` (group and gshadow), as `usermod
    /// -aG` would; false when the group does not exist.
    pub fn add_to_group(&mut self, group: &str, user: &str) -> bool {
        let added = self.group.add_member(group, 3, user);
        if added {
            self.gshadow.add_member(group, 3, user);
        }
        added
    }

    pub fn save(&self, w: &mut TreeWriter) -> Result<()> {
        let shadow_gid = self.gid("shadow").unwrap_or(0);
        let secret = Owner {
            uid: 0,
            gid: shadow_gid,
        };
        for (name, table, mode, owner) in [
            ("passwd", &self.passwd, 0o644, Owner::ROOT),
            ("group", &self.group, 0o644, Owner::ROOT),
            ("shadow", &self.shadow, 0o640, secret),
            ("gshadow", &self.gshadow, 0o640, secret),
        ] {
            for r in &table.rows {
                if r.iter().any(|f| f.contains('\n')) {
                    bail!("etc/{name}: an entry contains a newline");
                }
            }
            w.write(
                format!("etc/{name}"),
                table.render().as_bytes(),
                mode,
                owner,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_added_once() {
        let mut t = Table::parse("sudo:x:27:\nadm:x:4:syslog\n");
        assert!(t.add_member("sudo", 3, "pi"));
        assert!(t.add_member("sudo", 3, "pi"));
        assert!(t.add_member("adm", 3, "pi"));
        assert!(!t.add_member("docker", 3, "pi"));
        assert_eq!(t.render(), "sudo:x:27:pi\nadm:x:4:syslog,pi\n");
        assert_eq!(t.id("adm", 2), Some(4));
    }
}
