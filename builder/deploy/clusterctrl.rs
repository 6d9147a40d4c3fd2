//! ClusterCTRL's programs, run through `tools`: `clusterctrl status|on|off`
//! and `usbboot-init N` (whose exit status means nothing: it exits 0 on
//! every failure, so its output is kept for the error and its effects are
//! checked by `verify`).

use crate::tools::{self, CLUSTERCTRL, USBBOOT_INIT};
use anyhow::Result;
use std::collections::BTreeMap;

/// Power state per slot from `clusterctrl status`, which prints `key:value`
/// lines; the slots are `pN:1`/`pN:0` (`ON`/`OFF` accepted as well).
pub fn parse_status(text: &str) -> BTreeMap<u8, bool> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        let Some(n) = key.strip_prefix('p').and_then(|n| n.parse::<u8>().ok()) else {
            continue;
        };
        let on = match value.trim().to_ascii_lowercase().as_str() {
            "1" | "on" => true,
            "0" | "off" => false,
            _ => continue,
        };
        out.insert(n, on);
    }
    out
}

pub fn status() -> Result<BTreeMap<u8, bool>> {
    let text = tools::run_stdout(CLUSTERCTRL.command()?.arg("status"))?;
    Ok(parse_status(&text))
}

/// `clusterctrl on|off pN`; a failure carries the program's output.
pub fn power(pname: &str, on: bool) -> Result<()> {
    tools::run(
        CLUSTERCTRL
            .command()?
            .arg(if on { "on" } else { "off" })
            .arg(pname),
    )?;
    Ok(())
}

/// Run `usbboot-init N` and return what it printed (stdout then stderr).
pub fn usbboot_init(slot: u8) -> Result<String> {
    let out = tools::run_unchecked(USBBOOT_INIT.command()?.arg(slot.to_string()))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        text.push_str(&format!("\n(usbboot-init exited with {})", out.status));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let s = parse_status(
            "clusterhat:1\nhat_version:2.3\np1:1\np2:0\np3:ON\np4:off\nthrottled:0x0\n",
        );
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            vec![(1, true), (2, false), (3, true), (4, false)]
        );
    }
}
