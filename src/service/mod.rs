//! The services behind the component's addresses. Each feature lives in
//! its own module; the router calls [`Service::handle_iq`] and maps
//! [`ServiceError`] to a stanza error.

mod archive;
mod cache;
mod devices;
mod disco;
mod feed;
mod groups;
mod keypackages;
mod parts;
mod pubsub;
mod sender;
mod vault;

pub use crate::store::order::Order;
pub use sender::{external_sender_bytes, new_key, Issued};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openmls_rust_crypto::RustCrypto;

use minidom::rxml::Namespace;
use minidom::Element;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::ns;

use crate::config::Config;
use crate::metrics::{federation_domain, metrics, Limit};
use crate::protocol::address::Address;
use crate::protocol::error::AppCondition;
use crate::protocol::keypackages::Rejection;
use crate::protocol::mam::NS_MAM;
use crate::protocol::pubsub::NS_PUBSUB;
use crate::protocol::{disco::PING, n, ProtocolError, NS};
use crate::store::{ArchiveBudget, Departed, Expired, Rate, Store, StoreError, Tokens};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IqKind {
    Get,
    Set,
}

/// An IQ get/set as the XMPP server delivered it: `from` is the
/// server-authenticated sender.
pub struct IqRequest {
    /// The IQ's id; fan-out copies of a handshake keep it.
    pub id: String,
    pub from: Jid,
    pub to: Jid,
    /// What `to` names, classified by the router.
    pub address: Address,
    pub kind: IqKind,
    pub payload: Element,
}

/// What a handled request produces: the IQ result's payload, then the
/// copies of a group message, then messages to push (event notifications,
/// notices, Welcomes).
#[derive(Debug, Default)]
pub struct Response {
    pub payload: Option<Element>,
    pub copies: Option<Copies>,
    pub messages: Vec<Element>,
    /// (group_id, archive position): the messages must go out after those
    /// of every earlier position of the group ([`Order`]).
    pub order: Option<(Vec<u8>, u64)>,
    /// Send the messages before the IQ result (MAM results precede `<fin/>`).
    pub reply_last: bool,
    /// Then these, each in its group's archive order: the service's own
    /// proposals that the request caused.
    pub issued: Vec<Issued>,
}

impl Response {
    fn result(payload: Element) -> Self {
        Response { payload: Some(payload), ..Default::default() }
    }

    fn messages(messages: Vec<Element>) -> Self {
        Response { messages, ..Default::default() }
    }
}

/// Copies of one stanza that differ only in their 'to' (a group message to
/// every device on the feed): held once, measured once, and made one at a
/// time as they go out, so a fan-out costs one payload in memory, not one
/// a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Copies {
    /// The stanza, its 'to' empty.
    stanza: Element,
    to: Vec<String>,
}

impl Copies {
    pub fn new(mut stanza: Element, to: Vec<String>) -> Self {
        stanza.set_attr(Namespace::NONE, n("to"), "");
        Copies { stanza, to }
    }

    pub fn len(&self) -> usize {
        self.to.len()
    }

    pub fn is_empty(&self) -> bool {
        self.to.is_empty()
    }

    /// The addresses, in the order the copies go out.
    pub fn to(&self) -> &[String] {
        &self.to
    }

    /// The copy to `to`.
    pub fn copy_to(&self, to: &str) -> Element {
        Copies::copy(&self.stanza, to)
    }

