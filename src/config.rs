//! Configuration: a TOML file, every key overridable by an environment
//! variable `XMPP_MLS_<SECTION>_<KEY>` (e.g. `XMPP_MLS_COMPONENT_JID`).
//!
//! Errors name the key and the problem in one line; the CLI exits 2 on them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xmpp_parsers::jid::BareJid;

pub const ENV_PREFIX: &str = "XMPP_MLS_";
/// Every key with its default and a comment: the one source of the keys'
/// documentation (`xmpp-mls config defaults` prints it; tests check it
/// against [`keys`] and the README).
pub const ANNOTATED_DEFAULTS: &str = include_str!("../examples/xmpp-mls.toml");
/// Keys whose values `xmpp-mls config check` never prints.
pub const SECRET_KEYS: &[&str] = &["component.secret"];
const MASKED: &str = "(masked)";
/// Cipher suites whose signature scheme is Ed25519 (the device-list scheme)
/// and that the crypto backend implements.
pub const SUPPORTED_CIPHER_SUITES: &[u16] = &[1, 3];
/// MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, which every service accepts (RFC 9420 §17.1, xep/).
pub const MANDATORY_CIPHER_SUITE: u16 = 1;
/// What a stanza may add around the largest payload it carries: addresses
/// (a full JID is at most 3071 bytes before escaping), the echoed id (at
/// most 1024 bytes, see the router), and the MAM wrapping of an archived
/// stanza.
pub const STANZA_OVERHEAD: usize = 16 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub component: ComponentConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub directory: DirectoryConfig,
    #[serde(default)]
    pub groups: GroupsConfig,
    #[serde(default)]
    pub history: HistoryConfig,
    #[serde(default)]
    pub vault: VaultConfig,
    #[serde(default)]
    pub federation: FederationConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// How to reach the XMPP server's component port (XEP-0114).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    /// The component's domain, e.g. `mls.example.org`.
    pub jid: String,
    /// The shared secret of the server's component listener.
    pub secret: String,
    /// `host:port` of the server's component listener.
    #[serde(default = "default_server")]
    pub server: String,
    /// Where keepalive pings go; empty means the parent domain of `jid`.
    #[serde(default)]
    pub ping_to: String,
    /// Silence after which a keepalive ping is sent.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u64,
    /// Silence after a ping after which the stream is declared dead.
    #[serde(default = "default_response_timeout")]
    pub response_timeout_secs: u64,
    /// Cap of the exponential reconnect backoff.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite database file (created if missing); unused with `url`.
    pub path: PathBuf,
    /// A PostgreSQL connection string (`postgres://user@host/db` or
    /// `host=… dbname=…`): the store is that database instead of SQLite.
    pub url: String,
    /// Most PostgreSQL connections open at once (requests beyond wait).
    pub connections: usize,
    /// `full` fsyncs every batch (survives power loss); `normal` survives
    /// process crashes only.
    pub synchronous: Synchronous,
    /// Most write requests committed in one transaction.
    pub batch_max: usize,
    /// Read connections kept open beside the writer.
    pub readers: usize,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Full,
    Normal,
}

/// Limits advertised in disco (XEP-0128) and enforced by the router.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest IQ payload accepted, in bytes of serialised XML.
    pub max_payload_size: usize,
    /// Stanzas handled concurrently; further input waits (TCP backpressure).
    pub max_in_flight: usize,
    /// Largest page of a MAM query or a vault listing.
    pub max_page_size: usize,
    /// Largest stanza the component sends, in bytes of serialised XML: keep
    /// it below the server's limit for component streams.
    pub max_stanza_out: usize,
    /// Stanzas per second one account (bare JID) may send, sustained...
    pub account_rate: u32,
    /// ...after a burst of this many.
    pub account_burst: u32,
}

