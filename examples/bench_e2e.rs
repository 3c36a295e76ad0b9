//! End to end through one Prosody, on one machine, in one run: group
//! messages per second and send-to-all-receivers latency (p50, p99) by group
//! size, for
//!
//! - `mls`: xmpp-mls groups (the real `xmpp-mls serve`, archiving every
//!   message), devices made with the client library;
//! - `muc`: Prosody's MUC with mod_muc_mam, plain `<body/>`s of the same size;
//! - `null`: a component that only echoes each message to every member
//!   (`bench_e2e null-component`): the routing ceiling behind Prosody.
//!
//! One device sends, the N-1 others receive. Throughput is measured with
//! `--window` messages in flight (sent and not yet received by every
//! receiver), latency with one at a time (under load it would only be the
//! window divided by the throughput). The sender's
//! MLS messages are real application messages, encrypted before the clock
//! starts; receivers count raw stanzas without decrypting, so the figures
//! measure delivery (DS or MUC), not the clients' crypto. Given the pids,
//! the CPU time Prosody and the system's component spent per message in
//! the loaded phase is reported too: it says which process saturates,
//! and depends less than rates on what else the machine runs (though
//! contention inflates it too).
//!
//! `scripts/bench` starts Prosody (with `conference.<domain>` and
//! `null.<domain>`), the component (`mls.<domain>`) and the null component,
//! registers accounts `bench0`… (password = name), then runs
//! `bench_e2e run --c2s HOST:PORT [--quick] [--json FILE]`.