    /// Every copy, each made when it is taken.
    pub fn stanzas(&self) -> impl Iterator<Item = Element> + '_ {
        self.to.iter().map(|to| self.copy_to(to))
    }

    /// [`Self::stanzas`], owned.
    pub fn into_stanzas(self) -> impl Iterator<Item = Element> + Send {
        let Copies { stanza, to } = self;
        to.into_iter().map(move |to| Copies::copy(&stanza, to))
    }

    fn copy(stanza: &Element, to: impl minidom::IntoAttributeValue) -> Element {
        let mut copy = stanza.clone();
        copy.set_attr(Namespace::NONE, n("to"), to);
        copy
    }

    /// The serialised size of each copy (in order), the stanza serialised once.
    pub fn sizes(&self) -> impl Iterator<Item = usize> + '_ {
        let base = serialized_size(&self.stanza);
        let empty = serialized_size(&Element::builder("a", "").attr(n("b"), "").build());
        self.to.iter().map(move |to| base + serialized_size(&Element::builder("a", "").attr(n("b"), to.as_str()).build()) - empty)
    }

    /// Keeps the copies whose size `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let keeps: Vec<bool> = self.sizes().map(&mut keep).collect();
        let mut keeps = keeps.into_iter();
        self.to.retain(|_| keeps.next().unwrap_or(false));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("no such group")]
    UnknownGroup,
    #[error("no such item or node")]
    NotFound,
    #[error("only the account itself may do this")]
    Forbidden,
    #[error("payload larger than limits.max_payload_size")]
    PayloadTooBig,
    #[error("answer larger than limits.max_stanza_out")]
    ReplyTooBig,
    #[error("a configured limit was reached: {}", .0.name())]
    Limit(AppCondition),
    #[error("another device of the account has this signature key")]
    KeyInUse,
    #[error("KeyPackages refused: {0:?}")]
    InvalidKeyPackages(Vec<(usize, Rejection)>),
    #[error("rate limited for {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("the subscription JID is not the requester's")]
    InvalidJid,
    #[error("not subscribed")]
    NotSubscribed,
    #[error("the vault item is at version {current}")]
    VersionMismatch { current: u64 },
    #[error("the archive was pruned past this point")]
    HistoryPruned,
    #[error("no ratchet tree of this epoch is kept, or it has no such page")]
    TreeUnavailable,
    #[error("the account has not uploaded all of the Commit the bundle names")]
    PartsMissing,
    #[error("the part does not begin where the upload ends")]
    PartOutOfOrder,
    #[error("pubsub feature not implemented: {0}")]
    PubsubUnsupported(&'static str),
    #[error("invalid MLS message: {}", .0.reason())]
    InvalidMessage(crate::protocol::mls::Invalid),
    #[error("wrong epoch; the group is at {}", .0.epoch)]
    WrongEpoch(crate::protocol::groups::WrongEpoch),
    #[error("the group exists already")]
    GroupExists,
    #[error("not a member of the group")]
    NotAMember,
    #[error("not acceptable: {}", .0.name())]
    Refused(AppCondition),
    #[error("the sender has not joined the group's feed")]
    NotJoined,
    #[error("the message's epoch is outside the window; the group is at {current}")]
    StaleEpoch { current: u64 },
    #[error("request not supported by this entity")]
    Unsupported,
    #[error("the requester's domain may not use this service")]
    DomainNotAllowed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Service {
    config: Arc<Config>,
    store: Store,
    crypto: Arc<RustCrypto>,
    /// Delivery order of group messages (the store's positions).
    pub order: Arc<Order>,
    /// Groups' PublicGroups between handshakes.
    states: cache::GroupCache,
    /// This process's name as the holder of the maintenance turn.
    instance: String,
    /// Whether this process had the maintenance turn at its last pass.
    maintaining: AtomicBool,
}

/// The job whose turn [`Service::maintain`] takes (store::turns).
const MAINTENANCE: &str = "maintenance";

/// Runs CPU work (MLS validation) on a blocking thread, off the async
/// workers and off the store's writer.
pub(super) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, ServiceError> + Send + 'static,
) -> Result<R, ServiceError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ServiceError::Store(StoreError::Panicked(e.to_string())))?
}

impl Service {
    /// The service on `store`; its name as a holder of the maintenance
    /// turn is new for each process (pid and a random number, for the log).
    pub fn new(config: Arc<Config>, store: Store) -> Self {
        let states = cache::GroupCache::new(config.groups.cached_groups);
        let instance = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        Self {
            config,
            order: store.order().clone(),
            store,
            crypto: Arc::default(),
            states,
            instance,
            maintaining: AtomicBool::new(false),
        }
    }

    /// Admission, checked by the router before any work for every stanza
    /// that may be answered: the federation policy and per-domain rate for
    /// accounts of other domains, then the per-account rate.
    pub async fn admit(&self, from: &Jid) -> Result<(), ServiceError> {
        let domain = from.domain().as_str();
        if let Some(label) = self.other_domain(domain) {
            if !self.config.federation.admits(domain) {
                metrics().federation_refused(label);
                return Err(ServiceError::DomainNotAllowed);
            }
            self.charge(Limit::Domain, domain.to_ascii_lowercase(), 1).await?;
        }
        // One token is never more than a burst (at least one).
        self.charge(Limit::Account, from.to_bare().to_string(), 1).await.map(drop)
    }

