//! Operational metrics: counters and histograms on atomics in one
//! process-wide registry, rendered in the Prometheus text format by the
//! optional HTTP endpoint ([`http`], config `[metrics]`).
//!
//! Every label value comes from a fixed list, never from a stanza: no JID or
//! payload ever becomes a label (bounded cardinality, nothing personal).
//! Counters are bumped at the choke points: the router (stanzas, errors),
//! the store's writer (batches), the connect loop (connection state).

pub mod http;

use std::fmt::Write as _;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::LazyLock;
use std::time::Duration;

/// A label whose values are a fixed list, indexed by the value.
pub trait Label: Copy {
    const NAME: &'static str;
    const VALUES: &'static [&'static str];
    fn index(self) -> usize;
}

/// The kind of a stanza: its element name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StanzaKind {
    Iq,
    Message,
    Presence,
    Other,
}

impl StanzaKind {
    pub fn of(name: &str) -> Self {
        match name {
            "iq" => StanzaKind::Iq,
            "message" => StanzaKind::Message,
            "presence" => StanzaKind::Presence,
            _ => StanzaKind::Other,
        }
    }
}

impl Label for StanzaKind {
    const NAME: &'static str = "kind";
    const VALUES: &'static [&'static str] = &["iq", "message", "presence", "other"];
    fn index(self) -> usize {
        self as usize
    }
}

/// Whether the service took a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Rejected,
}

impl Label for Outcome {
    const NAME: &'static str = "outcome";
    const VALUES: &'static [&'static str] = &["accepted", "rejected"];
    fn index(self) -> usize {
        self as usize
    }
}

/// A defined condition of RFC 6120 §8.3.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Condition(usize);

impl Condition {
    /// The condition named `name`; `undefined-condition` for any other name.
    pub fn named(name: &str) -> Self {
        let undefined = Self::VALUES.iter().position(|v| *v == "undefined-condition").expect("listed");
        Condition(Self::VALUES.iter().position(|v| *v == name).unwrap_or(undefined))
    }
}

impl Label for Condition {
    const NAME: &'static str = "condition";
    const VALUES: &'static [&'static str] = &[
        "bad-request",
        "conflict",
        "feature-not-implemented",
        "forbidden",
        "gone",
        "internal-server-error",
        "item-not-found",
        "jid-malformed",
        "not-acceptable",
        "not-allowed",
        "not-authorized",
        "policy-violation",
        "recipient-unavailable",
        "redirect",
        "registration-required",
        "remote-server-not-found",
        "remote-server-timeout",
        "resource-constraint",
        "service-unavailable",
        "subscription-required",
        "undefined-condition",
        "unexpected-request",
    ];
    fn index(self) -> usize {
        self.0
    }
}

/// A number that only goes up.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A counter per value of label `L`.
pub struct Family<L> {
    counts: Box<[AtomicU64]>,
    label: PhantomData<L>,
}

impl<L: Label> Family<L> {
    fn new() -> Self {
        Self { counts: L::VALUES.iter().map(|_| AtomicU64::new(0)).collect(), label: PhantomData }
    }

    pub fn inc(&self, value: L) {
        self.add(value, 1);
    }

    pub fn add(&self, value: L, n: u64) {
        self.counts[value.index()].fetch_add(n, Relaxed);
    }
}

/// Observations of an integer quantity in cumulative buckets, shown
/// divided by `scale` (microseconds shown as seconds).
pub struct Histogram {
    bounds: &'static [u64],
    scale: f64,
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [u64], scale: f64) -> Self {
        Self {
            bounds,
            scale,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: u64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }
}

/// Requests per write batch: powers of two up to the largest batch_max
/// worth configuring.
const BATCH_SIZES: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];
/// Write batch latency in microseconds, 100 µs to 5 s.
const LATENCIES_US: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 5_000_000,
];

/// The registry: everything the process counts.
pub struct Metrics {
    pub stanzas_received: Family<StanzaKind>,
    pub stanzas_sent: Family<StanzaKind>,
    pub stanza_errors: Family<Condition>,
    /// Stanzas not sent because they were over limits.max_stanza_out.
    pub stanzas_too_big: Family<StanzaKind>,
    pub commits: Family<Outcome>,
    pub key_packages_uploaded: Counter,
    pub key_package_verifications: Counter,
    pub key_packages_claimed: Counter,
    pub write_batch_size: Histogram,
    pub write_batch_latency: Histogram,
    pub reconnects: Counter,
    connected: AtomicBool,
}

/// The process's registry.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Figures read from the store when metrics are scraped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreGauges {
    pub archive_messages: u64,
    /// Live devices holding `directory.low_water` ordinary KeyPackages or fewer.
    pub low_key_package_devices: u64,
}

impl Metrics {
    fn new() -> Self {
        Self {
            stanzas_received: Family::new(),
            stanzas_sent: Family::new(),
            stanza_errors: Family::new(),
            stanzas_too_big: Family::new(),
            commits: Family::new(),
            key_packages_uploaded: Counter::default(),
            key_package_verifications: Counter::default(),
            key_packages_claimed: Counter::default(),
            write_batch_size: Histogram::new(BATCH_SIZES, 1.0),
            write_batch_latency: Histogram::new(LATENCIES_US, 1e6),
            reconnects: Counter::default(),
            connected: AtomicBool::new(false),
        }
    }