/// Device lists and KeyPackages (advertised in disco where clients need them).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectoryConfig {
    pub max_devices_per_account: usize,
    /// A device's `expires` is capped at this many days from publication.
    pub max_device_lifetime_days: u64,
    /// Ordinary KeyPackages stored per device (plus one last-resort).
    pub max_key_packages_per_device: usize,
    /// Longest KeyPackage lifetime (not_after - not_before) accepted.
    pub max_key_package_lifetime_days: u64,
    /// Largest KeyPackage accepted, in bytes of its MLSMessage.
    pub max_key_package_size: usize,
    /// Tolerance for clocks that disagree, in lifetime checks.
    pub clock_skew_secs: u64,
    /// RFC 9420 cipher suite code points accepted (1 and 3: X25519 + Ed25519).
    pub cipher_suites: Vec<u16>,
    /// The owner is warned when a device's pool falls to this many.
    pub low_water: u32,
    /// KeyPackages one claimer may claim of one account in a burst...
    pub claim_burst: u32,
    /// ...and then one more every this many seconds.
    pub claim_refill_secs: u64,
    /// Accounts subscribed to one device list (each with at most
    /// max_devices_per_account subscribed JIDs).
    pub max_subscribers: usize,
    /// KeyPackages whose signatures one account may have verified in a
    /// burst (at least max_key_packages_per_device + 1: one full upload)...
    pub key_package_burst: u32,
    /// ...and then one more every this many seconds.
    pub key_package_refill_secs: u64,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            max_devices_per_account: 16,
            max_device_lifetime_days: 365,
            max_key_packages_per_device: 100,
            max_key_package_lifetime_days: 90,
            max_key_package_size: 16 * 1024,
            clock_skew_secs: 300,
            cipher_suites: vec![1, 3],
            low_water: 10,
            claim_burst: 32,
            claim_refill_secs: 10,
            max_subscribers: 256,
            key_package_burst: 200,
            key_package_refill_secs: 1,
        }
    }
}

/// Groups at the Delivery Service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    /// Application messages of this many epochs before the current one are
    /// still accepted (they were in flight during a commit).
    pub past_epochs: u64,
    /// Leaves one group may have.
    pub max_members: usize,
    /// Octets of the largest Commit accepted; one larger than a stanza is
    /// uploaded in parts (xep/ §Commits in Parts).
    pub max_commit_size: usize,
    /// Groups one account may have joined itself (created, or joined the
    /// live feed of); groups it was only added to do not count.
    pub max_groups_per_account: usize,
    /// Seconds a Remove proposal of the service may stay pending: a commit
    /// in the group after that must carry it (xep/ §Service Removals).
    pub proposal_grace_secs: u64,
    /// Groups whose validated state is kept in memory between handshakes
    /// (least recently used out; 0: none).
    pub cached_groups: usize,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            past_epochs: 3,
            max_members: 10_000,
            max_commit_size: 4 << 20,
            max_groups_per_account: 512,
            proposal_grace_secs: 60,
            cached_groups: 256,
        }
    }
}

/// Archives: retention and housekeeping.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Application messages older than this are pruned; handshakes too,
    /// once every member device has acknowledged past them.
    pub retention_secs: u64,
    /// How often housekeeping (retention, expiry) runs.
    pub maintenance_secs: u64,
    /// Octets of MLS messages one group's archive may take in per UTC day.
    pub group_archive_bytes_per_day: u64,
    /// Octets of MLS messages one account may add to archives per UTC day.
    pub account_archive_bytes_per_day: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            retention_secs: 30 * 24 * 3600,
            maintenance_secs: 60,
            group_archive_bytes_per_day: 64 * 1024 * 1024,
            account_archive_bytes_per_day: 16 * 1024 * 1024,
        }
    }
}

/// The vault: client-encrypted blobs per account (advertised in disco).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultConfig {
    /// Largest blob; keep it below limits.max_payload_size.
    pub max_blob_size: usize,
    /// Bytes one account may keep.
    pub quota_bytes: usize,
    /// Blobs one account may keep.
    pub max_blobs: usize,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self { max_blob_size: 160 * 1024, quota_bytes: 64 * 1024 * 1024, max_blobs: 4096 }
    }
}

/// Accounts of other domains than the component's own (federation).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    /// If not empty, the only other domains whose accounts may use the service.
    pub allow_domains: Vec<String>,
    /// Other domains whose accounts may not use the service.
    pub deny_domains: Vec<String>,
    /// Stanzas per second all accounts of one other domain may send...
    pub domain_rate: u32,
    /// ...after a burst of this many.
    pub domain_burst: u32,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self { allow_domains: Vec::new(), deny_domains: Vec::new(), domain_rate: 500, domain_burst: 2000 }
    }
}

