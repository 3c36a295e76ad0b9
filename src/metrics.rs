//! Operational metrics in one process-wide `prometheus-client` registry,
//! encoded in the OpenMetrics text format by the optional HTTP endpoint
//! ([`http`], config `[metrics]`).
//!
//! Every label value comes from a fixed list, never from a stanza: no JID or
//! payload ever becomes a label (bounded cardinality, nothing personal).
//! Counters are bumped at the choke points: the router (stanzas, errors,
//! request latency), the service's limiters (refusals), the store's writer
//! (batches), the connect loop (connection state). A scrape reads atomics
//! and `/proc/self`, never the store: the store's figures are gauges set by
//! the maintenance task ([`Metrics::set_store_gauges`]).

pub mod http;
mod process;

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

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

/// A counter per value of label `L`, every value shown from the start.
pub struct Labelled<L> {
    family: Family<[(&'static str, &'static str); 1], Counter>,
    label: std::marker::PhantomData<L>,
}

impl<L: Label> Labelled<L> {
    fn register(registry: &mut Registry, name: &str, help: &str) -> Self {
        let family = Family::default();
        for value in L::VALUES {
            let _created = family.get_or_create(&[(L::NAME, *value)]);
        }
        registry.register(name, help, family.clone());
        Self { family, label: std::marker::PhantomData }
    }

    pub fn inc(&self, value: L) {
        self.family.get_or_create(&[(L::NAME, L::VALUES[value.index()])]).inc();
    }
}

/// What a request asks for, as the router dispatches it (xep/ element
/// names); `other` is anything the service does not define.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation(usize);

impl Operation {
    /// The operation named `name`; `other` for any other name.
    pub fn named(name: &str) -> Self {
        let other = Self::VALUES.len() - 1;
        Operation(Self::VALUES.iter().position(|v| *v == name).unwrap_or(other))
    }
}

impl Label for Operation {
    const NAME: &'static str = "operation";
    const VALUES: &'static [&'static str] = &[
        "disco-info",
        "disco-items",
        "ping",
        "publish",
        "retract",
        "items",
        "subscribe",
        "unsubscribe",
        "claim",
        "mam-query",
        "mam-form",
        "mam-metadata",
        "ack",
        "vault-get",
        "vault-set",
        "create",
        "commit",
        "proposal",
        "group-info",
        "leave",
        "message",
        "feed-join",
        "feed-leave",
        "other",
    ];
    fn index(self) -> usize {
        self.0
    }
}

/// The rate limit that refused a request (config keys in parentheses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Stanzas per account (limits.account_rate).
    Account,
    /// Stanzas per other domain (federation.domain_rate).
    Domain,
    /// Claims per claimer and account (directory.claim_burst).
    Claim,
    /// KeyPackage verifications per account (directory.key_package_burst).
    KeyPackageVerification,
}

impl Label for Limit {
    const NAME: &'static str = "limit";
    const VALUES: &'static [&'static str] = &["account", "domain", "claim", "key_package_verification"];
    fn index(self) -> usize {
        self as usize
    }
}

/// The `domain` label of another domain: its name if the configuration
/// lists it (federation.allow_domains or deny_domains), else `other`, so
/// that the label's values are bounded by the configuration.
pub fn federation_domain<'a>(mut listed: impl Iterator<Item = &'a String>, domain: &str) -> String {
    match listed.any(|d| d.eq_ignore_ascii_case(domain)) {
        true => domain.to_ascii_lowercase(),
        false => "other".to_owned(),
    }
}

/// Requests per write batch: powers of two up to the largest batch_max
/// worth configuring.
const BATCH_SIZES: [f64; 11] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
/// Latency in seconds, 100 µs to 5 s.
const LATENCIES: [f64; 14] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCIES)
}

