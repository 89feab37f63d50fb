//! Metrics in the Prometheus text exposition format (version 0.0.4), written by hand.
//!
//! Owns: histograms with fixed buckets, and a writer that emits `# HELP`/`# TYPE` lines and
//! samples. The node keeps its counters wherever they naturally live (its stats, its parts)
//! and renders them here on each scrape; nothing is registered globally.
//!
//! Must not: read a clock or allocate per observation. `Histogram::observe` is a bounded loop
//! over at most `HISTOGRAM_BUCKETS_MAX` bucket bounds and two additions.
//!
//! Invariants:
//! 1. A histogram's bucket bounds are finite, positive and strictly increasing (asserted when
//!    it is made: the bounds are ours, never the outside world's).
//! 2. `counts[i]` counts observations `<= bounds[i]` only once (non-cumulative); the
//!    cumulative `_bucket` series is computed when written, so `+Inf` always equals `_count`.
//! 3. Every metric name written matches `[a-zA-Z_:][a-zA-Z0-9_:]*`, and every label value is
//!    escaped (`\\`, `\"`, `\n`), so a peer id or a command name cannot break the format.

use std::fmt::Write;

/// Most buckets a histogram may have (the `+Inf` bucket excluded).
pub const HISTOGRAM_BUCKETS_MAX: usize = 32;

/// A histogram of seconds with fixed upper bounds.
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts, one per bound, plus one for `+Inf`.
    counts: [u64; HISTOGRAM_BUCKETS_MAX + 1],
    sum: f64,
    count: u64,
}

/// etcd's bounds for disk durations: 1 ms doubling to about 8 s.
pub const DISK_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// Bounds for in-memory work (applying an entry): 1 µs doubling to about 1 s.
pub const APPLY_SECONDS_BUCKETS: &[f64] = &[
    0.000_001, 0.000_002, 0.000_004, 0.000_008, 0.000_016, 0.000_032, 0.000_064, 0.000_128,
    0.000_256, 0.000_512, 0.001_024, 0.002_048, 0.004_096, 0.008_192, 0.016_384, 0.032_768,
    0.065_536, 0.131_072, 0.262_144, 0.524_288, 1.048_576,
];

/// etcd's bounds for peer round trips: 0.1 ms doubling to about 0.8 s.
pub const ROUND_TRIP_SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
    0.4096, 0.8192,
];