impl FederationConfig {
    /// Whether accounts of `domain`, which is not the home domain, may use the service.
    pub fn admits(&self, domain: &str) -> bool {
        let listed = |list: &[String]| list.iter().any(|d| d.eq_ignore_ascii_case(domain));
        !listed(&self.deny_domains) && (self.allow_domains.is_empty() || listed(&self.allow_domains))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `xmpp_mls=debug`.
    pub level: String,
    /// Whether each line names the source file and line that wrote it.
    pub source_location: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The HTTP endpoint for Prometheus (`/metrics`) and health checks (`/health`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `ip:port` to listen on; empty (the default) turns the endpoint off.
    pub listen: String,
}

fn default_server() -> String {
    "127.0.0.1:5347".into()
}
fn default_keepalive() -> u64 {
    60
}
fn default_response_timeout() -> u64 {
    20
}
fn default_reconnect_max() -> u64 {
    30
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: "xmpp-mls.sqlite3".into(),
            url: String::new(),
            connections: 16,
            synchronous: Synchronous::Full,
            batch_max: 256,
            readers: 4,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        // max_payload_size: 16 KiB below Prosody's default c2s stanza limit
        // (262144), so the sender gets a stanza error rather than a closed
        // stream. max_stanza_out: 64 KiB below Prosody's component and s2s
        // limits (524288); ejabberd_service has none by default.
        Self {
            max_payload_size: 240 * 1024,
            max_in_flight: 256,
            max_page_size: 100,
            max_stanza_out: 448 * 1024,
            account_rate: 50,
            account_burst: 200,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into(), source_location: false }
    }
}

/// A configuration problem: which key, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("config error: {key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

fn err(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), problem: problem.into() }
}

