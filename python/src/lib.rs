//! The extension module `xmpp_mls._core`: the sans-IO client core
//! ([`xmpp_mls::client::Machine`]) for a host that owns the XMPP stream.
//! Stanzas cross as XML strings, times as `time.monotonic()` seconds,
//! events and results as Python dicts, lists and strings, and failures as
//! the exceptions below. No network code: the host sends and receives.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use minidom::Element;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use xmpp_mls::client::{describe, ClientError, Content, Done, GroupError, GroupEvent, History, Operation, Unreadable};
use xmpp_parsers::jid::{BareJid, FullJid, Jid};
use xmpp_parsers::stanza_error::StanzaError as XmppStanzaError;

create_exception!(xmpp_mls, MlsError, PyException, "Any failure of the MLS client core.");
create_exception!(
    xmpp_mls,
    StanzaError,
    MlsError,
    "The service (or the XMPP server) answered with a stanza error: see .type, .condition, .app_condition, .text."
);
create_exception!(xmpp_mls, TimeoutError, MlsError, "No answer came in time.");
create_exception!(xmpp_mls, ClosedError, MlsError, "The stream closed before the operation finished.");
create_exception!(xmpp_mls, ForkedError, MlsError, "The group has forked: nothing is sent into it.");
create_exception!(xmpp_mls, UnknownGroupError, MlsError, "This device is not in that group.");

/// The namespace of stanzas on a client stream.
const CLIENT_NS: &str = "jabber:client";
/// The namespace of stanza error conditions (RFC 6120 §8.3.3).
const STANZAS_NS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// The namespace of the service's application-specific error conditions.
const MLS_ERRORS_NS: &str = "urn:xmpp:mls:0:errors";

/// A device's keys and state in its file (SQLite, mode 0600), before a
/// [`PyClient`] takes it.
#[pyclass(name = "Device", module = "xmpp_mls", frozen)]
struct PyDevice {
    inner: Mutex<Option<xmpp_mls::client::Device>>,
    id: String,
    account: String,
}

#[pymethods]
impl PyDevice {
    /// A new device of `account` in a new file at `path`.
    #[staticmethod]
    #[pyo3(signature = (path, account, label=None))]
    fn create(path: PathBuf, account: &str, label: Option<String>) -> PyResult<Self> {
        Self::wrap(xmpp_mls::client::Device::create(&path, bare(account)?, label))
    }

    /// The device of `account` kept at `path`.
    #[staticmethod]
    fn open(path: PathBuf, account: &str) -> PyResult<Self> {
        Self::wrap(xmpp_mls::client::Device::open(&path, &bare(account)?))
    }

    #[getter]
    fn id(&self) -> &str {
        &self.id
    }

    #[getter]
    fn account(&self) -> &str {
        &self.account
    }
}

impl PyDevice {
    fn wrap(device: Result<xmpp_mls::client::Device, xmpp_mls::client::DeviceError>) -> PyResult<Self> {
        let device = device.map_err(|e| MlsError::new_err(e.to_string()))?;
        let (id, account) = (device.id().to_owned(), device.account().to_string());
        Ok(PyDevice { inner: Mutex::new(Some(device)), id, account })
    }
}

/// Maps the host's `time.monotonic()` seconds to [`Instant`]s and back,
/// from one pair of readings taken together.
struct Clock {
    instant: Instant,
    seconds: f64,
}

impl Clock {
    fn instant(&self, seconds: f64) -> Instant {
        self.instant + Duration::from_secs_f64((seconds - self.seconds).max(0.0))
    }

    fn seconds(&self, instant: Instant) -> f64 {
        self.seconds + instant.saturating_duration_since(self.instant).as_secs_f64()
    }
}

