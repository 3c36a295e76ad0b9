//! A test CA and a certificate for [`DOMAIN`] that it issued, made with the
//! openssl command line (scripts/test installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::DOMAIN;

pub struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa { dir };
        // ejabberd runs as its own user and reads the certificate here.
        Command::new("chmod").arg("755").arg(ca.dir.path()).status().unwrap();
        ca.openssl(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=xmpp-mls test CA",
            "-keyout", "ca.key", "-out", "ca.pem"]);
        ca.openssl(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", &format!("/CN={DOMAIN}"),
            "-keyout", "server.key", "-out", "server.csr"]);
        std::fs::write(ca.path("ext.cnf"), format!("subjectAltName = DNS:{DOMAIN}\n")).unwrap();
        ca.openssl(&["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "ext.cnf", "-out", "server.crt"]);
        let pem = [ca.path("server.crt"), ca.path("server.key")].map(|p| std::fs::read_to_string(p).unwrap()).concat();
        std::fs::write(ca.path("server.pem"), pem).unwrap();
        for file in ["server.key", "server.pem"] {
            Command::new("chmod").arg("644").arg(ca.path(file)).status().unwrap();
        }
        ca
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl").args(args).current_dir(self.dir.path()).output()
            .expect("openssl is not installed: run scripts/test, which installs it");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The CA's certificate (PEM), what a client is told to trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.path("ca.pem")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