impl Config {
    /// Reads `path`, applies environment overrides and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(path.display().to_string(), e.to_string()))?;
        Self::from_toml(&text, std::env::vars())
    }

    /// Parses `text` with the overrides found in `env` (name, value) pairs.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map(|s| text[..s.start].lines().count().max(1));
            err(format!("line {}", line.unwrap_or(0)), e.message().to_owned())
        })?;
        apply_env(&mut table, env)?;
        let config = deserialize(table)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.component;
        let jid = BareJid::new(&c.jid).map_err(|e| err("component.jid", e.to_string()))?;
        if jid.node().is_some() {
            return Err(err("component.jid", "must be a domain, without '@'"));
        }
        if c.secret.is_empty() {
            return Err(err("component.secret", "must not be empty"));
        }
        if c.server.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(err("component.server", "expected host:port"));
        }
        if !c.ping_to.is_empty() {
            BareJid::new(&c.ping_to).map_err(|e| err("component.ping_to", e.to_string()))?;
        }
        for (key, v) in [
            ("component.keepalive_secs", c.keepalive_secs),
            ("component.response_timeout_secs", c.response_timeout_secs),
            ("component.reconnect_max_secs", c.reconnect_max_secs),
            ("store.batch_max", self.store.batch_max as u64),
            ("store.readers", self.store.readers as u64),
            ("store.connections", self.store.connections as u64),
            ("limits.max_payload_size", self.limits.max_payload_size as u64),
            ("limits.max_in_flight", self.limits.max_in_flight as u64),
            ("limits.max_page_size", self.limits.max_page_size as u64),
            ("limits.max_stanza_out", self.limits.max_stanza_out as u64),
            ("limits.account_rate", u64::from(self.limits.account_rate)),
            ("limits.account_burst", u64::from(self.limits.account_burst)),
            ("groups.max_members", self.groups.max_members as u64),
            ("groups.max_commit_size", self.groups.max_commit_size as u64),
            ("groups.max_groups_per_account", self.groups.max_groups_per_account as u64),
            ("federation.domain_rate", u64::from(self.federation.domain_rate)),
            ("federation.domain_burst", u64::from(self.federation.domain_burst)),
            ("directory.max_devices_per_account", self.directory.max_devices_per_account as u64),
            ("directory.max_device_lifetime_days", self.directory.max_device_lifetime_days),
            ("directory.max_key_packages_per_device", self.directory.max_key_packages_per_device as u64),
            ("directory.max_key_package_lifetime_days", self.directory.max_key_package_lifetime_days),
            ("directory.max_key_package_size", self.directory.max_key_package_size as u64),
            ("directory.claim_burst", self.directory.claim_burst as u64),
            ("directory.claim_refill_secs", self.directory.claim_refill_secs),
            ("directory.max_subscribers", self.directory.max_subscribers as u64),
            ("directory.key_package_refill_secs", self.directory.key_package_refill_secs),
            ("history.retention_secs", self.history.retention_secs),
            ("history.maintenance_secs", self.history.maintenance_secs),
            ("history.group_archive_bytes_per_day", self.history.group_archive_bytes_per_day),
            ("history.account_archive_bytes_per_day", self.history.account_archive_bytes_per_day),
            ("vault.max_blob_size", self.vault.max_blob_size as u64),
            ("vault.quota_bytes", self.vault.quota_bytes as u64),
            ("vault.max_blobs", self.vault.max_blobs as u64),
        ] {
            if v == 0 {
                return Err(err(key, "must be greater than 0"));
            }
        }
        if (self.directory.key_package_burst as usize) <= self.directory.max_key_packages_per_device {
            return Err(err("directory.key_package_burst", "must be greater than directory.max_key_packages_per_device"));
        }
        if !self.directory.cipher_suites.contains(&MANDATORY_CIPHER_SUITE) {
            return Err(err("directory.cipher_suites", "must list 1, the mandatory-to-implement cipher suite (RFC 9420)"));
        }
        if let Some(cs) = self.directory.cipher_suites.iter().find(|cs| !SUPPORTED_CIPHER_SUITES.contains(cs)) {
            return Err(err("directory.cipher_suites", format!("{cs} is not supported (supported: 1, 3)")));
        }
        if (self.directory.claim_burst as usize) < self.directory.max_devices_per_account {
            return Err(err("directory.claim_burst", "must be at least directory.max_devices_per_account"));
        }
        self.check_largest_answers()?;
        self.log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .map_err(|e| err("log.level", e.to_string()))?;
        self.metrics_addr()?;
        Ok(())
    }

    /// The largest answer to any legal request must fit in one stanza of
    /// limits.max_stanza_out bytes (xep/ §Stanza Size Limits).
    fn check_largest_answers(&self) -> Result<(), ConfigError> {
        use crate::protocol::{devices, keypackages, vault};
        let (l, d) = (&self.limits, &self.directory);
        let b64 = |n: usize| n.div_ceil(3).saturating_mul(4);
        let pools = d.max_devices_per_account.saturating_mul(d.max_key_packages_per_device.saturating_add(1));
        let answers = [
            ("limits.max_payload_size (a pushed group message, a tree page, a part)", l.max_payload_size),
            ("vault.max_blob_size (a vault read)", b64(self.vault.max_blob_size)),
            (
                "directory.max_devices_per_account x directory.max_key_package_size (a claim)",
                d.max_devices_per_account
                    .saturating_mul(b64(d.max_key_package_size).saturating_add(keypackages::MAX_CLAIMED_OVERHEAD)),
            ),
            (
                "directory.max_devices_per_account x directory.max_key_packages_per_device (the owner's pool listing)",
                pools.saturating_mul(keypackages::MAX_INFO_ITEM),
            ),
            ("directory.max_devices_per_account (a device list)", d.max_devices_per_account.saturating_mul(devices::MAX_ITEM)),
            ("limits.max_page_size (a vault listing)", l.max_page_size.saturating_mul(vault::MAX_LIST_ITEM)),
        ];
        match answers.into_iter().find(|(_, bytes)| bytes.saturating_add(STANZA_OVERHEAD) > l.max_stanza_out) {
            Some((what, bytes)) => Err(err(
                "limits.max_stanza_out",
                format!("{} bytes cannot carry the largest answer allowed by {what}: {bytes} bytes plus {STANZA_OVERHEAD} of stanza", l.max_stanza_out),
            )),
            None => Ok(()),
        }
    }

    /// The keepalive ping target: the configured one or the home domain.
    pub fn ping_target(&self) -> String {
        match self.component.ping_to.is_empty() {
            true => self.home_domain().to_owned(),
            false => self.component.ping_to.clone(),
        }
    }

    /// The domain of the server the component is attached to: the parent
    /// of the component's JID. Every other domain is federated.
    pub fn home_domain(&self) -> &str {
        let jid = &self.component.jid;
        jid.split_once('.').map(|(_, parent)| parent).unwrap_or(jid)
    }

    /// Where the metrics endpoint listens, if it is on.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.metrics.listen.as_str() {
            "" => Ok(None),
            listen => listen.parse().map(Some).map_err(|_| err("metrics.listen", "expected ip:port, or empty for off")),
        }
    }

    /// Resolves `component.server`.
    pub async fn server_addr(&self) -> Result<SocketAddr, ConfigError> {
        let mut addrs = tokio::net::lookup_host(&self.component.server)
            .await
            .map_err(|e| err("component.server", e.to_string()))?;
        addrs.next().ok_or_else(|| err("component.server", "resolves to no address"))
    }
}