/// One device on the host's session: feed it every stanza from the
/// service's domain, send what `transmit()` returns, call `tick()` at
/// `next_deadline()`, and read `events()` and `done()` after each call.
/// It stays on the thread that made it (the host's event loop): the core
/// runs its operations as futures that are not `Send`.
#[pyclass(name = "Client", module = "xmpp_mls", unsendable)]
struct PyClient {
    machine: xmpp_mls::client::Machine,
    clock: Clock,
}

#[pymethods]
impl PyClient {
    /// `device` on the session bound as the full JID `jid`, using the
    /// service `service` (e.g. "mls.example.org"); `now` is
    /// `time.monotonic()` (read here if not given).
    #[new]
    #[pyo3(signature = (device, jid, service, now=None))]
    fn new(py: Python<'_>, device: &PyDevice, jid: &str, service: &str, now: Option<f64>) -> PyResult<Self> {
        let jid = FullJid::new(jid).map_err(|e| PyValueError::new_err(format!("{jid}: {e}")))?;
        let service = Jid::new(service).map_err(|e| PyValueError::new_err(format!("{service}: {e}")))?;
        let taken = lock(&device.inner).take();
        let device = taken.ok_or_else(|| PyValueError::new_err("this Device is already in a Client"))?;
        let seconds = match now {
            Some(now) => now,
            None => py.import("time")?.call_method0("monotonic")?.extract()?,
        };
        let clock = Clock { instant: Instant::now(), seconds };
        let machine = xmpp_mls::client::Machine::new(device, jid, service, clock.instant).map_err(|e| error(py, e))?;
        Ok(PyClient { machine, clock })
    }

    /// A stanza from the server, as XML (`xmlns='jabber:client'` on its
    /// root, or none: a stanza of a client stream).
    fn receive(&mut self, xml: &str) -> PyResult<()> {
        let stanza = parse(xml)?;
        self.machine.receive(stanza);
        Ok(())
    }

    /// The stream ended: the operations under way fail with `ClosedError`
    /// (in `done()`).
    fn close(&mut self) {
        self.machine.close();
    }

    /// Time passes: `now` in `time.monotonic()` seconds.
    fn tick(&mut self, now: f64) {
        self.machine.tick(self.clock.instant(now));
    }

    /// When to call `tick` next (`time.monotonic()` seconds), if anything waits.
    fn next_deadline(&self) -> Option<f64> {
        self.machine.next_deadline().map(|d| self.clock.seconds(d))
    }

