//! Time spent in each of our Flex operations, by kind and shape (feature `op-profile`, off by
//! default: without it none of this is compiled and the operations carry no timer).
//!
//! Each call of our Flex kernels in `sae-nn` adds its wall time to a table: every convolution
//! (`fwd`, `dx` = input gradient, `dw` = weight gradient, with its batch, channels, input size,
//! kernel, stride and padding), FIR filter, activation, padding and resampling. Burn's own
//! operations, Adam (`sae-train`) and the copies of strided inputs into contiguous ones are not
//! timed: the gap between the table's total and a step's time is theirs. [`report`] prints the
//! table with each row's share and, for
//! the convolutions, the direct convolution's GFLOP/s (`2·b·co·ho·wo·ci·k²` over the time; a
//! Winograd call does fewer products than it is credited with). How the ninth performance
//! round found a 512-channel weight gradient at 18 GFLOP/s (`docs/performance.md`):
//!
//! ```sh
//! cargo build --release --example bench_side --features op-profile
//! SAE_OP_PROFILE=1 target/release/examples/bench_side train cfg128 4 3
//! ```
//!
//! The timers run only with `SAE_OP_PROFILE` set; the table is process-wide (one mutex), so
//! nested or concurrent calls each count their own wall time. In a program of your own: turn
//! on the feature (`swapping-autoencoder` forwards it), set `SAE_OP_PROFILE=1`, run the work,
//! then print [`report`] (and [`reset`] between phases you want apart).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Seconds, calls and credited floating-point operations per row.
type Table = HashMap<String, (f64, usize, f64)>;

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// Whether `SAE_OP_PROFILE` is set (read once).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SAE_OP_PROFILE").is_some())
}

/// Adds its lifetime to row `key` when dropped (the kernels' `op_timer!`).
pub(crate) struct Timer {
    row: Option<(String, Instant, f64)>,
}

impl Timer {
    /// A timer for row `key()` (built only when profiling is on) crediting `flops`.
    pub(crate) fn new(key: impl FnOnce() -> String, flops: f64) -> Self {
        Self {
            row: enabled().then(|| (key(), Instant::now(), flops)),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some((key, start, flops)) = self.row.take() {
            let secs = start.elapsed().as_secs_f64();
            let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
            let row = table
                .get_or_insert_with(HashMap::new)
                .entry(key)
                .or_default();
            row.0 += secs;
            row.1 += 1;
            row.2 += flops;
        }
    }
}

/// Empties the table.
pub fn reset() {
    *TABLE.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// The table as text: totals by kind, then the `rows` slowest rows (seconds, share, calls,
/// GFLOP/s where credited). Empty when nothing was timed.
pub fn report(rows: usize) -> String {
    let table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(table) = table.as_ref() else {
        return String::new();
    };
    let mut sorted: Vec<_> = table.iter().collect();
    sorted.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    let total: f64 = sorted.iter().map(|r| r.1.0).sum();
    let rate = |secs: f64, flops: f64| {
        if flops > 0.0 {
            format!("{:6.1} GFLOP/s", flops / secs / 1e9)
        } else {
            String::new()
        }
    };
    let mut kinds: HashMap<&str, (f64, f64)> = HashMap::new();
    for (key, (secs, _, flops)) in &sorted {
        let kind = kinds
            .entry(key.split_whitespace().next().unwrap_or(""))
            .or_default();
        kind.0 += secs;
        kind.1 += flops;
    }
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    let mut out = format!("{total:.3} s in timed operations\n");
    for (kind, (secs, flops)) in kinds {
        out += &format!(
            "  {kind:22} {secs:7.3} s {:5.1} % {}\n",
            100.0 * secs / total,
            rate(secs, flops)
        );
    }
    for (key, (secs, calls, flops)) in sorted.into_iter().take(rows) {
        out += &format!(
            "{secs:7.3} s {:5.1} % {calls:6} calls {}  {key}\n",
            100.0 * secs / total,
            rate(*secs, *flops)
        );
    }
    out
}