    /// Takes `n` tokens from `key`'s bucket of `limit`, shared by every
    /// instance on the store, or refuses with the wait; `Ok(false)`: `n`
    /// is more than the whole burst, which can never pass.
    async fn charge(&self, limit: Limit, key: String, n: u32) -> Result<bool, ServiceError> {
        match self.store.take_tokens(limit, key, n, self.rate(limit)).await? {
            Tokens::Taken => Ok(true),
            Tokens::OverBurst => Ok(false),
            Tokens::Wait(wait) => {
                metrics().rate_limited.inc(limit);
                Err(ServiceError::RateLimited { retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0) })
            }
        }
    }

    /// The bucket of `limit`, from the configuration.
    fn rate(&self, limit: Limit) -> Rate {
        let (d, l, f) = (&self.config.directory, &self.config.limits, &self.config.federation);
        match limit {
            Limit::Account => per_second(l.account_rate, l.account_burst),
            Limit::Domain => per_second(f.domain_rate, f.domain_burst),
            Limit::Claim => refilled(d.claim_refill_secs, d.claim_burst),
            Limit::KeyPackageVerification => refilled(d.key_package_refill_secs, d.key_package_burst),
        }
    }

    /// The metrics label of `domain` if it is not the home domain
    /// ([`crate::metrics::federation_domain`]).
    pub fn other_domain(&self, domain: &str) -> Option<String> {
        let f = &self.config.federation;
        let listed = || f.allow_domains.iter().chain(&f.deny_domains);
        (!domain.eq_ignore_ascii_case(self.config.home_domain())).then(|| federation_domain(listed(), domain))
    }

    /// limits.max_stanza_out: no stanza the component sends is larger.
    pub fn max_stanza_out(&self) -> usize {
        self.config.limits.max_stanza_out
    }

    /// Periodic housekeeping, by one instance of those on the store at a
    /// time (the maintenance turn): forget full rate buckets, drop expired
    /// devices and KeyPackages, propose the removal of leaves whose device
    /// left its account's list; returns the retract events of expired
    /// devices and the unavailable presences of the devices that this took
    /// off feeds, then the service's proposals. Every instance refreshes
    /// its gauges.
    pub async fn maintain(&self) -> Result<(Vec<Element>, Vec<Issued>), StoreError> {
        let now = crate::protocol::now();
        if !self.maintenance_turn(now).await? {
            self.refresh_gauges().await?;
            return Ok(Default::default());
        }
        self.store.prune_rates().await?;
        let (pruned, expired, departed) = retention(&self.store, &self.config, now).await?;
        if pruned > 0 {
            tracing::info!(pruned, "history retention");
        }
        // The departures go out even if the gauges cannot be read.
        if let Err(e) = self.refresh_gauges().await {
            tracing::warn!(error = %e, "cannot read the store's gauges");
        }
        let mut messages = self.expiry_events(&expired).await?;
        messages.extend(self.departures(&departed));
        let stale = self.store.groups_with_stale_leaves(None, now).await?;
        Ok((messages, self.issue_removals(stale).await))
    }

    /// Takes or renews the maintenance turn for two intervals: the holder
    /// renews it every interval; if it dies, another instance takes over
    /// within two.
    async fn maintenance_turn(&self, now: i64) -> Result<bool, StoreError> {
        let until = now.saturating_add(2 * self.config.history.maintenance_secs as i64);
        let held = self.store.take_turn(MAINTENANCE, self.instance.clone(), now, until).await?;
        if held != self.maintaining.swap(held, Ordering::Relaxed) {
            let what = if held { "took the maintenance turn" } else { "another instance has the maintenance turn" };
            tracing::info!(instance = %self.instance, "{what}");
        }
        Ok(held)
    }

    /// Gives the maintenance turn up, at shutdown, so that another instance
    /// takes it at its next pass.
    pub async fn stop_maintaining(&self) -> Result<(), StoreError> {
        self.store.give_up_turn(MAINTENANCE, self.instance.clone()).await
    }

    /// Sets the metrics' gauges of what the store holds. Called at start
    /// and by `maintain`, never by a scrape: the figures change with time
    /// (expiry) and with other processes (`xmpp-mls admin`), so only a
    /// query gets them right, and once per maintenance interval bounds its
    /// cost whoever scrapes how often.
    pub async fn refresh_gauges(&self) -> Result<(), StoreError> {
        let gauges = self.store.gauges(self.config.directory.low_water, crate::protocol::now()).await?;
        metrics().set_store_gauges(&gauges);
        Ok(())
    }

    /// Answers one IQ get/set: `Ok(None)` is an empty result. The checks run
    /// in the order xep/ §Order of Checks fixes (the router did the first).
    pub async fn handle_iq(&self, req: &IqRequest) -> Result<Response, ServiceError> {
        let p = &req.payload;
        self.check_size(p)?;
        if req.to.resource().is_some() {
            return Err(ServiceError::Unsupported);
        }
        let address = &req.address;
        match (req.kind, p.name(), p.ns().as_str()) {
            (IqKind::Get, "query", ns::DISCO_INFO) => self.disco_info(address, p).await.map(Response::result),
            (IqKind::Get, "query", ns::DISCO_ITEMS) => self.disco_items(address, p).await.map(Response::result),
            (IqKind::Get, "ping", PING) if *address == Address::Service => Ok(Response::default()),
            (_, "pubsub", NS_PUBSUB) => match address {
                Address::Directory(account) => self.pubsub(req, account).await,
                _ => Err(ServiceError::Unsupported),
            },
            (IqKind::Set, "claim", NS) => match address {
                Address::Directory(account) => self.claim(req, account).await,
                _ => Err(ServiceError::Unsupported),
            },
            (IqKind::Set, "query", NS_MAM) => self.mam_query(req).await,
            (IqKind::Get, "query", NS_MAM) => self.mam_form(req).await,
            (IqKind::Get, "metadata", NS_MAM) => self.mam_metadata(req).await,
            (IqKind::Set, "ack", NS) => match address {
                Address::Service => Err(ServiceError::Unsupported),
                _ => self.ack(req).await,
            },
            (_, "vault", NS) => match address {
                Address::Directory(account) => self.vault(req, account).await,
                _ => Err(ServiceError::Unsupported),
            },
            (kind, name @ ("create" | "commit" | "proposal" | "group-info" | "tree" | "part" | "leave"), NS) => {
                let Address::Group(group_id) = address else { return Err(ServiceError::Unsupported) };
                match (kind, name) {
                    (IqKind::Set, "create") => self.create_group(req, group_id).await,
                    (IqKind::Set, "commit") => self.commit(req, group_id).await,
                    (IqKind::Set, "proposal") => self.propose(req, group_id).await,
                    (IqKind::Get, "group-info") => self.group_info(req, group_id).await,
                    (IqKind::Get, "tree") => self.tree(req, group_id).await,
                    (IqKind::Set, "part") => self.upload_part(req, group_id).await,
                    (IqKind::Get, "part") => self.part(req, group_id).await,
                    (IqKind::Set, "leave") => self.leave_group(req, group_id).await,
                    _ => Err(ProtocolError::Malformed("wrong IQ type for this request").into()),
                }
            }
            // Our namespace, but no element we define: it does not parse.
            (_, _, NS) => Err(ProtocolError::Malformed("unknown element in urn:xmpp:mls:0").into()),
            _ => Err(ServiceError::Unsupported),
        }
    }
}