/// Bounds for snapshot durations: 10 ms doubling to about 10 minutes.
pub const SNAPSHOT_SECONDS_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92, 163.84,
    327.68, 655.36,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        assert!(
            !bounds.is_empty() && bounds.len() <= HISTOGRAM_BUCKETS_MAX,
            "{} buckets",
            bounds.len()
        );
        assert!(
            bounds.iter().all(|b| b.is_finite() && *b > 0.0)
                && bounds.windows(2).all(|w| w[0] < w[1]),
            "bucket bounds {bounds:?} must be positive and strictly increasing"
        );
        Histogram {
            bounds,
            counts: [0; HISTOGRAM_BUCKETS_MAX + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Record one observation, in seconds. Negative or NaN durations (a clock that went
    /// backwards in a caller) count as zero rather than corrupting the sum.
    pub fn observe(&mut self, seconds: f64) {
        let v = if seconds.is_nan() || seconds < 0.0 {
            0.0
        } else {
            seconds
        };
        let slot = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[slot] += 1;
        self.sum += v;
        self.count += 1;
    }

    pub fn observe_duration(&mut self, d: std::time::Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }
}

/// What kind of metric a family is (the `# TYPE` line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Writes one exposition: families, each a `# HELP` and `# TYPE` line then its samples.
#[derive(Default)]
pub struct TextWriter {
    out: String,
}

/// The content type of what `TextWriter` produces.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl TextWriter {
    pub fn new() -> TextWriter {
        TextWriter::default()
    }

    /// Start a family. Samples written after it belong to it.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        assert!(valid_name(name), "metric name {name:?}");
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        assert!(valid_name(name), "metric name {name:?}");
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        self.out.push(' ');
        write_value(&mut self.out, value);
        self.out.push('\n');
    }

    /// A family of one unlabelled counter or gauge.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The `_bucket`, `_sum` and `_count` samples of a histogram (its family line first).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0u64;
        let bucket = format!("{name}_bucket");
        for (i, bound) in h.bounds.iter().enumerate() {
            cumulative += h.counts[i];
            let le = format_value(*bound);
            self.out.push_str(&bucket);
            write_labels(&mut self.out, labels, Some(&le));
            let _ = writeln!(self.out, " {cumulative}");
        }
        cumulative += h.counts[h.bounds.len()];
        debug_assert_eq!(cumulative, h.count, "+Inf bucket must equal the count");
        self.out.push_str(&bucket);
        write_labels(&mut self.out, labels, Some("+Inf"));
        let _ = writeln!(self.out, " {cumulative}");
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        assert!(valid_name(k) && !k.contains(':'), "label name {k:?}");
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn format_value(v: f64) -> String {
    let mut s = String::new();
    write_value(&mut s, v);
    s
}

/// Prometheus floats: integers without a fraction, `+Inf`/`-Inf`/`NaN` spelled out.
fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse the samples of an exposition back: (name with labels, value).
    fn samples(text: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').expect("sample has a value");
                let v = match v {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().expect("numeric value"),
                };
                (k.to_string(), v)
            })
            .collect()
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_inf_equals_count() {
        let mut h = Histogram::new(DISK_SECONDS_BUCKETS);
        for s in [0.0005, 0.001, 0.0015, 0.003, 100.0, -1.0, f64::NAN] {
            h.observe(s);
        }
        let mut w = TextWriter::new();
        w.family("fsync_seconds", Kind::Histogram, "fsync");
        w.histogram("fsync_seconds", &[], &h);
        let got = samples(&w.finish());
        let find = |k: &str| got.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        // -1 and NaN count as 0: four observations are <= 1 ms.
        assert_eq!(find("fsync_seconds_bucket{le=\"0.001\"}"), Some(4.0));
        assert_eq!(find("fsync_seconds_bucket{le=\"0.002\"}"), Some(5.0));
        assert_eq!(find("fsync_seconds_bucket{le=\"0.004\"}"), Some(6.0));
        assert_eq!(find("fsync_seconds_bucket{le=\"8.192\"}"), Some(6.0));
        assert_eq!(find("fsync_seconds_bucket{le=\"+Inf\"}"), Some(7.0));
        assert_eq!(find("fsync_seconds_count"), Some(7.0));
        let sum = find("fsync_seconds_sum").unwrap();
        assert!((sum - 100.006).abs() < 1e-9, "sum {sum}");
        let buckets: Vec<f64> = got
            .iter()
            .filter(|(n, _)| n.contains("_bucket"))
            .map(|(_, v)| *v)
            .collect();
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    }

    #[test]
    fn label_values_are_escaped_and_families_are_announced() {
        let mut w = TextWriter::new();
        w.family("kvraft_commands_total", Kind::Counter, "commands\nby name");
        w.sample("kvraft_commands_total", &[("cmd", "we\"ird\\name\n")], 3.0);
        w.single("kvraft_server_is_leader", Kind::Gauge, "leader", 1.0);
        let text = w.finish();
        assert!(text.contains("# HELP kvraft_commands_total commands\\nby name\n"));
        assert!(text.contains("# TYPE kvraft_commands_total counter\n"));
        assert!(text.contains("kvraft_commands_total{cmd=\"we\\\"ird\\\\name\\n\"} 3\n"));
        assert!(text.contains("# TYPE kvraft_server_is_leader gauge\nkvraft_server_is_leader 1\n"));
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 2);
    }

    #[test]
    fn values_are_written_as_prometheus_floats() {
        for (v, s) in [
            (0.0, "0"),
            (42.0, "42"),
            (0.25, "0.25"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
            (1e20, "100000000000000000000"),
        ] {
            assert_eq!(format_value(v), s);
        }
    }

    #[test]
    #[should_panic(expected = "strictly increasing")]
    fn bounds_out_of_order_are_our_bug() {
        static BAD: &[f64] = &[0.1, 0.05];
        Histogram::new(BAD);
    }
}
