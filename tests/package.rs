//! The Debian package, installed as an operator would: scripts/package-deb
//! packages the binary under test, `dpkg -i` installs it into a clean root
//! (its dpkg database holds only the packages the .deb depends on, as this
//! machine has them; its /etc/passwd and /etc/group are this machine's),
//! the maintainer scripts create the system user and the state directory
//! there, and the unit's ExecStart runs as systemd would run it: the
//! environment file loaded, as the unit's user, with the root's /etc, /usr
//! and /var/lib laid over the machine's in a private mount namespace
//! (nothing on the host changes). It answers disco through a private
//! server, and two devices share a group through it.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{alice_and_bob, expect, wait_until, Prosody, COMPONENT, SECRET};
use minidom::Element;
use xmpp_mls::client::{Content, GroupEvent};
use xmpp_parsers::jid::Jid;
use xmpp_parsers::ns;

fn run(command: &mut Command) -> Output {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(out.status.success(), "{command:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn stdout(command: &mut Command) -> String {
    String::from_utf8(run(command).stdout).unwrap()
}

/// scripts/package-deb on the binary under test: the .deb's path.
fn build_deb(out: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/package-deb");
    let printed = stdout(Command::new(script).args(["--binary", env!("CARGO_BIN_EXE_xmpp-mls")]).arg(out));
    PathBuf::from(printed.trim())
}

fn field(deb: &Path, name: &str) -> String {
    stdout(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name)).trim().to_owned()
}

/// A root with a dpkg database of exactly the packages `depends` names,
/// as installed here, and this machine's account files.
fn clean_root(depends: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let admin = root.path().join("var/lib/dpkg");
    for dir in ["info", "updates"] {
        std::fs::create_dir_all(admin.join(dir)).unwrap();
    }
    let names: Vec<&str> = depends.split(", ").filter(|d| !d.is_empty()).map(|d| d.split(' ').next().unwrap()).collect();
    let status = if names.is_empty() { String::new() } else { stdout(Command::new("dpkg-query").arg("--status").args(&names)) };
    std::fs::write(admin.join("status"), status).unwrap();
    for name in &names {
        let package = stdout(Command::new("dpkg-query").args(["--show", "--showformat=${binary:Package}", name]));
        std::fs::write(admin.join(format!("info/{package}.list")), "").unwrap();
    }
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    for file in ["passwd", "group"] {
        std::fs::copy(Path::new("/etc").join(file), root.path().join("etc").join(file)).unwrap();
    }
    root
}

/// `dpkg --root` with the maintainer scripts run outside a chroot
/// (DPKG_ROOT names the root): the root has no shell of its own.
fn dpkg(root: &Path, args: &[&str]) -> String {
    stdout(Command::new("dpkg").arg(format!("--root={}", root.display())).arg("--force-script-chrootless").args(args))
}

/// (mode, uid) of `path`.
fn mode_owner(path: &Path) -> (u32, u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.permissions().mode() & 0o7777, meta.uid())
}

/// The value of `key=` in the unit's [Service] section.
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).unwrap_or_else(|| panic!("no {key}= in the unit"))
}

/// The `xmpp-mls` account of the root's /etc/passwd: (uid, gid, whole line).
fn system_user(root: &Path) -> (u32, u32, String) {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let lines: Vec<&str> = passwd.lines().filter(|l| l.starts_with("xmpp-mls:")).collect();
    assert_eq!(lines.len(), 1, "{passwd}");
    let fields: Vec<&str> = lines[0].split(':').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap(), lines[0].to_owned())
}

/// The running unit's process, killed if the test ends before it stops.
struct Unit(Child);

