//! End-to-end harness: a private XMPP server (Prosody, or ejabberd with
//! `XMPP_TEST_SERVER=ejabberd`) on free loopback ports in a temp dir,
//! the real `xmpp-mls` binary as its component, and logged-in c2s clients.
//! Every test gets its own instances, so tests run in parallel.
#![allow(dead_code)] // each test binary uses a different part

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use minidom::Element;
use xmpp_mls::client::{ConnectOptions, Session};
use xmpp_parsers::jid::BareJid;

pub const DOMAIN: &str = "example.org";
pub const COMPONENT: &str = "mls.example.org";
/// A second MLS service on the test server (e.g. to keep a vault).
pub const OTHER_COMPONENT: &str = "keys.example.org";
pub const OTHER_SECRET: &str = "other-component-secret";
/// The fixture's second VirtualHost: accounts of another domain.
pub const OTHER_DOMAIN: &str = "other.example";
pub const SECRET: &str = "component-secret";
pub mod cluster;
pub mod db;
pub mod ejabberd;
pub mod federation;
pub mod mls;
mod prosody;
pub mod scrape;
pub mod tls;
pub mod xep;

/// A free loopback port. Ports come from a per-process sequence (starting
/// at a place derived from the process id) rather than from the kernel's
/// ephemeral range, so that a port just released by one test is not handed
/// to another test of the same run; and from below that range (32768 and
/// up on Linux), so that no connection's or server's kernel-chosen port
/// takes it before the server that it is meant for binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_768;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let _ = NEXT.compare_exchange(0, FIRST + std::process::id().wrapping_mul(7_919) % COUNT, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = FIRST + (port - FIRST) % COUNT;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
}

/// `user@domain` as a bare JID.
pub fn bare(s: &str) -> BareJid {
    BareJid::new(s).unwrap()
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// The XMPP servers the suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Prosody,
    Ejabberd,
}

impl Kind {
    /// The server that `XMPP_TEST_SERVER` names: `prosody` (the default)
    /// or `ejabberd`. (Not `XMPP_MLS_…`: the component, which inherits the
    /// environment, refuses unknown variables of its own prefix.)
    pub fn chosen() -> Self {
        match std::env::var("XMPP_TEST_SERVER").as_deref() {
            Err(_) | Ok("" | "prosody") => Kind::Prosody,
            Ok("ejabberd") => Kind::Ejabberd,
            Ok(other) => panic!("XMPP_TEST_SERVER={other}: expected prosody or ejabberd"),
        }
    }
}

/// A private XMPP server of the [`Kind::chosen`] kind, serving [`DOMAIN`]
/// and [`OTHER_DOMAIN`], with [`COMPONENT`] on its component port.
pub struct Server {
    pub kind: Kind,
    pub dir: tempfile::TempDir,
    pub c2s_port: u16,
    pub component_port: u16,
    /// The component port of [`OTHER_COMPONENT`] (ejabberd gives a
    /// component connection every host of its listener).
    pub other_component_port: u16,
    /// The direct TLS (XEP-0368) c2s port: listening only on a server from
    /// [`Server::start_requiring_tls`].
    pub direct_tls_port: u16,
    /// ejabberd's admin API, through which accounts are registered.
    api_port: u16,
    child: Option<Child>,
}

/// The tests' name for [`Server`], from when Prosody was the only one.
pub type Prosody = Server;

impl Server {
    pub fn start() -> Self {
        let server = Self::configured();
        server.launched()
    }

    /// A server whose c2s port requires STARTTLS, and with direct TLS on
    /// [`Server::direct_tls_port`], with a certificate for [`DOMAIN`]
    /// issued by `ca`.
    pub fn start_requiring_tls(ca: &tls::TestCa) -> Self {
        let server = Self::configured();
        match server.kind {
            Kind::Prosody => prosody::require_tls(&server, ca),
            Kind::Ejabberd => ejabberd::require_tls(&server, ca),
        }
        server.launched()
    }

