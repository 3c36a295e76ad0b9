//! The client's side of its XMPP stream, without I/O: the point where the
//! client core meets whatever carries its stanzas.
//!
//! The core sends stanzas, asks IQs and waits for stanzas and time through
//! a [`Port`]; a driver moves stanzas between the port and a real stream and
//! tells it the time. [`super::Session`] is the tokio driver (its own c2s
//! connection); [`super::Machine`] lets a host that has a stream already (a
//! slixmpp plugin, a GUI client) drive it by hand. The port's futures
//! resolve only on what a driver feeds in (a stanza, the time, the end of
//! the stream) and wake the task that waits on them, under any executor.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use minidom::Element;
use xmpp_parsers::jid::{FullJid, Jid};
use xmpp_parsers::stanza_error::StanzaError;

use super::session::{iq_element, ClientError};
use crate::xmpp::namespace::CLIENT;

/// How often, and for how long at most, [`Port::iq`] waits out a rate limit.
const RATE_RETRIES: usize = 5;
const MAX_RATE_WAIT: Duration = Duration::from_secs(10);

/// Where the port's time comes from.
#[derive(Clone, Copy)]
enum Clock {
    /// The system's monotonic clock (a driver on a real runtime).
    System,
    /// The last time a driver gave with [`Port::tick`].
    Manual(Instant),
}

struct State {
    clock: Clock,
    next_id: u64,
    outgoing: VecDeque<Element>,
    /// IQs sent and not answered yet, by id; the answer once it came.
    waiting: HashMap<String, Option<Element>>,
    /// Every other stanza received, oldest first.
    incoming: VecDeque<Element>,
    /// Times something waits for, as registered by the futures polled last.
    deadlines: Vec<Instant>,
    closed: bool,
    /// The tasks waiting on the port.
    wakers: Vec<Waker>,
    /// The driver, waiting for something to send or a new deadline.
    driver: Option<Waker>,
    attention: bool,
}

impl State {
    fn now(&self) -> Instant {
        match self.clock {
            Clock::System => Instant::now(),
            Clock::Manual(now) => now,
        }
    }

    fn wake_all(&mut self) {
        self.wakers.drain(..).for_each(Waker::wake);
    }

    fn call_driver(&mut self) {
        self.attention = true;
        if let Some(driver) = self.driver.take() {
            driver.wake();
        }
    }

    /// Waits for `deadline`: the driver learns of it.
    fn wait_until(&mut self, deadline: Instant, cx: &Context<'_>) {
        if !self.deadlines.contains(&deadline) {
            self.deadlines.push(deadline);
            self.call_driver();
        }
        self.wait(cx);
    }

    /// Wakes the task of `cx` on the port's next input.
    fn wait(&mut self, cx: &Context<'_>) {
        if !self.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            self.wakers.push(cx.waker().clone());
        }
    }
}

/// The client's stream as the core sees it. Clones share one port.
#[derive(Clone)]
pub struct Port {
    jid: FullJid,
    iq_timeout: Duration,
    state: Arc<Mutex<State>>,
}

impl Port {
    /// A port whose time is the system clock.
    pub fn new(jid: FullJid, iq_timeout: Duration) -> Self {
        Self::with_clock(jid, iq_timeout, Clock::System)
    }

    /// A port whose time passes only by [`Self::tick`], starting at `now`.
    pub fn manual(jid: FullJid, iq_timeout: Duration, now: Instant) -> Self {
        Self::with_clock(jid, iq_timeout, Clock::Manual(now))
    }

    fn with_clock(jid: FullJid, iq_timeout: Duration, clock: Clock) -> Self {
        let state = State {
            clock,
            next_id: 0,
            outgoing: VecDeque::new(),
            waiting: HashMap::new(),
            incoming: VecDeque::new(),
            deadlines: Vec::new(),
            closed: false,
            wakers: Vec::new(),
            driver: None,
            attention: false,
        };
        Port { jid, iq_timeout, state: Arc::new(Mutex::new(state)) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("port lock")
    }

    // The driver's side.

    /// A stanza from the server. An answer to an IQ goes to its asker; IQ
    /// requests are the driver's to answer and are dropped here; every
    /// other stanza (an answer nobody waits for included) is an event.
    pub fn receive(&self, stanza: Element) {
        let mut state = self.state();
        if stanza.name() == "iq" {
            match stanza.attr("type") {
                Some("result") | Some("error") => {
                    let id = stanza.attr("id").unwrap_or_default();
                    if let Some(slot) = state.waiting.get_mut(id).filter(|s| s.is_none()) {
                        *slot = Some(stanza);
                        state.wake_all();
                        return;
                    }
                }
                _ => return,
            }
        }
        state.incoming.push_back(stanza);
        state.wake_all();
    }

    /// Time passed: `now` is the port's time from here on (manual clock).
    pub fn tick(&self, now: Instant) {
        let mut state = self.state();
        if let Clock::Manual(_) = state.clock {
            state.clock = Clock::Manual(now);
        }
        state.deadlines.retain(|d| *d > now);
        state.wake_all();
    }

    /// The stream ended: whatever waits for an answer gets [`ClientError::Closed`].
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.wake_all();
        state.call_driver();
    }

    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// The next stanza to send.
    pub fn poll_transmit(&self) -> Option<Element> {
        self.state().outgoing.pop_front()
    }