    /// One committed (or failed) write batch of `size` requests.
    pub fn write_batch(&self, size: usize, took: Duration) {
        self.write_batch_size.observe(size as u64);
        self.write_batch_latency.observe(took.as_micros() as u64);
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Relaxed);
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, store: Option<&StoreGauges>) -> String {
        let mut out = String::new();
        let r = &mut out;
        family(r, "xmpp_mls_stanzas_received_total", "Stanzas received from the XMPP server.", &self.stanzas_received);
        family(r, "xmpp_mls_stanzas_sent_total", "Stanzas sent to the XMPP server (replies and fan-out).", &self.stanzas_sent);
        family(r, "xmpp_mls_stanza_errors_total", "Stanza errors returned, by RFC 6120 condition.", &self.stanza_errors);
        let too_big = "Stanzas over limits.max_stanza_out not sent (an IQ result is replaced by an error).";
        family(r, "xmpp_mls_stanzas_too_big_total", too_big, &self.stanzas_too_big);
        family(r, "xmpp_mls_commits_total", "Commits submitted to the Delivery Service.", &self.commits);
        single(r, "xmpp_mls_key_packages_uploaded_total", "counter", "KeyPackages stored.", self.key_packages_uploaded.get());
        single(r, "xmpp_mls_key_package_verifications_total", "counter", "KeyPackages whose signatures were verified (uploads that passed the cheap checks).", self.key_package_verifications.get());
        single(r, "xmpp_mls_key_packages_claimed_total", "counter", "KeyPackages handed out to claimers.", self.key_packages_claimed.get());
        histogram(r, "xmpp_mls_store_write_batch_size", "Write requests committed per transaction.", &self.write_batch_size);
        histogram(r, "xmpp_mls_store_write_batch_seconds", "Time to run and commit one write batch.", &self.write_batch_latency);
        single(r, "xmpp_mls_reconnects_total", "counter", "Connections to the XMPP server after the first.", self.reconnects.get());
        single(r, "xmpp_mls_connected", "gauge", "1 while the component stream is up.", u64::from(self.connected()));
        if let Some(s) = store {
            single(r, "xmpp_mls_archive_messages", "gauge", "Messages held in group archives.", s.archive_messages);
            single(
                r,
                "xmpp_mls_key_package_low_devices",
                "gauge",
                "Live devices with directory.low_water ordinary KeyPackages or fewer.",
                s.low_key_package_devices,
            );
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

fn family<L: Label>(out: &mut String, name: &str, help: &str, f: &Family<L>) {
    header(out, name, "counter", help);
    for (value, count) in L::VALUES.iter().zip(f.counts.iter()) {
        let _ = writeln!(out, "{name}{{{}=\"{value}\"}} {}", L::NAME, count.load(Relaxed));
    }
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    header(out, name, "histogram", help);
    let mut cumulative = 0;
    for (bound, n) in h.bounds.iter().zip(h.buckets.iter()) {
        cumulative += n.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", *bound as f64 / h.scale);
    }
    let count = h.count.load(Relaxed);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", h.sum.load(Relaxed) as f64 / h.scale);
    let _ = writeln!(out, "{name}_count {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_conditions_count_as_undefined() {
        assert_eq!(Condition::VALUES[Condition::named("conflict").index()], "conflict");
        assert_eq!(Condition::VALUES[Condition::named("<script>").index()], "undefined-condition");
    }

    #[test]
    fn histograms_are_cumulative_and_scaled() {
        let m = Metrics::new();
        m.write_batch(3, Duration::from_micros(200));
        m.write_batch(1, Duration::from_secs(10));
        let text = m.render(None);
        for line in [
            "xmpp_mls_store_write_batch_size_bucket{le=\"2\"} 1",
            "xmpp_mls_store_write_batch_size_bucket{le=\"4\"} 2",
            "xmpp_mls_store_write_batch_size_sum 4",
            "xmpp_mls_store_write_batch_seconds_bucket{le=\"0.0001\"} 0",
            "xmpp_mls_store_write_batch_seconds_bucket{le=\"0.00025\"} 1",
            "xmpp_mls_store_write_batch_seconds_bucket{le=\"5\"} 1",
            "xmpp_mls_store_write_batch_seconds_bucket{le=\"+Inf\"} 2",
            "xmpp_mls_store_write_batch_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn every_family_value_is_rendered_with_its_label() {
        let m = Metrics::new();
        m.stanza_errors.inc(Condition::named("item-not-found"));
        m.stanzas_received.add(StanzaKind::of("presence"), 2);
        let text = m.render(Some(&StoreGauges { archive_messages: 7, low_key_package_devices: 1 }));
        assert!(text.contains("xmpp_mls_stanza_errors_total{condition=\"item-not-found\"} 1\n"));
        assert!(text.contains("xmpp_mls_stanza_errors_total{condition=\"conflict\"} 0\n"));
        assert!(text.contains("xmpp_mls_stanzas_received_total{kind=\"presence\"} 2\n"));
        assert!(text.contains("xmpp_mls_archive_messages 7\n"));
        assert_eq!(text.matches("# TYPE ").count(), 14);
    }
}