    fn configured() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (c2s_port, component_port, api_port) = (free_port(), free_port(), free_port());
        let (direct_tls_port, other_component_port) = (free_port(), free_port());
        let kind = Kind::chosen();
        let server = Server { kind, dir, c2s_port, component_port, other_component_port, direct_tls_port, api_port, child: None };
        match server.kind {
            Kind::Prosody => prosody::configure(&server),
            Kind::Ejabberd => ejabberd::configure(&server),
        }
        server
    }

    fn launched(mut self) -> Self {
        self.launch();
        self
    }

    fn launch(&mut self) {
        let mut command = match self.kind {
            Kind::Prosody => prosody::command(self),
            Kind::Ejabberd => ejabberd::command(self),
        };
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        self.child = Some(child.unwrap_or_else(|e| panic!("start {:?}: {e} (scripts/test installs it)", self.kind)));
        self.wait_listening();
    }

    /// Waits (30 s at most) until the server listens on each of its ports.
    fn wait_listening(&self) {
        let ports = match self.kind {
            Kind::Prosody => vec![self.c2s_port, self.component_port, self.other_component_port],
            Kind::Ejabberd => vec![self.c2s_port, self.component_port, self.other_component_port, self.api_port],
        };
        let up = wait_until(Duration::from_secs(30), || {
            ports.iter().all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
        });
        assert!(up, "{:?} did not listen: {}", self.kind, self.log());
    }

    /// SIGKILL: the server sends no stream close, the component sees an I/O error.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.kind == Kind::Ejabberd {
                ejabberd::kill(self);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Where the component connects: the component port, as host:port.
    pub fn component_address(&self) -> String {
        format!("127.0.0.1:{}", self.component_port)
    }

    /// Where [`OTHER_COMPONENT`] connects, as host:port.
    pub fn other_component_address(&self) -> String {
        format!("127.0.0.1:{}", self.other_component_port)
    }

    pub fn register(&self, user: &str, password: &str) {
        self.register_on(DOMAIN, user, password)
    }

    /// Registers `user@domain` on one of the server's domains ([`DOMAIN`]
    /// or [`OTHER_DOMAIN`]), or sets the password of an existing account.
    pub fn register_on(&self, domain: &str, user: &str, password: &str) {
        match self.kind {
            Kind::Prosody => prosody::register(self, domain, user, password),
            Kind::Ejabberd => ejabberd::register(self, domain, user, password),
        }
    }

    pub fn log(&self) -> String {
        match self.kind {
            Kind::Prosody => prosody::log(self),
            Kind::Ejabberd => ejabberd::log(self),
        }
    }

    /// Registers `user` (password = user) and logs in as `user@DOMAIN/resource`.
    pub async fn client(&self, user: &str, resource: &str) -> Session {
        self.client_on(DOMAIN, user, resource).await
    }

    /// Registers `user@domain` (password = user) and logs in with `resource`.
    pub async fn client_on(&self, domain: &str, user: &str, resource: &str) -> Session {
        self.register_on(domain, user, user);
        let mut opts = ConnectOptions::new(BareJid::new(&format!("{user}@{domain}")).unwrap(), user);
        opts.server = Some(format!("127.0.0.1:{}", self.c2s_port));
        opts.insecure_tcp = true;
        opts.resource = Some(resource.to_owned());
        opts.iq_timeout = Duration::from_secs(10);
        Session::connect(opts).await.expect("client login")
    }

    /// Whether the server replaces a client's 'from' that names another
    /// account with the client's own full JID (Prosody), rather than
    /// closing the client's stream with `<invalid-from/>` (ejabberd). RFC
    /// 6120 §8.1.2.1 allows either.
    pub fn stamps_spoofed_from(&self) -> bool {
        self.kind == Kind::Prosody
    }

    /// Sends `stanza`, whose 'from' names another account, and checks
    /// ejabberd's answer: it closes the stream with `<invalid-from/>`
    /// (which only its log names: the session does not report why its
    /// stream ended). `session` is closed afterwards.
    pub async fn assert_closed_for_invalid_from(&self, session: &mut Session, stanza: Element) {
        let jid = session.jid().to_string();
        session.send(stanza).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(10), async { while session.next_event().await.is_some() {} });
        assert!(closed.await.is_ok(), "{jid}'s stream is still open");
        let line = format!("Closing c2s session for {jid}: Stream closed by local host: Improper 'from' attribute (invalid-from)");
        assert!(wait_until(Duration::from_secs(5), || self.log().contains(&line)), "no {line:?} in the log");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `xmpp-mls serve` process, connected to a [`Server`].