fn deserialize(table: toml::Table) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let problem = e.into_inner().to_string();
        let problem = problem.lines().next().unwrap_or_default().to_owned();
        err(if path == "." { "config".into() } else { path }, problem)
    })
}

/// Every key the configuration knows, as `section.key`.
pub fn keys() -> Vec<String> {
    let mut keys = Vec::new();
    for (section, table) in schema() {
        let names = table.as_table().into_iter().flat_map(|t| t.keys());
        keys.extend(names.map(|k| format!("{section}.{k}")));
    }
    keys
}

impl Config {
    /// The configuration in effect as TOML, with [`SECRET_KEYS`] masked.
    pub fn effective_toml(&self) -> String {
        let mut table = toml::Table::try_from(self).expect("the config serialises");
        for key in SECRET_KEYS {
            let (section, name) = key.split_once('.').expect("section.key");
            if let Some(v) = table.get_mut(section).and_then(|t| t.get_mut(name)) {
                *v = toml::Value::String(MASKED.into());
            }
        }
        toml::to_string(&table).expect("a table serialises")
    }
}

/// Every key with its default value, to type environment overrides.
fn schema() -> toml::Table {
    let shape = Config {
        component: ComponentConfig {
            jid: String::new(),
            secret: String::new(),
            server: default_server(),
            ping_to: String::new(),
            keepalive_secs: default_keepalive(),
            response_timeout_secs: default_response_timeout(),
            reconnect_max_secs: default_reconnect_max(),
        },
        store: StoreConfig::default(),
        limits: Limits::default(),
        directory: DirectoryConfig::default(),
        groups: GroupsConfig::default(),
        history: HistoryConfig::default(),
        vault: VaultConfig::default(),
        federation: FederationConfig::default(),
        log: LogConfig::default(),
        metrics: MetricsConfig::default(),
    };
    toml::Table::try_from(&shape).expect("the default config serialises")
}

const SECTIONS: &[&str] = &["component", "store", "limits", "directory", "groups", "history", "vault", "federation", "log", "metrics"];
/// Variables of the CLI that share the prefix but are not config keys.
const CLI_VARIABLES: &[&str] = &["XMPP_MLS_CONFIG", "XMPP_MLS_PASSWORD"];

/// Sets `section.key` from every `XMPP_MLS_SECTION_KEY` variable, typed
/// like the key's default.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let schema = schema();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        if CLI_VARIABLES.contains(&name.as_str()) {
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        let Some((section, key)) = SECTIONS
            .iter()
            .find_map(|s| rest.strip_prefix(s).and_then(|k| k.strip_prefix('_')).map(|k| (*s, k)))
        else {
            return Err(err(name, "unknown configuration variable"));
        };
        let like = schema.get(section).and_then(|t| t.get(key));
        let v = typed_env_value(&name, &value, like)?;
        let t = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| err(section, "must be a table"))?;
        t.insert(key.to_owned(), v);
    }
    Ok(())
}