impl Drop for Unit {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The unit's ExecStart as systemd runs it: in a mount namespace where the
/// root's /etc and /usr lie over the machine's (read-only) and its /var/lib
/// (writable), with only the variables systemd sets and those of the
/// EnvironmentFile, as User= and Group= with UMask=, in /.
fn start_unit(root: &Path, log: &Path) -> Unit {
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/xmpp-mls.service")).unwrap();
    let env_file = std::fs::read_to_string(root.join(unit_value(&unit, "EnvironmentFile").trim_start_matches('/'))).unwrap();
    let mut env: Vec<String> = env_file.lines().filter(|l| !l.starts_with('#') && l.contains('=')).map(str::to_owned).collect();
    let user = unit_value(&unit, "User");
    let state = format!("/var/lib/{}", unit_value(&unit, "StateDirectory"));
    env.extend([format!("USER={user}"), format!("LOGNAME={user}"), format!("HOME={state}"), format!("STATE_DIRECTORY={state}")]);
    env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let work = root.join(".overlay-work");
    std::fs::create_dir_all(&work).unwrap();
    let r = root.display();
    let script = format!(
        "set -e\n\
         mount -t overlay overlay -o lowerdir={r}/etc:/etc /etc\n\
         mount -t overlay overlay -o lowerdir={r}/usr:/usr /usr\n\
         mount -t overlay overlay -o lowerdir=/var/lib,upperdir={r}/var/lib,workdir={} /var/lib\n\
         cd /\n\
         umask {}\n\
         exec setpriv --reuid={user} --regid={} --clear-groups env -i \"$@\" {}",
        work.display(),
        unit_value(&unit, "UMask"),
        unit_value(&unit, "Group"),
        unit_value(&unit, "ExecStart"),
    );
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script, "sh"])
        .args(&env)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Unit(child)
}