#[path = "common/cpu.rs"]
mod cpu;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use minidom::rxml::Namespace;
use minidom::Element;
use openmls::prelude::{GroupId, MlsGroup};
use openmls_traits::OpenMlsProvider;
use tls_codec::Serialize as _;
use tokio::sync::Semaphore;
use xmpp_mls::client::{iq_element, ConnectOptions, Device, GroupClient, GroupEvent, KdfParams, Location, Session, Vault};
use xmpp_mls::protocol::address::Address;
use xmpp_mls::protocol::groups::GroupMessage;
use xmpp_mls::protocol::{b64_encode, n, NS_SID};
use xmpp_mls::xmpp::link::{self, Link, StanzaNs};
use xmpp_mls::xmpp::namespace::CLIENT;
use xmpp_parsers::jid::{BareJid, Jid};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const MUC_NS: &str = "http://jabber.org/protocol/muc";
/// Plaintext of every group message: a short chat line.
const PLAINTEXT_BYTES: usize = 100;
/// Messages sent before the measured ones (caches, files, JIT-less Lua warm-up).
const WARMUP: usize = 20;
/// Most stanzas one loaded phase delivers (a third of it for the idle one).
const STANZAS: usize = 30_000;
/// A run with no message completed for this long has failed.
const STALL: Duration = Duration::from_secs(30);

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure the three systems.
    Run {
        /// Prosody's c2s address.
        #[arg(long, env = "BENCH_C2S")]
        c2s: String,
        /// The VirtualHost; services are mls., conference. and null.<domain>.
        #[arg(long, env = "BENCH_DOMAIN", default_value = "example.org")]
        domain: String,
        /// Groups of 2 and 10 devices and fewer messages (else 2, 10, 100).
        #[arg(long)]
        quick: bool,
        /// Messages in flight at most.
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Runs of each system per group size (interleaved); figures are medians.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Also write the figures here, as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        prosody_pid: Option<u32>,
        /// The `xmpp-mls serve` process.
        #[arg(long)]
        component_pid: Option<u32>,
        #[arg(long)]
        null_pid: Option<u32>,
    },
    /// The echo-only component: copies each message to every member.
    NullComponent {
        #[arg(long, env = "BENCH_NULL_SERVER")]
        server: String,
        #[arg(long, env = "BENCH_NULL_JID")]
        jid: String,
        #[arg(long, env = "BENCH_NULL_SECRET")]
        secret: String,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Args::parse().command {
        Command::NullComponent { server, jid, secret } => null_component(&server, &jid, &secret).await,
        Command::Run { c2s, domain, quick, window, repeat, json, prosody_pid, component_pid, null_pid } => {
            let sizes: &[usize] = if quick { &[2, 10] } else { &[2, 10, 100] };
            let (messages, idle_messages) = if quick { (200, 60) } else { (1000, 300) };
            let pids = Pids { prosody: prosody_pid, component: component_pid, null: null_pid };
            let bench = Bench { c2s, domain, window, messages, idle_messages, repeat, pids };
            let report = bench.run(sizes).await?;
            report.print();
            if let Some(path) = json {
                std::fs::write(path, serde_json::to_string_pretty(&report.to_json())?)?;
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- the null component

/// Members register with presence to a JID of the component and get it
/// back; a message to that JID goes to every member, the sender included.
async fn null_component(server: &str, jid: &str, secret: &str) -> Result<()> {
    let toml = format!("[component]\njid = {jid:?}\nsecret = {secret:?}\nserver = {server:?}\n");
    let config = xmpp_mls::config::Config::from_toml(&toml, std::iter::empty())?;
    let stream = xmpp_mls::component::connect::connect(&config).await?;
    let (me, domain) = (jid.to_owned(), config.component.jid.split_once('.').map(|(_, d)| d.to_owned()));
    let domain = domain.ok_or("component JID without a parent domain")?;
    let Link { outgoing, mut incoming, task: _task } = link::spawn(stream, StanzaNs::Component, move || {
        let mut ping = iq_element("get", "ka", &domain, Some(Element::builder("ping", "urn:xmpp:ping").build()));
        ping.set_attr(Namespace::NONE, n("from"), me.as_str());
        ping
    });
    eprintln!("null component connected as {jid}");
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    while let Some(stanza) = incoming.recv().await {
        let (Some(from), Some(to)) = (stanza.attr("from"), stanza.attr("to")) else { continue };
        let (from, group) = (from.to_owned(), to.split('/').next().unwrap_or(to).to_owned());
        let copies = match (stanza.name(), stanza.attr("type")) {
            ("presence", None) => {
                members.entry(group.clone()).or_default().push(from.clone());
                vec![Element::builder("presence", CLIENT).attr(n("from"), group).attr(n("to"), from).build()]
            }
            ("message", Some("groupchat")) => {
                let sender = format!("{group}/{}", from.split('@').next().unwrap_or_default());
                let all = members.get(&group).map(Vec::as_slice).unwrap_or_default();
                all.iter()
                    .map(|member| {
                        let mut copy = stanza.clone();
                        copy.set_attr(Namespace::NONE, n("from"), sender.as_str());
                        copy.set_attr(Namespace::NONE, n("to"), member.as_str());
                        copy
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        for copy in copies {
            outgoing.send(copy).await?;
        }
    }
    Err("the server closed the stream".into())
}

// ---------------------------------------------------------------- the benchmark

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum System {
    Mls,
    Muc,
    Null,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Mls => "mls",
            System::Muc => "muc",
            System::Null => "null",
        }
    }

    fn label(self) -> &'static str {
        match self {
            System::Mls => "xmpp-mls",
            System::Muc => "muc+mam",
            System::Null => "null",
        }
    }
}

/// Figures of one batch of messages sent with a given window.
struct Phase {
    throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// One system at one group size: throughput under load, latency idle.
struct Run {
    system: System,
    devices: usize,
    /// Measured messages of the loaded and idle phases.
    messages: usize,
    idle_messages: usize,
    /// `--window` messages in flight.
    loaded: Phase,
    /// One message in flight.
    idle: Phase,
    /// CPU time per message in the loaded phase, in µs.
    prosody_cpu_us: Option<f64>,
    component_cpu_us: Option<f64>,
}

/// Each figure's median over `runs` (repetitions of one system and size).
fn median(runs: &[Run]) -> Run {
    let mid = |f: &dyn Fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let phase = |p: fn(&Run) -> &Phase| Phase {
        throughput: mid(&|r| p(r).throughput),
        p50_ms: mid(&|r| p(r).p50_ms),
        p99_ms: mid(&|r| p(r).p99_ms),
    };
    let cpu =
        |f: fn(&Run) -> Option<f64>| runs.iter().all(|r| f(r).is_some()).then(|| mid(&|r| f(r).unwrap_or_default()));
    Run {
        loaded: phase(|r| &r.loaded),
        idle: phase(|r| &r.idle),
        prosody_cpu_us: cpu(|r| r.prosody_cpu_us),
        component_cpu_us: cpu(|r| r.component_cpu_us),
        ..runs[0]
    }
}

/// The processes whose CPU time is accounted.
struct Pids {
    prosody: Option<u32>,
    component: Option<u32>,
    null: Option<u32>,
}

impl Pids {
    /// Prosody's and the component's (if the system has one) CPU seconds so far.
    fn cpu(&self, system: System) -> [Option<f64>; 2] {
        let component = match system {
            System::Mls => self.component,
            System::Muc => None,
            System::Null => self.null,
        };
        [self.prosody, component].map(|pid| pid.and_then(cpu::cpu_secs))
    }
}


struct Report {
    runs: Vec<Run>,
    /// The vault at the MLS service and in PEP ([`vault_places`]).
    vault: Vec<Figure>,
    ciphertext_bytes: usize,
    body_chars: usize,
    messages: usize,
    idle_messages: usize,
    window: usize,
    repeat: usize,
}

struct Bench {
    c2s: String,
    domain: String,
    window: usize,
    /// Measured messages of the loaded phase, and of the idle phase.
    messages: usize,
    idle_messages: usize,
    /// Runs of each system per size, interleaved; figures are medians.
    repeat: usize,
    pids: Pids,
}

impl Bench {
    async fn run(&self, sizes: &[usize]) -> Result<Report> {
        let states = tempfile::tempdir()?;
        let most = *sizes.iter().max().expect("sizes");
        eprintln!("# connecting {most} devices (accounts bench0..bench{})", most - 1);
        let mut clients: Vec<GroupClient> =
            futures::stream::iter(0..most).map(|i| self.device(states.path(), i)).buffered(8).try_collect().await?;
        let mut runs = Vec::new();
        let mut payload = (0, 0);
        for &size in sizes {
            let (medians, sizes) = self.size(&mut clients[..size]).await?;
            runs.extend(medians);
            payload = sizes;
        }
        let (ciphertext_bytes, body_chars) = payload;
        let service = Jid::new(&format!("mls.{}", self.domain))?;
        let mut vault = vault_places(&clients[0].session, &service).await?;
        vault.extend(history_cost(&mut clients[0], &service).await?);
        let (messages, idle_messages, window, repeat) = (self.messages, self.idle_messages, self.window, self.repeat);
        Ok(Report { runs, vault, ciphertext_bytes, body_chars, messages, idle_messages, window, repeat })
    }

    /// The three systems with every device of `group` as a member, run
    /// `repeat` times each (interleaved), as medians; and the sizes of the
    /// payload (ciphertext bytes, base64 characters).
    async fn size(&self, group: &mut [GroupClient]) -> Result<([Run; 3], (usize, usize))> {
        let size = group.len();
        let counts = self.counts(size);
        let per_run = 2 * WARMUP + counts.0 + counts.1;
        eprintln!("# {size} devices: an xmpp-mls group, a MUC room, a null component group");
        let jid = mls_group(group).await?;
        let mut ciphertexts = encrypt(&group[0], &jid, per_run * self.repeat)?.into_iter();
        let sample = encrypt(&group[0], &jid, 1)?.remove(0);
        let body = b64_encode(&sample);
        let room = format!("size{size}@conference.{}", self.domain);
        muc_join(group, &room).await?;
        let null = format!("size{size}@null.{}", self.domain);
        null_join(group, &null).await?;
        let mut systems = [(System::Mls, jid.to_string()), (System::Muc, room), (System::Null, null)];
        let mut samples: HashMap<System, Vec<Run>> = HashMap::new();
        for rep in 0..self.repeat {
            for (system, to) in &systems {
                let payloads = match system {
                    System::Mls => {
                        ciphertexts.by_ref().take(per_run).map(|c| GroupMessage::new(c).to_element()).collect()
                    }
                    _ => bodies(&body, per_run),
                };
                let run = self.compare(group, *system, to, payloads, &format!("{size}-{rep}"), counts).await?;
                samples.entry(*system).or_default().push(run);
            }
            systems.rotate_left(1); // no system always goes first
        }
        let medians = [System::Mls, System::Muc, System::Null].map(|s| median(&samples[&s]));
        Ok((medians, (sample.len(), body.len())))
    }

    /// Measured messages (loaded, idle) for groups of `size`: fewer in
    /// large groups, where each one is `size` stanzas.
    fn counts(&self, size: usize) -> (usize, usize) {
        (self.messages.min(STANZAS / size), self.idle_messages.min(STANZAS / 3 / size))
    }

    /// Device `i`: account `bench<i>`, logged in, published, with KeyPackages.
    async fn device(&self, states: &Path, i: usize) -> Result<GroupClient> {
        let account = BareJid::new(&format!("bench{i}@{}", self.domain))?;
        let mut opts = ConnectOptions::new(account.clone(), format!("bench{i}"));
        opts.server = Some(self.c2s.clone());
        opts.insecure_tcp = true;
        opts.resource = Some("d".into());
        let session = Session::connect(opts).await?;
        let device = Device::create(&states.join(format!("bench{i}.sqlite3")), account, None)?;
        let service = Jid::new(&format!("mls.{}", self.domain))?;
        session.publish_device(&service, &device.item(None)).await?;
        device.refill(&session, &service, 5, true).await?;
        Ok(GroupClient::start(session, device, service).await?)
    }

    /// The idle phase (one message in flight), then the loaded one, each
    /// with its share of `payloads`.
    async fn compare(
        &self,
        group: &mut [GroupClient],
        system: System,
        to: &str,
        mut payloads: Vec<Element>,
        round: &str,
        (messages, idle_messages): (usize, usize),
    ) -> Result<Run> {
        let loaded = payloads.split_off(WARMUP + idle_messages);
        let name = system.name();
        let idle = measure(group, system, to, payloads, &format!("{name}-{round}-idle-"), 1).await?;
        let (sent, before) = (loaded.len() as f64, self.pids.cpu(system));
        let loaded = measure(group, system, to, loaded, &format!("{name}-{round}-loaded-"), self.window).await?;
        let after = self.pids.cpu(system);
        let [prosody_cpu_us, component_cpu_us] = [0, 1].map(|i| Some((after[i]? - before[i]?) / sent * 1e6));
        eprintln!(
            "#   {:.0} msg/s ({} in flight), idle p50 {:.2} ms, p99 {:.2} ms; CPU µs/msg: Prosody {:?}, component {:?}",
            loaded.throughput, self.window, idle.p50_ms, idle.p99_ms, prosody_cpu_us, component_cpu_us
        );
        let devices = group.len();
        Ok(Run { system, devices, messages, idle_messages, loaded, idle, prosody_cpu_us, component_cpu_us })
    }
}

/// Sends `payloads` (each in a groupchat message to `to`, ids starting
/// with `prefix`) from the first device, at most `window` in flight, and
/// times their arrival at every other.
async fn measure(
    group: &mut [GroupClient],
    system: System,
    to: &str,
    payloads: Vec<Element>,
    prefix: &str,
    window: usize,
) -> Result<Phase> {
    drain(group).await;
    let stanzas = messages(to, prefix, payloads);
    let tracker = RefCell::new(Tracker::new(stanzas.len(), group.len() - 1));
    let window = Semaphore::new(window);
    let (sender, receivers) = group.split_at_mut(1);
    let sender = &sender[0].session;
    let send_all = async {
        for stanza in stanzas {
            window.acquire().await?.forget();
            tracker.borrow_mut().sent.push(Instant::now());
            sender.send(stanza).await?;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let archived = system != System::Null;
    let receive_all = futures::future::try_join_all(
        receivers.iter_mut().map(|r| receive(&mut r.session, prefix, archived, &tracker, &window)),
    );
    let outcome = tokio::select! {
        r = futures::future::try_join(send_all, receive_all) => r.map(drop),
        n = stalled(&tracker) => Err(format!("stalled after {n} complete messages").into()),
    };
    let refusals = refusals(&mut group[0].session, prefix);
    if let Err(e) = outcome {
        return Err(format!("{} with {} devices: {e}; sender got {refusals:?}", system.label(), group.len()).into());
    }
    if let Some(error) = refusals.first() {
        return Err(format!("{} refused a message: {error}", system.label()).into());
    }
    Ok(tracker.into_inner().phase())
}

/// Groupchat messages to `to`, numbered ids after `prefix`, one per payload.
fn messages(to: &str, prefix: &str, payloads: Vec<Element>) -> Vec<Element> {
    let message = |(i, payload)| {
        let b = Element::builder("message", CLIENT).attr(n("to"), to).attr(n("type"), "groupchat");
        b.attr(n("id"), format!("{prefix}{i}")).append(payload).build()
    };
    payloads.into_iter().enumerate().map(message).collect()
}

/// Returns (the number of completed messages) once none completed for [`STALL`].
async fn stalled(tracker: &RefCell<Tracker>) -> usize {
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(STALL).await;
        let now = tracker.borrow().completed;
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Send and completion times of one run's messages.
struct Tracker {
    sent: Vec<Instant>,
    /// Receivers yet to get each message.
    remaining: Vec<usize>,
    done: Vec<Option<Instant>>,
    completed: usize,
}

impl Tracker {
    fn new(messages: usize, receivers: usize) -> Self {
        Tracker { sent: Vec::new(), remaining: vec![receivers; messages], done: vec![None; messages], completed: 0 }
    }

    /// One receiver got message `i`; true when it was the last one.
    fn arrived(&mut self, i: usize) -> bool {
        self.remaining[i] -= 1;
        if self.remaining[i] > 0 {
            return false;
        }
        self.done[i] = Some(Instant::now());
        self.completed += 1;
        true
    }

    /// Figures over the messages after the warm-up.
    fn phase(self) -> Phase {
        let done: Vec<Instant> = self.done.into_iter().map(|d| d.expect("every message completed")).collect();
        let mut latencies: Vec<f64> =
            self.sent.iter().zip(&done).skip(WARMUP).map(|(s, d)| (*d - *s).as_secs_f64() * 1000.0).collect();
        latencies.sort_by(f64::total_cmp);
        let last = done[WARMUP..].iter().max().expect("messages");
        let elapsed = (*last - self.sent[WARMUP]).as_secs_f64();
        Phase {
            throughput: latencies.len() as f64 / elapsed,
            p50_ms: percentile(&latencies, 0.50),
            p99_ms: percentile(&latencies, 0.99),
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.saturating_sub(1).min(sorted.len() - 1)]
}

/// Counts one receiver's copies of this run's messages (by stanza id):
/// each exactly once, and stamped with a XEP-0359 stanza-id by archiving
/// systems.
async fn receive(
    session: &mut Session,
    prefix: &str,
    archived: bool,
    tracker: &RefCell<Tracker>,
    window: &Semaphore,
) -> Result<()> {
    let mut seen = vec![false; tracker.borrow().remaining.len()];
    let mut left = seen.len();
    while left > 0 {
        let stanza = session.next_event().await.ok_or("a receiver's connection closed")?;
        if stanza.name() != "message" || stanza.attr("type") == Some("error") {
            continue;
        }
        let Some(i) = stanza.attr("id").and_then(|id| id.strip_prefix(prefix)).and_then(|i| i.parse::<usize>().ok())
        else {
            continue;
        };
        if std::mem::replace(&mut seen[i], true) {
            return Err(format!("message {i} arrived twice").into());
        }
        if archived && stanza.get_child("stanza-id", NS_SID).is_none() {
            return Err(format!("message {i} arrived without a stanza-id: not archived").into());
        }
        left -= 1;
        if tracker.borrow_mut().arrived(i) {
            window.add_permits(1);
        }
    }
    Ok(())
}

/// Error replies to this run's messages that reached the sender.
fn refusals(sender: &mut Session, prefix: &str) -> Vec<String> {
    std::iter::from_fn(|| sender.try_next_event())
        .filter(|s| s.attr("type") == Some("error") && s.attr("id").is_some_and(|id| id.starts_with(prefix)))
        .map(|s| String::from(&s))
        .collect()
}

/// Drops what the devices received so far (presences, Welcomes, echoes).
async fn drain(group: &mut [GroupClient]) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    for c in group.iter_mut() {
        while c.session.try_next_event().is_some() {}
    }
}

fn bodies(text: &str, count: usize) -> Vec<Element> {
    (0..count).map(|_| Element::builder("body", CLIENT).append(text).build()).collect()
}

// ---------------------------------------------------------------- the three systems

/// An xmpp-mls group of every device in `group`, the first one creating it.
async fn mls_group(group: &mut [GroupClient]) -> Result<BareJid> {
    let (creator, others) = group.split_at_mut(1);
    let jid = creator[0].create().await?;
    let accounts: Vec<BareJid> = others.iter().map(|c| c.session.jid().to_bare()).collect();
    creator[0].add(&jid, &accounts).await?;
    futures::future::try_join_all(others.iter_mut().map(|c| joined(c, &jid))).await?;
    Ok(jid)
}

async fn joined(client: &mut GroupClient, group: &BareJid) -> Result<()> {
    loop {
        match client.next_event(Duration::from_secs(60)).await? {
            Some(GroupEvent::Joined { group: g }) if g == *group => return Ok(()),
            Some(_) => continue,
            None => return Err(format!("{} got no Welcome to {group}", client.session.jid()).into()),
        }
    }
}

/// `count` real MLS application messages of the sender into `group`,
/// encrypted ahead of time (the sender's state advances; it sends no more
/// into this group through its GroupClient).
fn encrypt(sender: &GroupClient, group: &BareJid, count: usize) -> Result<Vec<Vec<u8>>> {
    let Address::Group(id) = Address::parse(&Jid::from(group.clone()))? else {
        return Err(format!("{group} is not a group JID").into());
    };
    let device = sender.device();
    let mut mls = MlsGroup::load(device.provider().storage(), &GroupId::from_slice(&id))
        .map_err(|e| format!("{e:?}"))?
        .ok_or("the sender has no state for its group")?;
    let plaintext = vec![b'x'; PLAINTEXT_BYTES];
    (0..count)
        .map(|_| {
            let message = mls.create_message(device.provider(), device.signer(), &plaintext)?;
            Ok(message.tls_serialize_detached()?)
        })
        .collect()
}

/// Every device joins the MUC `room` (created by the first, no history).
async fn muc_join(group: &mut [GroupClient], room: &str) -> Result<()> {
    let (first, others) = group.split_at_mut(1);
    muc_enter(&mut first[0].session, room).await?;
    futures::future::try_join_all(others.iter_mut().map(|c| muc_enter(&mut c.session, room))).await?;
    Ok(())
}

async fn muc_enter(session: &mut Session, room: &str) -> Result<()> {
    let me = format!("{room}/{}", session.jid().node().map(|n| n.as_str()).unwrap_or("x"));
    let history = Element::builder("history", MUC_NS).attr(n("maxstanzas"), "0").build();
    let x = Element::builder("x", MUC_NS).append(history).build();
    session.send(Element::builder("presence", CLIENT).attr(n("to"), me.as_str()).append(x).build()).await?;
    answered(session, &me).await
}

/// Every device registers with the null component's `jid`.
async fn null_join(group: &mut [GroupClient], jid: &str) -> Result<()> {
    futures::future::try_join_all(group.iter_mut().map(|c| async {
        c.session.send(Element::builder("presence", CLIENT).attr(n("to"), jid).build()).await?;
        answered(&mut c.session, jid).await
    }))
    .await?;
    Ok(())
}

/// Waits for a presence from `from` (other stanzas are dropped).
async fn answered(session: &mut Session, from: &str) -> Result<()> {
    loop {
        let stanza = session.next_event_within(Duration::from_secs(30)).await.ok_or("no presence answer")?;
        if stanza.name() == "presence" && stanza.attr("from") == Some(from) {
            if stanza.attr("type") == Some("error") {
                return Err(format!("{from} refused {}: {}", session.jid(), String::from(&stanza)).into());
            }
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------- output

/// A figure's name, unit and where a run holds it.
type Metric = (&'static str, &'static str, fn(&Run) -> Option<f64>);

/// One printed figure and its ratios to the baselines.
/// Blobs written and read at each place by [`vault_places`].
const VAULT_BLOBS: usize = 100;

/// One account's vault at the MLS service and in its own server's PEP
/// nodes (Prosody's): the median time to write a sealed 1 KiB blob and to
/// read it back, one at a time, the service being the baseline.
async fn vault_places(session: &Session, service: &Jid) -> Result<Vec<Figure>> {
    let ms = |since: Instant| since.elapsed().as_secs_f64() * 1000.0;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut out: Vec<Figure> = Vec::new();
    for (place, label) in [(Location::Service(service.clone()), "service"), (Location::Pep, "pep")] {
        let vault = Vault::create(session, place, "bench passphrase", KdfParams { m_kib: 1024, t: 1, p: 1 }).await?;
        let (mut puts, mut gets) = (Vec::new(), Vec::new());
        for i in 0..VAULT_BLOBS {
            let name = format!("bench/blobs/{i}");
            let start = Instant::now();
            vault.put(session, &name, 0, &[7u8; 1024]).await?;
            puts.push(ms(start));
            let start = Instant::now();
            vault.get(session, &name).await?;
            gets.push(ms(start));
        }
        for (op, value) in [("put", median(puts)), ("get", median(gets))] {
            let base = out.iter().find(|f| f.name == format!("vault_{op}_service")).map(|f| f.value);
            let ratios = base.map(|b| vec![("service", value / b)]).unwrap_or_default();
            out.push(Figure { name: format!("vault_{op}_{label}"), value, unit: "ms", ratios });
        }
    }
    Ok(out)
}

/// Own messages sent by [`history_cost`] without and with history kept.
const HISTORY_MESSAGES: usize = 300;

/// One device alone in a group sends messages one at a time, each waiting
/// for its echo: first without history, then keeping it in the vault at
/// the service (a copy of each message written, folded into chunks). The
/// median time a message (no history the baseline), and the vault octets
/// written a message.
async fn history_cost(client: &mut GroupClient, service: &Jid) -> Result<Vec<Figure>> {
    let group = client.create().await?;
    let plain = own_messages(client, &group).await?;
    let vault = Vault::open(&client.session, service, "bench passphrase").await?;
    client.attach_vault(vault, 10);
    let before = client.vault().map_or(0, Vault::written);
    let kept = own_messages(client, &group).await?;
    let written = client.vault().map_or(0, Vault::written) - before;
    Ok(vec![
        Figure { name: "own_message".into(), value: plain, unit: "ms", ratios: vec![] },
        Figure { name: "own_message_history".into(), value: kept, unit: "ms", ratios: vec![("no history", kept / plain)] },
        Figure {
            name: "history_octets_per_message".into(),
            value: written as f64 / HISTORY_MESSAGES as f64,
            unit: "octets",
            ratios: vec![],
        },
    ])
}

/// The median time of [`HISTORY_MESSAGES`] messages from send to echo, in ms.
async fn own_messages(client: &mut GroupClient, group: &BareJid) -> Result<f64> {
    let mut times = Vec::with_capacity(HISTORY_MESSAGES);
    for i in 0..HISTORY_MESSAGES {
        let start = Instant::now();
        client.send_body(group, &format!("own message {i:04}")).await?;
        loop {
            match client.next_event(Duration::from_secs(30)).await? {
                Some(GroupEvent::Delivered { .. }) => break,
                Some(_) => continue,
                None => return Err("no echo of an own message".into()),
            }
        }
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    ratios: Vec<(&'static str, f64)>,
}

impl Report {
    fn figures(&self) -> Vec<Figure> {
        let by: HashMap<(System, usize), &Run> = self.runs.iter().map(|r| ((r.system, r.devices), r)).collect();
        let mut out = Vec::new();
        let metrics: [Metric; 5] = [
            ("throughput", "msg/s", |r| Some(r.loaded.throughput)),
            ("latency_p50", "ms", |r| Some(r.idle.p50_ms)),
            ("latency_p99", "ms", |r| Some(r.idle.p99_ms)),
            ("prosody_cpu", "µs/msg", |r| r.prosody_cpu_us),
            ("component_cpu", "µs/msg", |r| r.component_cpu_us),
        ];
        for run in &self.runs {
            let baselines: &[System] = match run.system {
                System::Mls => &[System::Muc, System::Null],
                System::Muc => &[System::Null],
                System::Null => &[],
            };
            for (metric, unit, get) in metrics {
                let Some(value) = get(run) else { continue };
                let ratios =
                    baselines.iter().filter_map(|b| Some((b.label(), value / get(by[&(*b, run.devices)])?))).collect();
                let name = format!("e2e_{metric}_{}_{}", run.system.name(), run.devices);
                out.push(Figure { name, value, unit, ratios });
            }
        }
        out.extend(self.vault.iter().map(|f| Figure { name: f.name.clone(), ratios: f.ratios.clone(), ..*f }));
        out
    }

    fn notes(&self) -> Vec<String> {
        vec![
            format!(
                "payload: real MLS application messages of a {PLAINTEXT_BYTES}-byte plaintext, {} bytes \
                 ({} base64 characters on the wire); MUC and null bodies are {} characters",
                self.ciphertext_bytes, self.body_chars, self.body_chars
            ),
            format!(
                "one sender, N-1 receivers; throughput over {} messages with {} in flight, latency over {} sent \
                 one at a time (send until the last receiver got it), each after {WARMUP} warm-up messages \
                 (fewer for large groups, at most {STANZAS} stanzas); medians of {} interleaved runs",
                self.messages, self.window, self.idle_messages, self.repeat
            ),
            "receivers count raw stanzas by id (not decrypted): delivery is measured, not client crypto".into(),
            "ratios: this system's figure / the baseline's (for latency and CPU, below 1 is better); CPU: \
             the process's time on CPU (all threads) during the loaded phase, per message sent"
                .into(),
        ]
    }

    fn print(&self) {
        for note in self.notes() {
            println!("# {note}");
        }
        for f in self.figures() {
            let ratios = if f.ratios.is_empty() {
                "baseline".to_owned()
            } else {
                f.ratios.iter().map(|(b, r)| format!("{r:.2}x {b}")).collect::<Vec<_>>().join(", ")
            };
            let value = if f.value >= 100.0 { format!("{:.0}", f.value) } else { format!("{:.2}", f.value) };
            println!("{}: {value} {} ({ratios})", f.name, f.unit);
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let figures: Vec<_> = self
            .figures()
            .into_iter()
            .map(|f| {
                let ratios: serde_json::Map<_, _> =
                    f.ratios.iter().map(|(b, r)| (b.to_string(), (*r).into())).collect();
                serde_json::json!({ "name": f.name, "value": f.value, "unit": f.unit, "ratios": ratios })
            })
            .collect();
        let runs: Vec<_> = self
            .runs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "system": r.system.name(), "devices": r.devices, "messages": r.messages,
                    "idle_messages": r.idle_messages, "throughput_msg_s": r.loaded.throughput,
                    "latency_p50_ms": r.idle.p50_ms, "latency_p99_ms": r.idle.p99_ms,
                    "loaded_latency_p50_ms": r.loaded.p50_ms, "loaded_latency_p99_ms": r.loaded.p99_ms,
                    "prosody_cpu_us_per_msg": r.prosody_cpu_us, "component_cpu_us_per_msg": r.component_cpu_us,
                })
            })
            .collect();
        serde_json::json!({
            "notes": self.notes(),
            "plaintext_bytes": PLAINTEXT_BYTES,
            "ciphertext_bytes": self.ciphertext_bytes,
            "body_chars": self.body_chars,
            "messages": self.messages,
            "idle_messages": self.idle_messages,
            "window": self.window,
            "repeat": self.repeat,
            "runs": runs,
            "figures": figures,
        })
    }
}