fn typed_env_value(
    name: &str,
    value: &str,
    like: Option<&toml::Value>,
) -> Result<toml::Value, ConfigError> {
    Ok(match like {
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            value.parse().map_err(|_| err(name, format!("expected an integer, got {value:?}")))?,
        ),
        // Comma-separated: integers (cipher suites) or names (domains).
        Some(toml::Value::Array(_)) => {
            let items: Vec<&str> = value.split(',').map(str::trim).filter(|v| !v.is_empty()).collect();
            match items.iter().map(|v| v.parse().map(toml::Value::Integer)).collect::<Result<_, _>>() {
                Ok(numbers) => toml::Value::Array(numbers),
                Err(_) => toml::Value::Array(items.into_iter().map(|v| toml::Value::String(v.to_owned())).collect()),
            }
        }
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(
            value.parse().map_err(|_| err(name, format!("expected true or false, got {value:?}")))?,
        ),
        _ => toml::Value::String(value.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[component]\njid = \"mls.localhost\"\nsecret = \"s3cret\"\n";

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn the_annotated_example_is_valid_and_states_the_defaults() {
        let example = include_str!("../examples/xmpp-mls.toml");
        let parsed = Config::from_toml(example, no_env()).unwrap();
        let mut expected = schema();
        let mut got = toml::Table::try_from(&parsed).unwrap();
        for t in [&mut expected, &mut got] {
            t["component"].as_table_mut().unwrap().retain(|k, _| k != "jid" && k != "secret");
        }
        assert_eq!(got, expected, "examples/xmpp-mls.toml must show the defaults");
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = Config::from_toml(MINIMAL, no_env()).unwrap();
        assert_eq!(c.component.server, "127.0.0.1:5347");
        assert_eq!(c.store.path, PathBuf::from("xmpp-mls.sqlite3"));
        assert_eq!(c.limits.max_payload_size, 245760);
        assert_eq!(c.ping_target(), "localhost");
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c = Config::from_toml(&format!("{MINIMAL}[store]\npath = \"a.db\"\n"), no_env()).unwrap();
        assert_eq!(c.store.path, PathBuf::from("a.db"));
        assert_eq!(c.store.synchronous, Synchronous::Full);
    }

    #[test]
    fn env_overrides_file() {
        let env = vec![
            ("XMPP_MLS_COMPONENT_JID".into(), "mls.example.org".into()),
            ("XMPP_MLS_LIMITS_MAX_PAYLOAD_SIZE".into(), "1000".into()),
            ("XMPP_MLS_STORE_PATH".into(), "/tmp/x.db".into()),
            ("XMPP_MLS_DIRECTORY_CIPHER_SUITES".into(), "1,3".into()),
            ("PATH".into(), "/bin".into()),
            ("XMPP_MLS_CONFIG".into(), "/etc/xmpp-mls.toml".into()),
        ];
        let c = Config::from_toml(MINIMAL, env).unwrap();
        assert_eq!(c.component.jid, "mls.example.org");
        assert_eq!(c.limits.max_payload_size, 1000);
        assert_eq!(c.store.path, PathBuf::from("/tmp/x.db"));
        assert_eq!(c.directory.cipher_suites, vec![1, 3]);
    }

    #[test]
    fn env_values_are_typed_like_the_key() {
        let env = vec![("XMPP_MLS_COMPONENT_SECRET".into(), "1234".into())];
        assert_eq!(Config::from_toml(MINIMAL, env).unwrap().component.secret, "1234");
        let env = vec![("XMPP_MLS_LIMITS_MAX_IN_FLIGHT".into(), "many".into())];
        let e = Config::from_toml(MINIMAL, env).unwrap_err();
        assert_eq!(e.key, "XMPP_MLS_LIMITS_MAX_IN_FLIGHT");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[component]\nsecret = \"x\"\n", "component"),
            ("[component]\njid = \"a@b\"\nsecret = \"x\"\n", "component.jid"),
            ("[component]\njid = \"mls.localhost\"\nsecret = \"\"\n", "component.secret"),
            ("[component]\njid = \"m\"\nsecret = \"x\"\nserver = \"nope\"\n", "component.server"),
            (&format!("{MINIMAL}[limits]\nmax_payload_size = \"big\"\n"), "limits.max_payload_size"),
            (&format!("{MINIMAL}[limits]\nmax_in_flight = 0\n"), "limits.max_in_flight"),
            (&format!("{MINIMAL}[store]\nsynchronous = \"sometimes\"\n"), "store.synchronous"),
            (&format!("{MINIMAL}[store]\ncolour = 1\n"), "store.colour"),
            ("[component\n", "line 1"),
            (&format!("{MINIMAL}[directory]\ncipher_suites = [2]\n"), "directory.cipher_suites"),
            (&format!("{MINIMAL}[metrics]\nlisten = \"localhost:9464\"\n"), "metrics.listen"),
            (&format!("{MINIMAL}[directory]\nkey_package_burst = 100\n"), "directory.key_package_burst"),
            (&format!("{MINIMAL}[history]\naccount_archive_bytes_per_day = 0\n"), "history.account_archive_bytes_per_day"),
        ];
        for (text, key) in cases {
            let e = Config::from_toml(text, no_env()).unwrap_err();
            assert_eq!(e.key, key, "{text:?} gave {e}");
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn the_mandatory_cipher_suite_is_always_accepted() {
        let e = Config::from_toml(&format!("{MINIMAL}[directory]\ncipher_suites = [3]\n"), no_env()).unwrap_err();
        assert_eq!(e.key, "directory.cipher_suites");
        assert!(e.problem.contains("mandatory"), "{e}");
        let c = Config::from_toml(&format!("{MINIMAL}[directory]\ncipher_suites = [1]\n"), no_env()).unwrap();
        assert_eq!(c.directory.cipher_suites, [1]);
    }

    #[test]
    fn the_largest_answers_must_fit_in_max_stanza_out() {
        let e = Config::from_toml(&format!("{MINIMAL}[limits]\nmax_stanza_out = 200000\n"), no_env()).unwrap_err();
        assert_eq!(e.key, "limits.max_stanza_out");
        assert!(e.problem.contains("limits.max_payload_size"), "{e}");
        let fitted = format!(
            "{MINIMAL}[limits]\nmax_stanza_out = 200000\nmax_payload_size = 100000\n[vault]\nmax_blob_size = 100000\n\
             [directory]\nmax_key_package_size = 8192\nmax_key_packages_per_device = 40\n"
        );
        assert_eq!(Config::from_toml(&fitted, no_env()).unwrap().limits.max_stanza_out, 200000);
        let pools = fitted.replace("max_key_packages_per_device = 40", "max_key_packages_per_device = 50");
        let e = Config::from_toml(&pools, no_env()).unwrap_err();
        assert!(e.problem.contains("pool listing"), "{e}");
        let claims = fitted.replace("max_key_package_size = 8192", "max_key_package_size = 9000");
        assert!(Config::from_toml(&claims, no_env()).unwrap_err().problem.contains("(a claim)"));
    }

    #[test]
    fn a_claim_of_every_device_fits_in_the_claim_burst() {
        let e = Config::from_toml(&format!("{MINIMAL}[directory]\nclaim_burst = 15\n"), no_env()).unwrap_err();
        assert_eq!(e.key, "directory.claim_burst");
        let c = Config::from_toml(&format!("{MINIMAL}[directory]\nclaim_burst = 2\nmax_devices_per_account = 2\n"), no_env());
        assert_eq!(c.unwrap().directory.claim_burst, 2);
    }

    #[test]
    fn unknown_env_variable_is_refused() {
        let env = vec![("XMPP_MLS_COMPONENTS_JID".into(), "x".into())];
        let e = Config::from_toml(MINIMAL, env).unwrap_err();
        assert_eq!(e.key, "XMPP_MLS_COMPONENTS_JID");
    }

    #[test]
    fn domain_lists_come_from_the_environment_and_decide_admission() {
        let env = vec![("XMPP_MLS_FEDERATION_DENY_DOMAINS".into(), "evil.test, Worse.test".into())];
        let c = Config::from_toml(MINIMAL, env).unwrap();
        assert_eq!(c.federation.deny_domains, vec!["evil.test", "Worse.test"]);
        assert_eq!(c.home_domain(), "localhost");
        let admitted: Vec<bool> = ["b.test", "worse.test"].iter().map(|d| c.federation.admits(d)).collect();
        assert_eq!(admitted, [true, false]);
        let only = FederationConfig { allow_domains: vec!["b.test".into()], ..FederationConfig::default() };
        assert_eq!((only.admits("b.test"), only.admits("c.test")), (true, false));
    }
}