pub struct Component {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    store: xmpp_mls::config::StoreConfig,
    /// Whether dropping this instance drops its store (the first one does).
    owns_store: bool,
    /// The server's component port it connects to, as host:port.
    server: String,
}

impl Component {
    /// Starts the binary with a config for `prosody`; `extra` is appended
    /// to the `[component]` section (more sections may follow it).
    pub fn start(prosody: &Prosody, extra: &str) -> Self {
        Self::start_with(&prosody.component_address(), COMPONENT, SECRET, extra)
    }

    /// [`Self::start`] as `jid` on any server's component port.
    pub fn start_with(server: &str, jid: &str, secret: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = db::new_store(dir.path());
        let config = format!(
            "[component]\njid = \"{jid}\"\nsecret = \"{secret}\"\nserver = \"{server}\"\n{extra}\n{}",
            db::store_section(&store),
        );
        std::fs::write(dir.path().join("xmpp-mls.toml"), config).unwrap();
        let mut c = Component { dir, child: None, store, owns_store: true, server: server.to_owned() };
        c.launch();
        assert!(c.wait_log("component connected", 1, Duration::from_secs(15)), "{}", c.log());
        c
    }

    /// Another instance of this component: the same configuration (domain,
    /// secret, server and store), its own process, directory and log. Not
    /// waited for: a server may refuse a second connection.
    pub fn another(&self) -> Component {
        self.another_at(&self.server)
    }

    /// [`Self::another`], but connected to `server`'s component port: the
    /// instance for another node of a cluster, on the same store.
    pub fn another_on(&self, server: &Server) -> Component {
        self.another_at(&server.component_address())
    }

    /// [`Self::another`], connected to `address` (host:port).
    fn another_at(&self, address: &str) -> Component {
        let config = std::fs::read_to_string(self.dir.path().join("xmpp-mls.toml")).unwrap();
        let (ours, theirs) = (format!("\nserver = \"{}\"\n", self.server), format!("\nserver = \"{address}\"\n"));
        assert!(config.contains(&ours), "no {ours:?} in {config}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("xmpp-mls.toml"), config.replacen(&ours, &theirs, 1)).unwrap();
        let mut c = Component { dir, child: None, store: self.store.clone(), owns_store: false, server: address.to_owned() };
        c.launch();
        c
    }

    fn launch(&mut self) {
        std::fs::File::create(self.log_path()).unwrap();
        self.launch_appending();
    }

    /// Starts the process; its log goes after what the log file holds.
    fn launch_appending(&mut self) {
        let log = std::fs::OpenOptions::new().append(true).open(self.log_path()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_xmpp-mls"))
            .args(["serve", "--config"])
            .arg(self.dir.path().join("xmpp-mls.toml"))
            .env("XMPP_MLS_LOG_LEVEL", "debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start xmpp-mls");
        self.child = Some(child);
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("component.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn count_in_log(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// The component never lost its stream (one connection in its log) and
    /// never dropped a stanza for its size.
    pub fn assert_never_reconnected(&self) {
        let log = self.log();
        assert_eq!(log.matches("component connected").count(), 1, "{log}");
        assert!(!log.contains("connection lost"), "{log}");
        assert!(!log.contains("stanza over limits.max_stanza_out"), "{log}");
    }

    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.count_in_log(needle) >= count)
    }

    /// Sends SIGTERM and returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let status = child.wait().ok()?;
        status.code()
    }

    /// The SQLite file of the store (for the tests of SQLite's own
    /// behaviour: its files, its backups).
    pub fn store_path(&self) -> PathBuf {
        self.store.path.clone()
    }

    /// The component's store, for SQL beside it (either backend).
    pub fn db(&self) -> db::StoreDb {
        db::StoreDb { config: self.store.clone() }
    }

    /// SIGKILL: no shutdown, no final commit or checkpoint.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same config and store (after [`Self::kill`] or
    /// [`Self::terminate`]) and waits for the connection.
    pub fn restart(&mut self) {
        let connected = self.count_in_log("component connected");
        self.launch_appending();
        let up = self.wait_log("component connected", connected + 1, Duration::from_secs(15));
        assert!(up, "{}", self.log());
    }

    /// The peak resident set size of the running process, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.owns_store {
            db::drop_store(&self.store);
        }
        if std::thread::panicking() {
            eprintln!("--- component log ---\n{}", self.log());
        }
    }
}