    /// The stanzas to send, in order, as XML with `xmlns='jabber:client'`.
    fn transmit(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.machine.poll_transmit()).map(|stanza| String::from(&stanza)).collect()
    }

    /// What happened, as dicts with a "type" key: message, discarded,
    /// delivered, joined, proposed, epoch, removed, fork, refused, refilled.
    fn events<'py>(&mut self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let events: Vec<GroupEvent> = std::iter::from_fn(|| self.machine.poll_event()).collect();
        events.into_iter().map(|e| event(py, e)).collect()
    }

    /// The finished operations as (op id, result); a failed one's result is
    /// an `MlsError` instance (not raised).
    fn done<'py>(&mut self, py: Python<'py>) -> PyResult<Vec<(u64, Bound<'py, PyAny>)>> {
        let done: Vec<_> = std::iter::from_fn(|| self.machine.poll_done()).collect();
        done.into_iter().map(|(id, outcome)| Ok((id, result(py, outcome)?))).collect()
    }

    #[getter]
    fn device_id(&self) -> String {
        self.machine.device_id().to_owned()
    }

    #[getter]
    fn account(&self) -> String {
        self.machine.account().to_string()
    }

    // Operations: each returns its op id; its result comes from done().

    /// Publishes the device in the account's device list and fills its KeyPackage pool.
    fn publish(&mut self) -> u64 {
        self.start(Operation::Publish)
    }

    /// Creates a group; result: its JID.
    fn create(&mut self) -> u64 {
        self.start(Operation::Create)
    }

    /// Adds every device of `accounts`; result: {"epoch", "stanza_id", "position"}.
    fn add(&mut self, group: &str, accounts: Vec<String>) -> PyResult<u64> {
        let accounts = accounts.iter().map(|a| bare(a)).collect::<PyResult<_>>()?;
        Ok(self.start(Operation::Add { group: bare(group)?, accounts }))
    }

    /// Removes every device of `account`; result as for `add`.
    fn remove_account(&mut self, group: &str, account: &str) -> PyResult<u64> {
        Ok(self.start(Operation::RemoveAccount { group: bare(group)?, account: bare(account)? }))
    }

    /// Removes one device; result as for `add`.
    fn remove_device(&mut self, group: &str, account: &str, device: String) -> PyResult<u64> {
        Ok(self.start(Operation::RemoveDevice { group: bare(group)?, account: bare(account)?, device }))
    }

    /// Commits an update of this device's keys; result as for `add`.
    fn update(&mut self, group: &str) -> PyResult<u64> {
        Ok(self.start(Operation::Update { group: bare(group)? }))
    }

    /// Leaves the group; result as for `add`.
    fn leave(&mut self, group: &str) -> PyResult<u64> {
        Ok(self.start(Operation::Leave { group: bare(group)? }))
    }

    /// Sends `content`: a text (one `<body/>`) or a list of XML elements
    /// (the children of the envelope's `<content/>`); result: the message's
    /// id, whose echo comes as a "delivered" event.
    fn send(&mut self, group: &str, content: &Bound<'_, PyAny>) -> PyResult<u64> {
        let content = match content.extract::<String>() {
            Ok(text) => Content::from_body(&text).0,
            Err(_) => content.extract::<Vec<String>>()?.iter().map(|x| parse(x)).collect::<PyResult<_>>()?,
        };
        Ok(self.start(Operation::Send { group: bare(group)?, content }))
    }

    /// Joins the live feed of every group of the device; result: None.
    fn join_all(&mut self) -> u64 {
        self.start(Operation::JoinAll)
    }

    /// Reads the inbox and every group's archive since the last message
    /// seen, with events for everything missed; result: None.
    fn catch_up(&mut self) -> u64 {
        self.start(Operation::CatchUpAll)
    }

    /// Sends again this device's messages that were neither echoed nor refused; result: their count.
    fn resend(&mut self) -> u64 {
        self.start(Operation::Resend)
    }

    /// Result: the group's members as [(account, device id)].
    fn members(&mut self, group: &str) -> PyResult<u64> {
        Ok(self.start(Operation::Members { group: bare(group)? }))
    }

    /// Opens the account's vault with the passphrase, or with this
    /// device's enrolled key if it is None, and keeps history in it; result: None.
    #[pyo3(signature = (passphrase=None))]
    fn open_vault(&mut self, passphrase: Option<String>) -> u64 {
        self.start(Operation::OpenVault { passphrase })
    }

    /// Reads the group's history from the vault (after `open_vault`);
    /// result: {"entries": [message dicts with "epoch"], "unreadable": [(stanza_id, epoch, why)]}.
    fn read_history(&mut self, group: &str) -> PyResult<u64> {
        Ok(self.start(Operation::ReadHistory { group: bare(group)? }))
    }
}

impl PyClient {
    fn start(&mut self, op: Operation) -> u64 {
        self.machine.start(op)
    }
}

/// The guarded value even if a panic poisoned the lock (a device taken or
/// not is all it guards).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn bare(jid: &str) -> PyResult<BareJid> {
    BareJid::new(jid).map_err(|e| PyValueError::new_err(format!("{jid}: {e}")))
}

/// One element from XML whose root is in `jabber:client` if it names no
/// namespace (slixmpp's `str(stanza)` leaves out the stream's namespace).
fn parse(xml: &str) -> PyResult<Element> {
    let wrapped = format!("<wrapper xmlns='{CLIENT_NS}'>{xml}</wrapper>");
    let wrapper: Element = wrapped.parse().map_err(|e| PyValueError::new_err(format!("not XML: {e}")))?;
    let mut children = wrapper.children();
    match (children.next(), children.next()) {
        (Some(element), None) => Ok(element.clone()),
        _ => Err(PyValueError::new_err("expected exactly one XML element")),
    }
}

