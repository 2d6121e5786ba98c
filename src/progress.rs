//! Progress for long work: a live bar (bytes, rate) when stderr is a terminal, and
//! nothing extra otherwise — commands print their one summary line at the end.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    counter: Arc<AtomicU64>,
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Progress {
    /// `total`, when known, turns the spinner into a bar.
    pub fn start(total: Option<u64>) -> Progress {
        let counter = Arc::new(AtomicU64::new(0));
        let mut progress = Progress {
            counter: counter.clone(),
            bar: None,
            ticker: None,
            started: Instant::now(),
        };
        if !std::io::stderr().is_terminal() {
            return progress;
        }
        let bar = match total {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec} {elapsed}")
                    .expect("valid template"),
            ),
        };
        let ticking = bar.clone();
        progress.ticker = Some(tokio::spawn(async move {
            loop {
                ticking.set_position(counter.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
        progress.bar = Some(bar);
        progress
    }

    /// The byte counter the pipeline advances.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.counter.clone()
    }

    pub fn bytes(&self) -> u64 {
        self.counter.load(Ordering::Relaxed)
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn set_message(&self, msg: impl Into<String>) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg.into());
        }
    }

    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

/// 1536 → "1.5 KiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Bytes per second as "12.3 MiB/s".
pub fn human_rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    format!("{}/s", human_bytes((bytes as f64 / secs) as u64))
}