/// Runs the binary with `args` and returns (exit code, stderr).
pub fn run_binary(args: &[&str], dir: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xmpp-mls"))
        .args(args)
        .current_dir(dir)
        .env_remove("XMPP_MLS_CONFIG")
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Parses XML and drops whitespace-only text, for comparing stanzas.
pub fn normalise(xml: &str) -> Element {
    let el: Element = xml.parse().unwrap_or_else(|e| panic!("{e}: {xml}"));
    strip_whitespace(el)
}

pub fn strip_whitespace(el: Element) -> Element {
    let mut out = Element::bare(el.name(), el.ns());
    *out.attrs_mut() = el.attrs().clone();
    let mut el = el;
    for node in el.take_nodes() {
        match node {
            minidom::Node::Element(c) => {
                out.append_child(strip_whitespace(c));
            }
            minidom::Node::Text(t) if t.trim().is_empty() => {}
            minidom::Node::Text(t) => out.append_text_node(t),
        }
    }
    out
}

/// A received stanza as the XEP shows it: whitespace dropped and without
/// the top-level `xml:lang` that the client's server stamps (RFC 6120 §4.7.4).
pub fn as_received(stanza: &Element) -> Element {
    let mut el = strip_whitespace(stanza.clone());
    el.attrs_mut().remove("http://www.w3.org/XML/1998/namespace", "lang");
    el
}

pub fn to_string(el: &Element) -> String {
    String::from(el)
}

/// The key (`archive.pos`: group number << 32 | position) of the archived
/// item with `stanza_id`, found by computing each item's id as the store
/// does (it keeps the ids of migrated items only).
pub fn archive_pos(db: &db::StoreDb, stanza_id: &str) -> i64 {
    let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = db.with(|c| {
        let sql = "SELECT a.pos, g.group_id, a.message FROM archive a JOIN groups g ON g.num = a.pos >> 32";
        c.query_map(sql, &[], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
    });
    let found = rows
        .into_iter()
        .find(|(pos, group, message)| xmpp_mls::store::stanza_id(group, (pos & 0xffff_ffff) as u64, message) == stanza_id);
    found.unwrap_or_else(|| panic!("{stanza_id} is not archived")).0
}

/// SQL: the archive rows of the group whose id is parameter ?1.
pub const GROUP_ROWS: &str = "pos >> 32 = (SELECT num FROM groups WHERE group_id = ?1)";


/// A logged-in device of `user` with a published key and `pool`
/// KeyPackages, its state in `dir/<user>-<resource>.sqlite3`.
pub async fn member(prosody: &Prosody, dir: &tempfile::TempDir, user: &str, resource: &str) -> xmpp_mls::client::GroupClient {
    member_on(prosody, dir, DOMAIN, user, resource).await
}

/// [`member`] for an account of `domain`.
pub async fn member_on(
    prosody: &Prosody,
    dir: &tempfile::TempDir,
    domain: &str,
    user: &str,
    resource: &str,
) -> xmpp_mls::client::GroupClient {
    new_device(prosody.client_on(domain, user, resource).await, dir, COMPONENT).await
}

/// The device of [`member`], back online from its state file.
pub async fn reconnect(prosody: &Prosody, dir: &tempfile::TempDir, user: &str, resource: &str) -> xmpp_mls::client::GroupClient {
    old_device(prosody.client(user, resource).await, dir, COMPONENT).await
}

/// Where the device of `session` keeps its state in `dir`.
fn device_path(session: &Session, dir: &tempfile::TempDir) -> PathBuf {
    let jid = session.jid();
    dir.path().join(format!("{}-{}.sqlite3", jid.node().map(|n| n.as_str()).unwrap_or(""), jid.resource()))
}

/// A new device of `session`'s account: its key published at `service`,
/// with KeyPackages; its state in `dir/<user>-<resource>.sqlite3`.
pub async fn new_device(session: Session, dir: &tempfile::TempDir, service: &str) -> xmpp_mls::client::GroupClient {
    let path = device_path(&session, dir);
    let device = xmpp_mls::client::Device::create(&path, session.jid().to_bare(), None).unwrap();
    let service = xmpp_parsers::jid::Jid::new(service).unwrap();
    session.publish_device(&service, &device.item(None)).await.unwrap();
    device.refill(&session, &service, 5, true).await.unwrap();
    xmpp_mls::client::GroupClient::start(session, device, service).await.unwrap()
}

/// The device of [`new_device`], back online on `session`.
pub async fn old_device(session: Session, dir: &tempfile::TempDir, service: &str) -> xmpp_mls::client::GroupClient {
    let device = xmpp_mls::client::Device::open(&device_path(&session, dir), &session.jid().to_bare()).unwrap();
    let service = xmpp_parsers::jid::Jid::new(service).unwrap();
    xmpp_mls::client::GroupClient::start(session, device, service).await.unwrap()
}

/// Waits (20 s at most) for the first event matching `pred`, skipping others.
pub async fn expect(
    client: &mut xmpp_mls::client::GroupClient,
    what: &str,
    pred: impl Fn(&xmpp_mls::client::GroupEvent) -> bool,
) -> xmpp_mls::client::GroupEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event(left).await.unwrap() {
            Some(e) if pred(&e) => return e,
            Some(_) => continue,
            None => panic!("no {what} in time"),
        }
    }
}