/// An event as a dict with its "type" (and its "group", but for "refilled").
fn event(py: Python<'_>, event: GroupEvent) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let (kind, group) = match event {
        GroupEvent::Joined { group } => ("joined", Some(group)),
        GroupEvent::Message { group, account, device, content, stanza_id } => {
            d.set_item("account", account.as_str())?;
            d.set_item("device", device)?;
            set_content(&d, &content)?;
            d.set_item("stanza_id", stanza_id)?;
            ("message", Some(group))
        }
        GroupEvent::Discarded { group, account, device, stanza_id, reason } => {
            d.set_item("account", account.as_str())?;
            d.set_item("device", device)?;
            d.set_item("stanza_id", stanza_id)?;
            d.set_item("reason", reason.to_string())?;
            ("discarded", Some(group))
        }
        GroupEvent::Delivered { group, id, stanza_id } => {
            d.set_item("id", id)?;
            d.set_item("stanza_id", stanza_id)?;
            ("delivered", Some(group))
        }
        GroupEvent::Proposed { group, account } => {
            d.set_item("account", account.as_str())?;
            ("proposed", Some(group))
        }
        GroupEvent::RemovalProposed { group, account, device } => {
            d.set_item("account", account.as_str())?;
            d.set_item("device", device)?;
            ("removal_proposed", Some(group))
        }
        GroupEvent::UnlistedLeaf { group, account, fingerprint } => {
            d.set_item("account", account.as_str())?;
            d.set_item("fingerprint", fingerprint)?;
            ("unlisted_leaf", Some(group))
        }
        GroupEvent::Epoch { group, epoch, members } => {
            d.set_item("epoch", epoch)?;
            d.set_item("members", members_list(members))?;
            ("epoch", Some(group))
        }
        GroupEvent::Removed { group } => ("removed", Some(group)),
        GroupEvent::HistoryPruned { group } => ("history_pruned", Some(group)),
        GroupEvent::Fork { group, epoch } => {
            d.set_item("epoch", epoch)?;
            ("fork", Some(group))
        }
        GroupEvent::Refused { group, id, error } => {
            d.set_item("id", id)?;
            d.set_item("error", error)?;
            ("refused", Some(group))
        }
        GroupEvent::Refilled(report) => {
            d.set_item("uploaded", report.uploaded)?;
            d.set_item("last_resort_replaced", report.last_resort_replaced)?;
            d.set_item("pool", report.pool)?;
            ("refilled", None)
        }
    };
    d.set_item("type", kind)?;
    if let Some(group) = group {
        d.set_item("group", group.as_str())?;
    }
    Ok(d)
}

/// "body" (the first `<body/>`'s text, or None) and "content" (every
/// child of `<content/>` as XML).
fn set_content(d: &Bound<'_, PyDict>, content: &Content) -> PyResult<()> {
    d.set_item("body", content.body())?;
    d.set_item("content", content.0.iter().map(String::from).collect::<Vec<_>>())
}

fn members_list(members: Vec<(BareJid, String)>) -> Vec<(String, String)> {
    members.into_iter().map(|(account, device)| (account.to_string(), device)).collect()
}

