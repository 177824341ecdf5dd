//! The terminal display: a progress bar with rate and ETA on a terminal, plain log lines
//! otherwise.

use std::io::IsTerminal;
use std::time::Instant;

/// The loss terms shown on a log line, in this order.
const SHOWN: [&str; 11] = [
    "G_L1",
    "G_GAN_rec",
    "G_GAN_mix",
    "G_mix",
    "D_real",
    "D_rec",
    "D_mix",
    "PatchD_real",
    "PatchD_mix",
    "D_R1",
    "PatchD_R1",
];

/// A progress bar on a terminal, plain log lines otherwise.
pub(crate) struct Progress {
    total: u64,
    start_images: u64,
    started: Instant,
    tty: bool,
}

impl Progress {
    pub(crate) fn new(total: u64, start_images: u64) -> Self {
        Self {
            total,
            start_images,
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Redraws the bar (terminals only).
    pub(crate) fn update(&self, images: u64, rate: f64) {
        if !self.tty {
            return;
        }
        let frac = images as f64 / self.total as f64;
        let width = 30;
        let filled = ((frac * width as f64) as usize).min(width);
        let done = images.saturating_sub(self.start_images) as f64;
        let secs = self.started.elapsed().as_secs_f64();
        let eta = if done > 0.0 {
            (self.total.saturating_sub(images)) as f64 * secs / done
        } else {
            0.0
        };
        eprint!(
            "\r[{}{}] {images}/{} images {:5.1}% {rate:7.1} img/s ETA {}   ",
            "#".repeat(filled),
            " ".repeat(width - filled),
            self.total,
            100.0 * frac,
            hms(eta)
        );
    }

    /// Prints a stats line (a `stats.jsonl` line) in short form.
    pub(crate) fn log_stats(&self, line: &str) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let mut msg = format!(
            "kimg {:.2} | {:.1} img/s",
            v["kimg"].as_f64().unwrap_or(0.0),
            v["images_per_s"].as_f64().unwrap_or(0.0)
        );
        for key in SHOWN {
            if let Some(x) = v[key].as_f64() {
                msg.push_str(&format!(" | {key} {x:.3}"));
            }
        }
        self.log(&msg);
    }

    /// Prints a message on its own line (clearing the bar first on a terminal).
    pub(crate) fn log(&self, msg: &str) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
        eprintln!("{msg}");
    }
}

fn hms(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}
