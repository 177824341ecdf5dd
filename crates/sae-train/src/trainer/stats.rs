//! `stats.jsonl`: running means of every loss term over one logging interval, one JSON line
//! per interval.

use std::collections::BTreeMap;

use super::{Counters, StepReport};

/// Running means of every term over one logging interval.
#[derive(Default)]
pub(crate) struct StatsWindow {
    sums: BTreeMap<&'static str, (f64, u64)>,
    seconds: f64,
    steps: u64,
    images: u64,
}

impl StatsWindow {
    /// Adds one optimizer call that took `seconds` on `batch` images.
    pub(crate) fn add(&mut self, report: &StepReport, seconds: f64, batch: u64) {
        for (name, v) in &report.terms {
            let e = self.sums.entry(name).or_default();
            e.0 += f64::from(*v);
            e.1 += 1;
        }
        self.seconds += seconds;
        self.steps += 1;
        self.images += batch;
    }

    /// Images per second over the interval so far.
    pub(crate) fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.images as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The interval's JSON line; starts a new interval.
    pub(crate) fn flush(&mut self, c: &Counters, elapsed: f64, skipped: u64) -> String {
        let mut obj = serde_json::Map::new();
        obj.insert("images".into(), c.images.into());
        obj.insert("kimg".into(), (c.images as f64 / 1000.0).into());
        obj.insert("calls".into(), c.calls.into());
        obj.insert("d_steps".into(), c.d_steps.into());
        obj.insert("g_steps".into(), c.g_steps.into());
        obj.insert("r1_steps".into(), c.r1_steps.into());
        obj.insert("elapsed_s".into(), elapsed.into());
        obj.insert("images_per_s".into(), self.rate().into());
        let per_step = if self.steps > 0 {
            self.seconds / self.steps as f64
        } else {
            0.0
        };
        obj.insert("sec_per_step".into(), per_step.into());
        obj.insert("skipped_images".into(), skipped.into());
        for (name, (sum, n)) in &self.sums {
            obj.insert((*name).into(), (sum / *n as f64).into());
        }
        *self = StatsWindow::default();
        serde_json::Value::Object(obj).to_string()
    }
}
