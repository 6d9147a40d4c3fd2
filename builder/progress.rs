//! Logging and progress: bars only on a terminal; in logs and CI, a plain
//! line now and then. `NO_COLOR` is respected.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub fn init_logging(quiet: bool, verbose: u8) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (_, 0) => "info",
        (_, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .with_target(false)
        .without_time()
        .try_init();
}

/// A byte or item counter that draws a bar on a terminal and otherwise
/// logs a line at most every 10 seconds.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    last_log: Instant,
    pos: u64,
    len: Option<u64>,
}

impl Progress {
    /// A bar or spinner drawn on stderr when it is a terminal (and INFO
    /// is shown); none in logs and CI.
    fn drawn(make: impl FnOnce() -> ProgressBar, style: ProgressStyle) -> Option<ProgressBar> {
        if !(std::io::stderr().is_terminal() && tracing::enabled!(tracing::Level::INFO)) {
            return None;
        }
        let bar = make();
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Some(bar)
    }

    fn new(bar: Option<ProgressBar>, label: &str, len: Option<u64>) -> Progress {
        Progress {
            bar,
            label: label.to_string(),
            last_log: Instant::now(),
            pos: 0,
            len,
        }
    }

    pub fn bytes(label: &str, len: Option<u64>) -> Progress {
        let make = || match len {
            Some(l) => ProgressBar::new(l),
            None => ProgressBar::new_spinner(),
        };
        let style = ProgressStyle::with_template(
            "{msg:24} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap()
        .progress_chars("=> ");
        let bar = Self::drawn(make, style);
        if let Some(b) = &bar {
            b.set_message(label.to_string());
        }
        Progress::new(bar, label, len)
    }

    /// A spinner for long work without a count (a package layer's apt
    /// and dpkg steps): on a terminal it shows the current step, in logs
    /// each step is one line at debug level.
    pub fn steps(label: &str) -> Progress {
        let style = ProgressStyle::with_template("{spinner} {prefix}: {msg} ({elapsed})").unwrap();
        let bar = Self::drawn(ProgressBar::new_spinner, style);
        if let Some(b) = &bar {
            b.set_prefix(label.to_string());
        }
        Progress::new(bar, label, None)
    }

    /// Name the step now under way.
    pub fn step(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.set_message(msg.to_string()),
            None => tracing::debug!("{}: {msg}", self.label),
        }
    }

    pub fn inc(&mut self, n: u64) {
        self.pos += n;
        if let Some(b) = &self.bar {
            b.set_position(self.pos);
        } else if self.last_log.elapsed() >= Duration::from_secs(10) {
            self.last_log = Instant::now();
            match self.len {
                Some(l) if l > 0 => tracing::info!(
                    "{}: {} of {} MB ({}%)",
                    self.label,
                    self.pos >> 20,
                    l >> 20,
                    self.pos * 100 / l
                ),
                _ => tracing::info!("{}: {} MB", self.label, self.pos >> 20),
            }
        }
    }

    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

/// A reader that advances a progress display as its bytes pass.
pub struct ProgressReader<'a, R> {
    pub inner: R,
    pub progress: &'a mut Progress,
}

impl<R: std::io::Read> std::io::Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}