/// Where in the component's store (its files, or its PostgreSQL rows) and
/// log `needle` occurs, raw or base64-encoded: the at-rest check for secrets.
pub fn found_in(component: &Component, needle: &[u8]) -> Vec<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(needle);
    let mut places = vec![("log".to_owned(), component.log().into_bytes())];
    let db = component.db();
    match db.is_postgres() {
        true => places.extend(db.dump().into_iter().map(|(table, rows)| (table, rows.concat().concat()))),
        false => {
            let store = component.store_path();
            for path in [store.clone(), store.with_extension("sqlite3-wal")] {
                if let Ok(bytes) = std::fs::read(&path) {
                    places.push((path.display().to_string(), bytes));
                }
            }
        }
    }
    let has = |hay: &[u8], n: &[u8]| hay.windows(n.len()).any(|w| w == n);
    places.into_iter().filter(|(_, bytes)| has(bytes, needle) || has(bytes, b64.as_bytes())).map(|(f, _)| f).collect()
}

/// alice's laptop and bob's phone ([`member`]s) in a group alice created,
/// The whole reply to one IQ, without the client library's retries.
pub async fn raw(session: &Session, to: &xmpp_parsers::jid::Jid, type_: &str, payload: Element) -> Element {
    session.request(xmpp_mls::client::iq_element(type_, &session.next_id(), to.as_str(), Some(payload))).await.unwrap()
}

/// "result", or the error as `describe` writes it.
pub fn outcome(reply: &Element) -> String {
    match reply.get_child("error", "jabber:client") {
        None => reply.attr("type").unwrap_or_default().to_owned(),
        Some(e) => xmpp_mls::client::describe(&xmpp_parsers::stanza_error::StanzaError::try_from(e.clone()).unwrap()),
    }
}

/// bob's Welcome applied.
pub async fn alice_and_bob(
    prosody: &Prosody,
    dir: &tempfile::TempDir,
) -> (xmpp_mls::client::GroupClient, xmpp_mls::client::GroupClient, BareJid) {
    let mut alice = member(prosody, dir, "alice", "laptop").await;
    let mut bob = member(prosody, dir, "bob", "phone").await;
    let group = alice.create().await.unwrap();
    alice.add(&group, &[BareJid::new(&format!("bob@{DOMAIN}")).unwrap()]).await.unwrap();
    expect(&mut bob, "welcome", |e| matches!(e, xmpp_mls::client::GroupEvent::Joined { .. })).await;
    (alice, bob, group)
}