/// The registry: everything the process counts.
pub struct Metrics {
    registry: Registry,
    pub stanzas_received: Labelled<StanzaKind>,
    pub stanzas_sent: Labelled<StanzaKind>,
    pub stanza_errors: Labelled<Condition>,
    /// Stanzas not sent because they were over limits.max_stanza_out.
    pub stanzas_too_big: Labelled<StanzaKind>,
    pub commits: Labelled<Outcome>,
    pub rate_limited: Labelled<Limit>,
    /// Stanzas of accounts of other domains refused by the federation
    /// policy, and stanzas sent to them, by [`federation_domain`].
    federation_refused: Family<[(&'static str, String); 1], Counter>,
    federation_sent: Family<[(&'static str, String); 1], Counter>,
    pub key_packages_uploaded: Counter,
    pub key_package_verifications: Counter,
    pub key_packages_claimed: Counter,
    request_latency: Family<[(&'static str, &'static str); 1], Histogram, fn() -> Histogram>,
    write_batch_size: Histogram,
    write_batch_latency: Histogram,
    pub reconnects: Counter,
    connected: Gauge,
    archive_messages: Gauge,
    low_key_package_devices: Gauge,
}

/// The process's registry.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Figures read from the store by the maintenance task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreGauges {
    pub archive_messages: u64,
    /// Live devices holding `directory.low_water` ordinary KeyPackages or fewer.
    pub low_key_package_devices: u64,
}

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::default();
        let stanzas_received = Labelled::register(&mut r, "xmpp_mls_stanzas_received", "Stanzas received from the XMPP server");
        let stanzas_sent = Labelled::register(&mut r, "xmpp_mls_stanzas_sent", "Stanzas sent to the XMPP server (replies and fan-out)");
        let stanza_errors = Labelled::register(&mut r, "xmpp_mls_stanza_errors", "Stanza errors returned, by RFC 6120 condition");
        let too_big = "Stanzas over limits.max_stanza_out not sent (an IQ result is replaced by an error)";
        let stanzas_too_big = Labelled::register(&mut r, "xmpp_mls_stanzas_too_big", too_big);
        let commits = Labelled::register(&mut r, "xmpp_mls_commits", "Commits submitted to the Delivery Service");
        let rate_limited = Labelled::register(&mut r, "xmpp_mls_rate_limited", "Requests refused with rate-limited, by limit");
        let federation_refused = Family::default();
        let refused = "Stanzas of accounts of other domains refused by federation.allow_domains or deny_domains";
        r.register("xmpp_mls_federation_refused", refused, federation_refused.clone());
        let federation_sent = Family::default();
        r.register("xmpp_mls_federation_sent", "Stanzas sent to accounts of other domains", federation_sent.clone());
        let key_packages_uploaded = Counter::default();
        r.register("xmpp_mls_key_packages_uploaded", "KeyPackages stored", key_packages_uploaded.clone());
        let key_package_verifications = Counter::default();
        let verified = "KeyPackages whose signatures were verified (uploads that passed the cheap checks)";
        r.register("xmpp_mls_key_package_verifications", verified, key_package_verifications.clone());
        let key_packages_claimed = Counter::default();
        r.register("xmpp_mls_key_packages_claimed", "KeyPackages handed out to claimers", key_packages_claimed.clone());
        let request_latency: Family<_, _, fn() -> Histogram> = Family::new_with_constructor(latency_histogram);
        for value in Operation::VALUES {
            let _created = request_latency.get_or_create(&[(Operation::NAME, *value)]);
        }
        let latency = "Time from a request's arrival to its answer, by operation";
        r.register("xmpp_mls_request_seconds", latency, request_latency.clone());
        let write_batch_size = Histogram::new(BATCH_SIZES);
        r.register("xmpp_mls_store_write_batch_size", "Write requests committed per transaction", write_batch_size.clone());
        let write_batch_latency = latency_histogram();
        r.register("xmpp_mls_store_write_batch_seconds", "Time to run and commit one write batch", write_batch_latency.clone());
        let reconnects = Counter::default();
        r.register("xmpp_mls_reconnects", "Connections to the XMPP server after the first", reconnects.clone());
        let connected = Gauge::default();
        r.register("xmpp_mls_connected", "1 while the component stream is up", connected.clone());
        let archive_messages = Gauge::default();
        r.register("xmpp_mls_archive_messages", "Messages held in group archives", archive_messages.clone());
        let low_key_package_devices = Gauge::default();
        let low = "Live devices with directory.low_water ordinary KeyPackages or fewer";
        r.register("xmpp_mls_key_package_low_devices", low, low_key_package_devices.clone());
        let build = Info::new([("version", env!("CARGO_PKG_VERSION"))]);
        r.register("xmpp_mls_build", "The running build (value 1)", build);
        r.register_collector(Box::new(process::Process));
        Self {
            registry: r,
            stanzas_received,
            stanzas_sent,
            stanza_errors,
            stanzas_too_big,
            commits,
            rate_limited,
            federation_refused,
            federation_sent,
            key_packages_uploaded,
            key_package_verifications,
            key_packages_claimed,
            request_latency,
            write_batch_size,
            write_batch_latency,
            reconnects,
            connected,
            archive_messages,
            low_key_package_devices,
        }
    }

    /// One committed (or failed) write batch of `size` requests.
    pub fn write_batch(&self, size: usize, took: Duration) {
        self.write_batch_size.observe(size as f64);
        self.write_batch_latency.observe(took.as_secs_f64());
    }

    /// One request of `operation` answered after `took`.
    pub fn request(&self, operation: Operation, took: Duration) {
        let labels = [(Operation::NAME, Operation::VALUES[operation.index()])];
        self.request_latency.get_or_create(&labels).observe(took.as_secs_f64());
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    pub fn connected(&self) -> bool {
        self.connected.get() == 1
    }

    pub fn set_store_gauges(&self, gauges: &StoreGauges) {
        self.archive_messages.set(gauges.archive_messages as i64);
        self.low_key_package_devices.set(gauges.low_key_package_devices as i64);
    }

    /// A stanza of an account of another domain refused by the policy;
    /// `domain` from [`federation_domain`].
    pub fn federation_refused(&self, domain: String) {
        self.federation_refused.get_or_create(&[("domain", domain)]).inc();
    }

    /// A stanza sent to an account of another domain.
    pub fn federation_sent(&self, domain: String) {
        self.federation_sent.get_or_create(&[("domain", domain)]).inc();
    }

    /// The OpenMetrics text exposition format (version 1.0.0).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_count_as_undefined_or_other() {
        assert_eq!(Condition::VALUES[Condition::named("conflict").index()], "conflict");
        assert_eq!(Condition::VALUES[Condition::named("<script>").index()], "undefined-condition");
        assert_eq!(Operation::VALUES[Operation::named("claim").index()], "claim");
        assert_eq!(Operation::VALUES[Operation::named("configure").index()], "other");
    }

    #[test]
    fn histograms_are_cumulative_and_in_seconds() {
        let m = Metrics::new();
        m.write_batch(3, Duration::from_micros(200));
        m.write_batch(1, Duration::from_secs(10));
        m.request(Operation::named("commit"), Duration::from_millis(3));
        let text = m.render();
        for line in [
            "xmpp_mls_store_write_batch_size_bucket{le=\"2.0\"} 1",
            "xmpp_mls_store_write_batch_size_bucket{le=\"4.0\"} 2",
            "xmpp_mls_store_write_batch_size_sum 4.0",
            "xmpp_mls_store_write_batch_seconds_bucket{le=\"0.0001\"} 0",
            "xmpp_mls_store_write_batch_seconds_bucket{le=\"0.00025\"} 1",
            "xmpp_mls_store_write_batch_seconds_bucket{le=\"5.0\"} 1",
            "xmpp_mls_store_write_batch_seconds_bucket{le=\"+Inf\"} 2",
            "xmpp_mls_store_write_batch_seconds_count 2",
            "xmpp_mls_request_seconds_bucket{le=\"0.0025\",operation=\"commit\"} 0",
            "xmpp_mls_request_seconds_bucket{le=\"0.005\",operation=\"commit\"} 1",
            "xmpp_mls_request_seconds_count{operation=\"claim\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn every_label_value_is_rendered_from_the_start() {
        let m = Metrics::new();
        m.stanza_errors.inc(Condition::named("item-not-found"));
        m.stanzas_received.inc(StanzaKind::of("presence"));
        m.stanzas_received.inc(StanzaKind::of("presence"));
        m.rate_limited.inc(Limit::Claim);
        m.federation_refused(federation_domain(["Evil.test".to_owned()].iter(), "evil.TEST"));
        m.set_store_gauges(&StoreGauges { archive_messages: 7, low_key_package_devices: 1 });
        let text = m.render();
        for sample in [
            "xmpp_mls_stanza_errors_total{condition=\"item-not-found\"} 1",
            "xmpp_mls_stanza_errors_total{condition=\"conflict\"} 0",
            "xmpp_mls_stanzas_received_total{kind=\"presence\"} 2",
            "xmpp_mls_rate_limited_total{limit=\"claim\"} 1",
            "xmpp_mls_rate_limited_total{limit=\"account\"} 0",
            "xmpp_mls_federation_refused_total{domain=\"evil.test\"} 1",
            "xmpp_mls_archive_messages 7",
            concat!("xmpp_mls_build_info{version=\"", env!("CARGO_PKG_VERSION"), "\"} 1"),
        ] {
            assert!(text.lines().any(|l| l == sample), "{sample} missing from\n{text}");
        }
        assert_eq!(federation_domain(std::iter::empty(), "b.test"), "other");
        assert!(text.ends_with("# EOF\n"));
    }
}
