//! The two drivers of the client core ([`Core`]): [`GroupClient`], which
//! runs it on tokio over its own [`Session`], and [`Machine`], which a host
//! with a stream of its own (a slixmpp plugin, a GUI client's event loop)
//! drives by hand: stanzas and time in, stanzas, events and results out.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use minidom::Element;
use xmpp_parsers::jid::{BareJid, FullJid, Jid};

use super::groups::{Core, GroupError, GroupEvent};
use super::history::History;
use super::port::Port;
use super::session::Session;
use super::storage::{DeviceStorage, SqliteStorage};
use super::Device;
use crate::protocol::groups::Accepted;

/// How long a [`Machine`] waits for an IQ's answer.
const IQ_TIMEOUT: Duration = Duration::from_secs(30);

/// The client core on tokio: a [`Core`] whose port the session drives.
/// Everything of the core is reachable through it (it dereferences to it).
pub struct GroupClient<S: DeviceStorage = SqliteStorage> {
    pub session: Session,
    core: Core<S>,
}

impl<S: DeviceStorage> GroupClient<S> {
    /// Takes over the session and announces it available, so that pushes
    /// to the account's bare JID (Welcomes, notices) reach this device.
    pub async fn start(session: Session, device: Device<S>, service: Jid) -> Result<Self, GroupError> {
        let core = Core::start(session.port().clone(), device, service)?;
        Ok(GroupClient { session, core })
    }
}

impl<S: DeviceStorage> std::ops::Deref for GroupClient<S> {
    type Target = Core<S>;
    fn deref(&self) -> &Core<S> {
        &self.core
    }
}

impl<S: DeviceStorage> std::ops::DerefMut for GroupClient<S> {
    fn deref_mut(&mut self) -> &mut Core<S> {
        &mut self.core
    }
}

/// What a host asks of a [`Machine`]; each ends in a [`Done`] or an error.
#[derive(Debug, Clone)]
pub enum Operation {
    /// Publish this device in the account's device list and fill its KeyPackage pool.
    Publish,
    Create,
    Add { group: BareJid, accounts: Vec<BareJid> },
    RemoveAccount { group: BareJid, account: BareJid },
    RemoveDevice { group: BareJid, account: BareJid, device: String },
    /// A self-update by commit.
    Update { group: BareJid },
    Leave { group: BareJid },
    /// An envelope of these elements (e.g. a `<body/>`).
    Send { group: BareJid, content: Vec<Element> },
    /// Join the feed of every group of the device.
    JoinAll,
    /// The inbox and every group's archive since the device stopped.
    CatchUpAll,
    Resend,
    Members { group: BareJid },
    /// Open the account's vault and keep history in it from now on.
    OpenVault { passphrase: Option<String> },
    /// The group's history as the vault's snapshots read it.
    ReadHistory { group: BareJid },
}

/// The outcome of an [`Operation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    Unit,
    Group(BareJid),
    Accepted(Accepted),
    /// The message's stanza id; its echo comes as [`GroupEvent::Delivered`].
    Sent(String),
    Count(usize),
    Members(Vec<(BareJid, String)>),
    History(History),
}

type Outcome = (u64, Result<Done, GroupError>);
type Task<S> = Pin<Box<dyn Future<Output = (Core<S>, Option<Outcome>)>>>;

/// The client core for a host that owns the stream: it does no I/O and
/// never blocks. The host gives it every stanza from the service's domain
/// ([`Self::receive`]) and the time ([`Self::tick`], at least at
/// [`Self::next_deadline`]), sends what [`Self::poll_transmit`] gives, and
/// reads [`Self::poll_event`] and [`Self::poll_done`]. Operations run one
/// after another; between them, what arrives is handled by itself.
pub struct Machine<S: DeviceStorage + 'static = SqliteStorage> {
    port: Port,
    core: Option<Core<S>>,
    task: Option<Task<S>>,
    queue: VecDeque<(u64, Operation)>,
    next_op: u64,
    done: VecDeque<Outcome>,
    events: VecDeque<GroupEvent>,
    device_id: String,
    account: BareJid,
}