/// The identities and features of a disco#info answer.
fn identities_and_features(query: &Element) -> Vec<String> {
    query.children().filter(|c| c.name() == "identity" || c.name() == "feature").map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deb_installs_into_a_clean_root_and_its_unit_serves_a_group_through_the_server() {
    let out = tempfile::tempdir().unwrap();
    let deb = build_deb(out.path());
    let arch = stdout(Command::new("dpkg").arg("--print-architecture")).trim().to_owned();
    assert_eq!(deb, out.path().join(format!("xmpp-mls_{}_{arch}.deb", env!("CARGO_PKG_VERSION"))));
    let fields = ["Package", "Version", "Architecture"].map(|f| field(&deb, f));
    assert_eq!(fields, ["xmpp-mls", env!("CARGO_PKG_VERSION"), arch.as_str()]);
    let depends = field(&deb, "Depends");
    assert!(depends.starts_with("libc6 (>= 2.") && depends.ends_with(", systemd"), "{depends}");
    let conffiles = stdout(Command::new("dpkg-deb").arg("--info").arg(&deb).arg("conffiles"));
    assert_eq!(conffiles, "/etc/xmpp-mls/config.toml\n/etc/xmpp-mls/env\n");

    // Without its dependencies in the database, dpkg refuses it.
    let empty = clean_root("");
    let refused = Command::new("dpkg").arg(format!("--root={}", empty.path().display())).args(["--force-script-chrootless", "-i"]).arg(&deb).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("depends on libc6"), "{}", String::from_utf8_lossy(&refused.stderr));

    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let root = clean_root(&depends);
    let r = root.path();
    let installed = dpkg(r, &["-i", deb.to_str().unwrap()]);
    assert!(installed.contains(&format!("Setting up xmpp-mls ({})", env!("CARGO_PKG_VERSION"))), "{installed}");
    let (uid, gid, line) = system_user(r);
    assert_eq!(line, format!("xmpp-mls:x:{uid}:{gid}:xmpp-mls component:/var/lib/xmpp-mls:/usr/sbin/nologin"));
    assert!(uid < 1000, "a system user: {line}");
    assert_eq!(mode_owner(&r.join("var/lib/xmpp-mls")), (0o700, uid));
    assert_eq!(mode_owner(&r.join("usr/bin/xmpp-mls")), (0o755, 0));
    assert_eq!(mode_owner(&r.join("etc/xmpp-mls/config.toml")), (0o644, 0));
    assert_eq!(mode_owner(&r.join("etc/xmpp-mls/env")), (0o600, 0));
    assert_eq!(std::fs::read_to_string(r.join("usr/lib/systemd/system/xmpp-mls.service")).unwrap(), include_str!("../packaging/xmpp-mls.service"));
    assert_eq!(std::fs::read_to_string("/etc/passwd").unwrap(), host_passwd, "the host's accounts are untouched");

    // The operator's part: the server's address and the secret.
    let prosody = Prosody::start();
    let config_path = r.join("etc/xmpp-mls/config.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    assert!(config.contains("\njid = \"mls.example.org\"\n") && config.contains("\npath = \"/var/lib/xmpp-mls/xmpp-mls.sqlite3\"\n"));
    assert!(!config.contains("\nsecret = "), "the secret belongs in the environment file");
    let config = config.replace("\nserver = \"127.0.0.1:5347\"\n", &format!("\nserver = \"127.0.0.1:{}\"\n", prosody.component_port));
    std::fs::write(&config_path, &config).unwrap();
    let env_path = r.join("etc/xmpp-mls/env");
    let env = std::fs::read_to_string(&env_path).unwrap().replace("\nXMPP_MLS_COMPONENT_SECRET=\n", &format!("\nXMPP_MLS_COMPONENT_SECRET={SECRET}\n"));
    std::fs::write(&env_path, &env).unwrap();

    // Installing again (an upgrade) keeps the edited conffiles and the one user.
    let again = dpkg(r, &["-i", deb.to_str().unwrap()]);
    assert!(!again.contains("Creating user"), "{again}");
    assert_eq!((std::fs::read_to_string(&config_path).unwrap(), std::fs::read_to_string(&env_path).unwrap()), (config, env));
    assert_eq!(system_user(r).0, uid);

    let log = out.path().join("unit.log");
    let mut unit = start_unit(r, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let connected = wait_until(Duration::from_secs(15), || read_log().contains("component connected"));
    assert!(connected, "{}", read_log());

    let session = prosody.client("carol", "laptop").await;
    let query = Element::builder("query", ns::DISCO_INFO).build();
    let info = session.iq(&Jid::new(COMPONENT).unwrap(), "get", query).await.unwrap().unwrap();
    let documented = common::xep::reply_with_id("disco-1");
    let documented = documented.get_child("query", ns::DISCO_INFO).unwrap();
    assert_eq!(identities_and_features(&info), identities_and_features(documented));

    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, group) = alice_and_bob(&prosody, &dir).await;
    alice.send_body(&group, "installed from the package").await.unwrap();
    let got = expect(&mut bob, "alice's message", |e| matches!(e, GroupEvent::Message { .. })).await;
    let GroupEvent::Message { content, .. } = got else { unreachable!() };
    assert_eq!(content, Content::from_body("installed from the package"));

    let _ = Command::new("kill").arg("-TERM").arg(unit.0.id().to_string()).status();
    assert_eq!(unit.0.wait().unwrap().code(), Some(0), "{}", read_log());
    let log_text = read_log();
    assert_eq!(log_text.matches("component connected").count(), 1, "{log_text}");
    assert_eq!(mode_owner(&r.join("var/lib/xmpp-mls/xmpp-mls.sqlite3")), (0o600, uid), "the store, the service user's alone");

    // Purge: the store and the configuration go, the system user stays.
    dpkg(r, &["--purge", "xmpp-mls"]);
    for gone in ["var/lib/xmpp-mls", "etc/xmpp-mls", "usr/bin/xmpp-mls", "usr/lib/systemd/system/xmpp-mls.service"] {
        assert!(!r.join(gone).exists(), "{gone} is left after purge");
    }
    assert_eq!(system_user(r).0, uid);
}
