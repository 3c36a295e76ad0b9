//! Two private Prosody servers federating over loopback (shared/federation.md):
//! a.test on 127.0.0.2 with the component mls.a.test, b.test (and c.test)
//! on 127.0.0.3, each on free ports (none of 5222, 5269, 5347, which a
//! developer's own server may hold on every address), names from a private
//! hosts file, s2s ports from the test module mod_s2s_test_ports. One
//! federation at a time ([`Federation::start`] holds a lock for its
//! lifetime), so that two do not compete for the machine.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use xmpp_mls::client::{ConnectOptions, Session};
use xmpp_parsers::jid::BareJid;

use super::{free_port, wait_until};

pub const HOME: &str = "a.test";
pub const REMOTE: &str = "b.test";
/// A second domain of the remote server, for admission policies.
pub const DENIED: &str = "c.test";
pub const SERVICE: &str = "mls.a.test";
pub const SECRET: &str = "federation-secret";

const TEMPLATE: &str = include_str!("../fixtures/prosody-federated.cfg.lua.template");
const PLUGINS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/prosody-plugins");

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// One of the two servers.
struct Server {
    dir: PathBuf,
    ip: &'static str,
    c2s_port: u16,
    component_port: u16,
    child: Option<Child>,
}

impl Server {
    fn config(&self) -> PathBuf {
        self.dir.join("prosody.cfg.lua")
    }

    fn launch(&mut self) {
        let child = Command::new("prosody")
            .arg("--config")
            .arg(self.config())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prosody");
        self.child = Some(child);
        let up = wait_until(Duration::from_secs(15), || std::net::TcpStream::connect((self.ip, self.c2s_port)).is_ok());
        assert!(up, "prosody on {} did not listen", self.ip);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub struct Federation {
    _dir: tempfile::TempDir,
    home: Server,
    remote: Server,
    _lock: MutexGuard<'static, ()>,
}

impl Federation {
    pub fn start() -> Self {
        let lock = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, format!("127.0.0.2 {HOME} {SERVICE}\n127.0.0.3 {REMOTE} {DENIED}\n")).unwrap();
        let (home_s2s, remote_s2s) = (free_port(), free_port());
        let s2s_test_ports = [(HOME, home_s2s), (SERVICE, home_s2s), (REMOTE, remote_s2s), (DENIED, remote_s2s)]
            .map(|(domain, port)| format!("[\"{domain}\"] = {port};"))
            .join(" ");
        let server = |name: &str, ip: &'static str, s2s_port: u16, domains: &[&str], component: Option<&str>| {
            let d = dir.path().join(name);
            for sub in ["data", "certs"] {
                std::fs::create_dir_all(d.join(sub)).unwrap();
            }
            let (c2s_port, component_port) = (free_port(), free_port());
            let vhosts: Vec<String> = domains.iter().map(|d| format!("VirtualHost \"{d}\"")).collect();
            let components =
                component.map(|c| format!("Component \"{c}\"\n  component_secret = \"{SECRET}\"")).unwrap_or_default();
            let config = TEMPLATE
                .replace("@DIR@", d.to_str().unwrap())
                .replace("@IP@", ip)
                .replace("@C2S_PORT@", &c2s_port.to_string())
                .replace("@S2S_PORT@", &s2s_port.to_string())
                .replace("@COMPONENT_PORT@", &component_port.to_string())
                .replace("@PLUGINS@", PLUGINS)
                .replace("@S2S_TEST_PORTS@", &s2s_test_ports)
                .replace("@HOSTS@", hosts.to_str().unwrap())
                .replace("@DOMAINS@", &vhosts.join("\n"))
                .replace("@COMPONENTS@", &components);
            std::fs::write(d.join("prosody.cfg.lua"), config).unwrap();
            let mut s = Server { dir: d, ip, c2s_port, component_port, child: None };
            s.launch();
            s
        };
        let home = server("a", "127.0.0.2", home_s2s, &[HOME], Some(SERVICE));
        let remote = server("b", "127.0.0.3", remote_s2s, &[REMOTE, DENIED], None);
        Federation { _dir: dir, home, remote, _lock: lock }
    }

    fn server(&self, domain: &str) -> &Server {
        if domain == HOME { &self.home } else { &self.remote }
    }

    /// The component's server address.
    pub fn component_server(&self) -> String {
        format!("{}:{}", self.home.ip, self.home.component_port)
    }

    /// Registers `user@domain` (password = user) and logs in there.
    pub async fn client(&self, user: &str, domain: &str, resource: &str) -> Session {
        let server = self.server(domain);
        let out = Command::new("prosodyctl")
            .arg("--config")
            .arg(server.config())
            .args(["register", user, domain, user])
            .output()
            .unwrap();
        assert!(out.status.success(), "register {user}@{domain}: {}", String::from_utf8_lossy(&out.stderr));
        let mut opts = ConnectOptions::new(BareJid::new(&format!("{user}@{domain}")).unwrap(), user);
        opts.server = Some(format!("{}:{}", server.ip, server.c2s_port));
        opts.insecure_tcp = true;
        opts.resource = Some(resource.to_owned());
        opts.iq_timeout = Duration::from_secs(10);
        Session::connect(opts).await.expect("client login")
    }

    /// Stops the remote server (SIGKILL: its links just drop).
    pub fn stop_remote(&mut self) {
        self.remote.kill();
    }

    /// Starts the remote server again, with the same data.
    pub fn restart_remote(&mut self) {
        self.remote.kill();
        self.remote.launch();
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        self.home.kill();
        self.remote.kill();
    }
}