/// Drains events until the group reaches `epoch`.
pub async fn reach(client: &mut xmpp_mls::client::GroupClient, group: &BareJid, epoch: u64) {
    while client.epoch(group).unwrap() < epoch {
        expect(client, "commit", |e| matches!(e, xmpp_mls::client::GroupEvent::Epoch { .. })).await;
    }
}

/// A group of `n` accounts u0 … u{n-1}, one device each (device "d"),
/// which u0 created and added the others to; every device has joined.
pub async fn one_group(server: &Server, dir: &tempfile::TempDir, n: usize) -> (Vec<xmpp_mls::client::GroupClient>, BareJid) {
    one_group_over(&[server], dir, n).await
}

/// [`one_group`] with u{i}'s device connected to `servers[i % servers.len()]`
/// (to each node of a cluster in turn).
pub async fn one_group_over(
    servers: &[&Server],
    dir: &tempfile::TempDir,
    n: usize,
) -> (Vec<xmpp_mls::client::GroupClient>, BareJid) {
    let mut devices = Vec::new();
    for i in 0..n {
        devices.push(member(servers[i % servers.len()], dir, &format!("u{i}"), "d").await);
    }
    let group = devices[0].create().await.unwrap();
    let others: Vec<BareJid> = (1..n).map(|i| bare(&format!("u{i}@example.org"))).collect();
    devices[0].add(&group, &others).await.unwrap();
    for d in devices.iter_mut().skip(1) {
        expect(d, "welcome", |e| matches!(e, xmpp_mls::client::GroupEvent::Joined { .. })).await;
    }
    (devices, group)
}

/// `rounds` of concurrent Commits in `group`, whose members are
/// `devices`: in round r the first 2 + r mod (n - 1) devices update at
/// once, and each gets its Commit in (retrying after a lost epoch). Then
/// every device reaches the last epoch, and all agree on it. Returns the
/// group's Commits so far (its creation counts one).
pub async fn race_commits(devices: &mut [xmpp_mls::client::GroupClient], group: &BareJid, rounds: usize) -> usize {
    let mut commits = 1;
    for round in 0..rounds {
        let contenders = 2 + round % (devices.len() - 1);
        let results = futures::future::join_all(devices[..contenders].iter_mut().map(|d| d.update(group))).await;
        for r in results {
            r.expect("every contender gets its commit in, retrying after a lost epoch");
        }
        commits += contenders;
    }
    let mut checks = std::collections::HashSet::new();
    for d in devices.iter_mut() {
        reach(d, group, commits as u64).await;
        assert_eq!(d.epoch(group).unwrap(), commits as u64);
        checks.insert(d.epoch_check(group).unwrap());
    }
    assert_eq!(checks.len(), 1, "devices disagree on the epoch: {checks:?}");
    commits
}

/// Commits of each epoch in the store's archive, as (epoch, count).
pub fn commits_per_epoch(db: &db::StoreDb) -> Vec<(i64, i64)> {
    let sql = "SELECT epoch, count(*) FROM archive WHERE kind = 1 GROUP BY epoch ORDER BY epoch";
    db.with(|c| c.query_map(sql, &[], |r| Ok((r.get(0)?, r.get(1)?))))
}

/// Whether this run has what several instances of the component on one
/// store need: ejabberd (Prosody takes one connection per component
/// domain) and PostgreSQL. Says why not.
pub fn several_instances_possible() -> bool {
    let possible = Kind::chosen() == Kind::Ejabberd && db::postgres().is_some();
    if !possible {
        eprintln!("skipped: several instances need ejabberd (XMPP_TEST_SERVER=ejabberd) and PostgreSQL (XMPP_TEST_POSTGRES)");
    }
    possible
}