impl<S: DeviceStorage + 'static> Machine<S> {
    /// The core of `device` on a stream bound as `jid`, using the service
    /// at `service`; queues the initial presence.
    pub fn new(device: Device<S>, jid: FullJid, service: Jid, now: Instant) -> Result<Self, GroupError> {
        let port = Port::manual(jid, IQ_TIMEOUT, now);
        let (device_id, account) = (device.id().to_owned(), device.account().clone());
        let core = Core::start(port.clone(), device, service)?;
        Ok(Machine {
            port,
            core: Some(core),
            task: None,
            queue: VecDeque::new(),
            next_op: 0,
            done: VecDeque::new(),
            events: VecDeque::new(),
            device_id,
            account,
        })
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    pub fn account(&self) -> &BareJid {
        &self.account
    }

    /// A stanza from the server (anything not for the core is ignored).
    pub fn receive(&mut self, stanza: Element) {
        self.port.receive(stanza);
        self.run();
    }

    /// The time is `now`.
    pub fn tick(&mut self, now: Instant) {
        self.port.tick(now);
        self.run();
    }

    /// When to call [`Self::tick`] next, if something waits for a time
    /// (an answer, or a Remove proposal of the service to commit).
    pub fn next_deadline(&self) -> Option<Instant> {
        let due = self.core.as_ref().and_then(Core::next_due);
        [self.port.next_deadline(), due].into_iter().flatten().min()
    }

    /// The stream ended: what waits for an answer fails.
    pub fn close(&mut self) {
        self.port.close();
        self.run();
    }

    pub fn poll_transmit(&mut self) -> Option<Element> {
        self.port.poll_transmit()
    }

    pub fn poll_event(&mut self) -> Option<GroupEvent> {
        self.events.pop_front()
    }

    /// A finished operation: its number and outcome.
    pub fn poll_done(&mut self) -> Option<Outcome> {
        self.done.pop_front()
    }

    /// Queues `op` after those queued before; its number.
    pub fn start(&mut self, op: Operation) -> u64 {
        self.next_op += 1;
        self.queue.push_back((self.next_op, op));
        self.run();
        self.next_op
    }

    /// Advances the running task as far as what came in allows, then the
    /// next operation, or the handling of what was received, until one
    /// waits for the stream or the time, or nothing is left to do.
    fn run(&mut self) {
        loop {
            if let Some(task) = self.task.as_mut() {
                let Poll::Ready((mut core, outcome)) = task.as_mut().poll(&mut Context::from_waker(Waker::noop())) else {
                    return;
                };
                self.task = None;
                self.events.extend(std::iter::from_fn(|| core.poll_event()));
                self.done.extend(outcome);
                self.core = Some(core);
            }
            let Some(mut core) = self.core.take() else { return };
            self.task = if let Some((id, op)) = self.queue.pop_front() {
                Some(Box::pin(async move {
                    let result = core.perform(op).await;
                    (core, Some((id, result)))
                }))
            } else if core.has_received() || core.is_due() {
                Some(Box::pin(async move {
                    if let Err(e) = core.handle_received().await {
                        tracing::warn!(error = %e, "cannot handle a stanza from the service");
                    }
                    (core, None)
                }))
            } else {
                self.core = Some(core);
                return;
            };
        }
    }
}

impl<S: DeviceStorage> Core<S> {
    /// Carries out one [`Operation`] of a [`Machine`].
    async fn perform(&mut self, op: Operation) -> Result<Done, GroupError> {
        Ok(match op {
            Operation::Publish => self.publish().await.map(|_| Done::Unit)?,
            Operation::Create => Done::Group(self.create().await?),
            Operation::Add { group, accounts } => Done::Accepted(self.add(&group, &accounts).await?),
            Operation::RemoveAccount { group, account } => Done::Accepted(self.remove_account(&group, &account).await?),
            Operation::RemoveDevice { group, account, device } => {
                Done::Accepted(self.remove_device(&group, &account, &device).await?)
            }
            Operation::Update { group } => Done::Accepted(self.update(&group).await?),
            Operation::Leave { group } => Done::Accepted(self.leave(&group).await?),
            Operation::Send { group, content } => Done::Sent(self.send(&group, content).await?),
            Operation::JoinAll => self.join_all().await.map(|()| Done::Unit)?,
            Operation::CatchUpAll => self.catch_up_all(&mut |_, _, _| {}).await.map(|()| Done::Unit)?,
            Operation::Resend => Done::Count(self.resend().await?),
            Operation::Members { group } => Done::Members(self.members(&group).await?),
            Operation::OpenVault { passphrase } => self.open_vault(passphrase.as_deref()).await.map(|()| Done::Unit)?,
            Operation::ReadHistory { group } => Done::History(self.read_own_history(&group).await?),
        })
    }
}