    /// The earliest time something waits for.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.state().deadlines.iter().min().copied()
    }

    /// Resolves when there is something to send or a new deadline (for a
    /// driver that sleeps between stanzas).
    pub async fn attention(&self) {
        poll_fn(|cx| {
            let mut state = self.state();
            if std::mem::take(&mut state.attention) {
                return Poll::Ready(());
            }
            state.driver = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    // The core's side.

    /// The bound full JID.
    pub fn jid(&self) -> &FullJid {
        &self.jid
    }

    pub fn now(&self) -> Instant {
        self.state().now()
    }

    /// A fresh stanza id.
    pub fn next_id(&self) -> String {
        let mut state = self.state();
        state.next_id += 1;
        format!("c{}", state.next_id)
    }

    /// Queues a stanza for sending.
    pub async fn send(&self, stanza: Element) -> Result<(), ClientError> {
        self.transmit(stanza)
    }

    /// Queues a stanza for sending, from code that does not wait.
    pub fn transmit(&self, stanza: Element) -> Result<(), ClientError> {
        let mut state = self.state();
        if state.closed {
            return Err(ClientError::Closed);
        }
        state.outgoing.push_back(stanza);
        state.call_driver();
        Ok(())
    }

    /// Sends a prepared IQ (its `id` set) and returns the whole reply
    /// stanza, whatever its type, or a timeout after the port's IQ timeout.
    pub async fn request(&self, iq: Element) -> Result<Element, ClientError> {
        let id = iq.attr("id").ok_or_else(|| ClientError::Malformed("IQ without id".into()))?.to_owned();
        self.state().waiting.insert(id.clone(), None);
        if let Err(e) = self.transmit(iq) {
            self.state().waiting.remove(&id);
            return Err(e);
        }
        let deadline = self.now() + self.iq_timeout;
        poll_fn(|cx| {
            let mut state = self.state();
            if state.waiting.get(&id).is_some_and(Option::is_some) {
                let reply = state.waiting.remove(&id).flatten().expect("checked");
                return Poll::Ready(Ok(reply));
            }
            if state.closed || state.now() >= deadline {
                state.waiting.remove(&id);
                let error = if state.closed { ClientError::Closed } else { ClientError::Timeout(self.iq_timeout) };
                return Poll::Ready(Err(error));
            }
            state.wait_until(deadline, cx);
            Poll::Pending
        })
        .await
    }

    /// Sends an IQ get or set and returns the result's payload, if any.
    /// A request refused for the service's rate limit is sent again after
    /// the `retry-after` it names (a few times, for short waits only).
    pub async fn iq(&self, to: &Jid, type_: &str, payload: Element) -> Result<Option<Element>, ClientError> {
        let mut retries = 0;
        loop {
            let iq = iq_element(type_, &self.next_id(), to.as_str(), Some(payload.clone()));
            let reply = self.request(iq).await?;
            match reply.attr("type") {
                Some("result") => return Ok(reply.children().next().cloned()),
                Some("error") => {
                    let error = stanza_error_of(&reply)?;
                    match retry_after(&error) {
                        Some(wait) if retries < RATE_RETRIES && wait <= MAX_RATE_WAIT => {
                            retries += 1;
                            self.sleep(wait).await;
                        }
                        _ => return Err(ClientError::Stanza(Box::new(error))),
                    }
                }
                other => return Err(ClientError::Malformed(format!("IQ reply of type {other:?}"))),
            }
        }
    }

    /// Waits for `duration` of the port's time.
    pub async fn sleep(&self, duration: Duration) {
        let deadline = self.now() + duration;
        poll_fn(|cx| {
            let mut state = self.state();
            if state.closed || state.now() >= deadline {
                return Poll::Ready(());
            }
            state.wait_until(deadline, cx);
            Poll::Pending
        })
        .await
    }

    /// The next stanza that is not an answer to a request, or `None` once
    /// the stream is closed.
    pub async fn next_event(&self) -> Option<Element> {
        self.next_event_until(None).await
    }

    /// Like [`Self::next_event`] but gives up after `timeout`.
    pub async fn next_event_within(&self, timeout: Duration) -> Option<Element> {
        self.next_event_until(Some(self.now() + timeout)).await
    }

    /// Like [`Self::next_event`] but gives up at `deadline`.
    pub async fn next_event_until(&self, deadline: Option<Instant>) -> Option<Element> {
        poll_fn(|cx| {
            let mut state = self.state();
            if let Some(stanza) = state.incoming.pop_front() {
                return Poll::Ready(Some(stanza));
            }
            if state.closed || deadline.is_some_and(|d| state.now() >= d) {
                return Poll::Ready(None);
            }
            match deadline {
                Some(d) => state.wait_until(d, cx),
                None => state.wait(cx),
            }
            Poll::Pending
        })
        .await
    }

    /// An event already received, without waiting.
    pub fn try_next_event(&self) -> Option<Element> {
        self.state().incoming.pop_front()
    }

    /// Whether a received stanza waits to be read.
    pub fn has_event(&self) -> bool {
        !self.state().incoming.is_empty()
    }
}

/// The wait a `<rate-limited/>` error asks for.
fn retry_after(error: &StanzaError) -> Option<Duration> {
    let limited = error.other.as_ref().filter(|o| o.is("rate-limited", crate::protocol::NS_ERRORS))?;
    limited.attr("retry-after")?.parse().ok().map(Duration::from_secs)
}

fn stanza_error_of(reply: &Element) -> Result<StanzaError, ClientError> {
    let el = reply
        .get_child("error", CLIENT)
        .ok_or_else(|| ClientError::Malformed("error reply without <error/>".into()))?;
    StanzaError::try_from(el.clone()).map_err(|e| ClientError::Malformed(e.to_string()))
}
