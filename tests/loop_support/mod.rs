//! A loop device over a file, detached when dropped (tests run as root).

use std::path::Path;
use std::process::Command;

pub struct Loop {
    pub dev: String,
}

impl Loop {
    pub fn attach(file: &Path) -> Loop {
        let lo = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            lo.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&lo.stderr)
        );
        Loop {
            dev: String::from_utf8(lo.stdout).unwrap().trim().to_string(),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}