/// A finished operation's result, or its error as an exception instance.
fn result(py: Python<'_>, outcome: Result<Done, GroupError>) -> PyResult<Bound<'_, PyAny>> {
    let done = match outcome {
        Ok(done) => done,
        Err(e) => return Ok(error(py, e).into_value(py).into_bound(py).into_any()),
    };
    Ok(match done {
        Done::Unit => py.None().into_bound(py),
        Done::Group(group) => group.as_str().into_pyobject(py)?.into_any(),
        Done::Accepted(a) => {
            let d = PyDict::new(py);
            d.set_item("epoch", a.epoch)?;
            d.set_item("stanza_id", a.stanza_id)?;
            d.set_item("position", a.position)?;
            d.into_any()
        }
        Done::Sent(id) => id.into_pyobject(py)?.into_any(),
        Done::Count(n) => n.into_pyobject(py)?.into_any(),
        Done::Members(members) => PyList::new(py, members_list(members))?.into_any(),
        Done::History(history) => history_dict(py, history)?.into_any(),
    })
}

fn history_dict(py: Python<'_>, history: History) -> PyResult<Bound<'_, PyDict>> {
    let entries = PyList::empty(py);
    for entry in history.entries {
        let d = PyDict::new(py);
        d.set_item("stanza_id", entry.stanza_id)?;
        d.set_item("epoch", entry.epoch)?;
        d.set_item("account", entry.account.as_str())?;
        set_content(&d, &entry.content)?;
        entries.append(d)?;
    }
    let unreadable: Vec<(String, u64, String)> =
        history.unreadable.into_iter().map(|(id, epoch, why)| (id, epoch, unreadable_reason(&why))).collect();
    let d = PyDict::new(py);
    d.set_item("entries", entries)?;
    d.set_item("unreadable", unreadable)?;
    Ok(d)
}

fn unreadable_reason(why: &Unreadable) -> String {
    match why {
        Unreadable::NoSnapshot => "no-snapshot".to_owned(),
        Unreadable::Undecryptable => "undecryptable".to_owned(),
        Unreadable::Refused(reason) => format!("refused: {reason}"),
    }
}

/// The exception for a failed operation.
fn error(py: Python<'_>, e: GroupError) -> PyErr {
    match e {
        GroupError::Client(ClientError::Stanza(error)) => stanza_error(py, &error),
        GroupError::Client(e @ ClientError::Timeout(_)) => TimeoutError::new_err(e.to_string()),
        GroupError::Client(e @ ClientError::Closed) => ClosedError::new_err(e.to_string()),
        e @ GroupError::Forked(_) => ForkedError::new_err(e.to_string()),
        e @ GroupError::UnknownGroup(_) => UnknownGroupError::new_err(e.to_string()),
        e => MlsError::new_err(e.to_string()),
    }
}

/// A `StanzaError` with .type, .condition, .app_condition (the child in
/// urn:xmpp:mls:0:errors, or None) and .text (or None).
fn stanza_error(py: Python<'_>, error: &XmppStanzaError) -> PyErr {
    let element = Element::from(error.clone());
    let err = StanzaError::new_err(describe(error));
    let condition = element.children().find(|c| c.ns() == STANZAS_NS && c.name() != "text").map(Element::name);
    let app_condition = element.children().find(|c| c.ns() == MLS_ERRORS_NS).map(Element::name);
    let text = element.get_child("text", STANZAS_NS).map(Element::text);
    let value = err.value(py);
    let set = [
        ("type", element.attr("type").map(str::to_owned)),
        ("condition", condition.map(str::to_owned)),
        ("app_condition", app_condition.map(str::to_owned)),
        ("text", text),
    ];
    for (name, v) in set {
        if let Err(e) = value.setattr(name, v) {
            return e;
        }
    }
    err
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDevice>()?;
    m.add_class::<PyClient>()?;
    let py = m.py();
    m.add("MlsError", py.get_type::<MlsError>())?;
    m.add("StanzaError", py.get_type::<StanzaError>())?;
    m.add("TimeoutError", py.get_type::<TimeoutError>())?;
    m.add("ClosedError", py.get_type::<ClosedError>())?;
    m.add("ForkedError", py.get_type::<ForkedError>())?;
    m.add("UnknownGroupError", py.get_type::<UnknownGroupError>())?;
    Ok(())
}
