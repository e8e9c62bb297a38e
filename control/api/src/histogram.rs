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

    /// `name_bucket`, `name_sum` and `name_count` lines with `labels` (without braces;
    /// empty for a histogram without labels).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        // The text format has no empty label set (`{}`) nor a leading comma.
        let (sep, total) = if labels.is_empty() { ("", String::new()) } else { (",", format!("{{{labels}}}")) };
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{total} {}", self.sum);
        let _ = writeln!(out, "{name}_count{total} {}", self.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_and_without_labels() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.5);
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "verb=\"GET\"");
        assert!(out.contains("x_seconds_bucket{verb=\"GET\",le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_count{verb=\"GET\"} 1\n"), "{out}");
        let mut out = String::new();
        h.render(&mut out, "y_seconds", "");
        assert!(out.contains("y_seconds_bucket{le=\"0.1\"} 0\n"), "{out}");
        assert!(out.contains("y_seconds_bucket{le=\"+Inf\"} 1\n"), "{out}");
        assert!(out.contains("y_seconds_sum 0.5\n"), "{out}");
        assert!(out.contains("y_seconds_count 1\n"), "{out}");
    }
}