/// [`race_commits`] in a group that `instances` of the component, all on
/// one store, serve at once: exactly one accepted commit per epoch in the
/// store, and each instance refused at least one lost race.
pub async fn race_commits_over(
    instances: &[&Component],
    devices: &mut [xmpp_mls::client::GroupClient],
    group: &BareJid,
    rounds: usize,
) {
    let commits = race_commits(devices, group, rounds).await;
    let per_epoch = commits_per_epoch(&instances[0].db());
    assert_eq!(per_epoch.len(), commits, "one accepted commit per epoch: {per_epoch:?}");
    assert!(per_epoch.iter().all(|(_, n)| *n == 1), "two commits won one epoch: {per_epoch:?}");
    for (i, instance) in instances.iter().enumerate() {
        assert!(instance.count_in_log("request refused") > 0, "instance {i} decided no lost race:\n{}", instance.log());
    }
}

/// The one-time KeyPackages that alice has in [`race_claims`].
pub const ONE_TIME_KPS: usize = 12;

/// `claimers` accounts claim a KeyPackage of alice@example.org at once:
/// alice's laptop (on the first of `servers`) has [`ONE_TIME_KPS`] one-time
/// KeyPackages and a last-resort one; claimer{i} is on `servers[i %
/// servers.len()]`. Each one-time KeyPackage is handed out exactly once,
/// the last-resort one to each of the rest.
pub async fn race_claims(servers: &[&Server], claimers: usize) {
    use xmpp_mls::protocol::keypackages::{Claim, ClaimOutcome};
    assert!(claimers > ONE_TIME_KPS, "more claimers than one-time KeyPackages");
    let service = xmpp_parsers::jid::Jid::new(COMPONENT).unwrap();
    let owner = servers[0].client("alice", "laptop").await;
    let alice = mls::TestSigner::new("alice@example.org");
    owner.publish_device(&service, &alice.device("laptop-1", None)).await.unwrap();
    let mut kps: Vec<Vec<u8>> = (0..ONE_TIME_KPS).map(|_| alice.valid_kp()).collect();
    kps.push(alice.last_resort_kp());
    let refs = owner.upload_key_packages(&service, &kps).await.unwrap();
    let mut sessions = Vec::new();
    for i in 0..claimers {
        sessions.push(servers[i % servers.len()].client(&format!("claimer{i}"), "c").await);
    }
    let any = Claim::default();
    let results = futures::future::join_all(sessions.iter().map(|s| s.claim(&service, &alice.account, &any))).await;
    let mut handed = std::collections::HashMap::<String, usize>::new();
    for r in results {
        let outcomes = r.expect("claim answered");
        let [ClaimOutcome::Claimed { kp_ref, .. }] = outcomes.as_slice() else { panic!("one package per claim: {outcomes:?}") };
        *handed.entry(kp_ref.clone()).or_default() += 1;
    }
    let (one_time, last_resort) = (&refs[..ONE_TIME_KPS], &refs[ONE_TIME_KPS]);
    let mut expected: std::collections::HashMap<String, usize> = one_time.iter().map(|r| (r.clone(), 1)).collect();
    expected.insert(last_resort.clone(), claimers - ONE_TIME_KPS);
    assert_eq!(handed, expected, "each one-time package once ({one_time:?}), the last-resort one ({last_resort}) for the rest");
}

/// Key derivation cheap enough for tests (the vault's passphrase).
pub const FAST: xmpp_mls::client::KdfParams = xmpp_mls::client::KdfParams { m_kib: 1024, t: 1, p: 1 };

/// Adds one to the vault's big-endian `counter` `times` times, each a
/// compare-and-swap on the version read, retried after a conflict;
/// returns how many conflicts were retried.
pub async fn bump_counter(vault: &xmpp_mls::client::Vault, session: &Session, times: usize) -> usize {
    let mut conflicts = 0;
    for _ in 0..times {
        loop {
            let (version, data) = vault.get(session, "counter").await.unwrap().unwrap();
            let n = u64::from_be_bytes(data.try_into().unwrap());
            match vault.put(session, "counter", version, &(n + 1).to_be_bytes()).await {
                Ok(_) => break,
                Err(xmpp_mls::client::VaultError::Conflict(..)) => conflicts += 1,
                Err(e) => panic!("{e}"),
            }
        }
    }
    conflicts
}
