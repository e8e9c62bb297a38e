//! A Prometheus histogram with fixed buckets, rendered in the text format: the one
//! skiff-control and skiff-node both use for their `/metrics` latencies.

use std::fmt::Write as _;

#[derive(Clone, Debug)]
pub struct Histogram {
    /// Upper bounds in seconds, ascending.
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, seconds: f64) {
        for (bound, n) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *n += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    /// How many observations fell at or below each bound, and in all.
    pub fn counts(&self) -> (&[u64], u64) {
        (&self.counts, self.count)
    }

    /// `name_bucket`, `name_sum` and `name_count` lines with `labels` (without braces).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}