impl Service {
    fn archive_budget(&self) -> ArchiveBudget {
        let h = &self.config.history;
        ArchiveBudget {
            group_bytes_per_day: h.group_archive_bytes_per_day,
            account_bytes_per_day: h.account_archive_bytes_per_day,
        }
    }

    /// limits.max_payload_size, checked before a payload is parsed.
    fn check_size(&self, payload: &Element) -> Result<(), ServiceError> {
        match serialized_size(payload) > self.config.limits.max_payload_size {
            true => Err(ServiceError::PayloadTooBig),
            false => Ok(()),
        }
    }
}

/// `burst` in a row (at least one), then one more every `refill_secs`
/// seconds (at least one).
fn refilled(refill_secs: u64, burst: u32) -> Rate {
    Rate { period: Duration::from_secs(refill_secs.max(1)), burst: burst.max(1) }
}

/// `burst` in a row (at least one), then `rate` a second (at least one).
fn per_second(rate: u32, burst: u32) -> Rate {
    Rate { period: Duration::from_secs(1) / rate.max(1), burst: burst.max(1) }
}

/// Retention as of `now`: drops expired devices and KeyPackages (and takes
/// devices without a live leaf off the feeds), forgets archive budgets of
/// past days and acceptances past the resend window, prunes inboxes
/// (xep/ §Inbox Retention) and archives past history.retention_secs;
/// returns how many archived items went, the expired devices and the
/// devices taken off feeds.
pub async fn retention(store: &Store, config: &Config, now: i64) -> Result<(usize, Vec<Expired>, Vec<Departed>), StoreError> {
    let (expired, departed) = store.prune_directory(now).await?;
    store.prune_archive_budgets(now).await?;
    store.prune_acceptances(now).await?;
    let cutoff = now - config.history.retention_secs as i64;
    store.prune_inboxes(now, cutoff).await?;
    Ok((store.prune_history(cutoff).await?, expired, departed))
}

/// Bytes of `el` as XML, counted without building the string.
pub(crate) fn serialized_size(el: &Element) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail.
    let _ = el.write_to(&mut count);
    count.0
}
