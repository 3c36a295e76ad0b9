//! `xmpp-mls`: run the component (`serve`), look after its store (`admin`)
//! or act as a client (`client`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

mod admin;
mod cli;
mod logging;

use clap::{Parser, Subcommand};
use tokio::sync::watch;
use xmpp_mls::client::{ClientError, ConnectOptions, Session};
use xmpp_mls::component::ServeError;
use xmpp_mls::config::{Config, LogFormat, ANNOTATED_DEFAULTS, SECRET_KEYS};
use xmpp_parsers::jid::{BareJid, Jid};

/// Where `serve` and `admin` read their configuration unless told otherwise.
const DEFAULT_CONFIG: &str = "/etc/xmpp-mls/config.toml";
/// `serve`'s exit code when the XMPP server refuses the component's secret:
/// a restart does not fix it (the systemd unit lists it in RestartPreventExitStatus).
const EXIT_SECRET_REFUSED: u8 = 6;

/// MLS (RFC 9420) group encryption for any XMPP server, as an external
/// component (XEP-0114).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the component.
    ///
    /// Every config key can be overridden by an environment variable
    /// XMPP_MLS_<SECTION>_<KEY>, e.g. XMPP_MLS_COMPONENT_SECRET;
    /// `xmpp-mls config defaults` lists the keys.
    ///
    /// Exit codes: 0 stopped by SIGTERM or SIGINT, 1 other failure, 2 bad
    /// configuration, 6 the XMPP server refused component.secret.
    Serve {
        /// The TOML configuration file.
        #[arg(long, short, env = "XMPP_MLS_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check a configuration, or print the annotated defaults.
    #[command(subcommand)]
    Config(ConfigAction),
    /// Inspect and maintain the component's store (the component may be
    /// running).
    Admin {
        /// The component's TOML configuration file.
        #[arg(long, short, env = "XMPP_MLS_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: admin::AdminAction,
    },
    /// Act as a client of an MLS service through an XMPP account.
    ///
    /// Exit codes: 0 success, 1 other failure, 2 bad arguments (or no
    /// password), 3 the server's certificate was refused, 4 the server offered no TLS, 5 authentication failed.
    Client {
        /// The account's bare JID, e.g. alice@example.org.
        #[arg(long)]
        jid: BareJid,
        #[command(flatten)]
        password: PasswordArgs,
        /// The XMPP server's c2s address host:port (default: SRV records of
        /// the JID's domain, else the domain itself on port 5222, 5223 with
        /// --direct-tls).
        #[arg(long)]
        server: Option<String>,
        /// TLS from the first byte (XEP-0368) instead of STARTTLS.
        #[arg(long, conflicts_with = "insecure_tcp")]
        direct_tls: bool,
        /// PEM CA certificates trusted besides the system roots (which
        /// SSL_CERT_FILE replaces).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Plain TCP without TLS: loopback test servers only.
        #[arg(long)]
        insecure_tcp: bool,
        /// The MLS service's JID (default: mls.<the JID's domain>).
        #[arg(long)]
        service: Option<Jid>,
        /// This device's state file (default: xmpp-mls-<account>.sqlite3).
        #[arg(long)]
        state: Option<PathBuf>,
        #[command(subcommand)]
        action: cli::ClientAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate a configuration file as `serve` does (exit 2 on a problem)
    /// and print the configuration in effect: the file, the environment
    /// overrides and the defaults, with component.secret masked.
    Check {
        /// The TOML configuration file.
        #[arg(env = "XMPP_MLS_CONFIG", default_value = DEFAULT_CONFIG)]
        path: PathBuf,
    },
    /// Print every key with its default and what it means, as TOML.
    Defaults,
}

/// Where the account's password comes from: --password-file, else
/// XMPP_MLS_PASSWORD, else a prompt on the terminal (no echo).
#[derive(clap::Args)]
struct PasswordArgs {
    /// A file holding the account's password (one final newline is
    /// ignored).
    #[arg(long, conflicts_with = "password")]
    password_file: Option<PathBuf>,
    /// Refused unless --insecure-password-arg is given too: every local
    /// user can read a command line (ps, /proc).
    #[arg(long)]
    password: Option<String>,
    /// Accept --password anyway (a private test machine).
    #[arg(long, requires = "password")]
    insecure_password_arg: bool,
}

impl PasswordArgs {
    /// The password, or the reason there is none (exit code 2).
    fn read(self) -> Result<String, String> {
        if let Some(password) = self.password {
            if !self.insecure_password_arg {
                return Err("--password is refused: every local user can read a command line; use --password-file FILE, \
                            XMPP_MLS_PASSWORD or the prompt on a terminal (or add --insecure-password-arg)"
                    .to_owned());
            }
            return Ok(password);
        }
        if let Some(path) = self.password_file {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("--password-file {}: {e}", path.display()))?;
            let password = text.strip_suffix('\n').unwrap_or(&text);
            return Ok(password.strip_suffix('\r').unwrap_or(password).to_owned());
        }
        if let Ok(password) = std::env::var("XMPP_MLS_PASSWORD") {
            return Ok(password);
        }
        if !std::io::stdin().is_terminal() {
            return Err("no password: use --password-file FILE, set XMPP_MLS_PASSWORD, or run on a terminal to be asked".to_owned());
        }
        rpassword::prompt_password("password: ").map_err(|e| format!("password prompt: {e}"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match cli.command {
        Command::Serve { config } => runtime.block_on(serve(config)),
        Command::Config(action) => config(action),
        Command::Admin { config, json, action } => runtime.block_on(admin(config, json, action)),
        Command::Client { jid, password, server, direct_tls, ca_file, insecure_tcp, service, state, action } => {
            logging::init(LogFormat::Text, "warn", false);
            let service = service.unwrap_or_else(|| Jid::new(&format!("mls.{}", jid.domain())).expect("a domain"));
            let state = state.unwrap_or_else(|| PathBuf::from(format!("xmpp-mls-{jid}.sqlite3")));
            let password = match password.read() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let mut opts = ConnectOptions::new(jid, password);
            opts.server = server;
            opts.direct_tls = direct_tls;
            opts.ca_file = ca_file;
            opts.insecure_tcp = insecure_tcp;
            runtime.block_on(client(opts, service, state, action))
        }
    }
}

async fn serve(path: PathBuf) -> ExitCode {
    let config = match load_config(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(config.log.format, &config.log.level, config.log.source_location);
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    match xmpp_mls::component::serve(config, rx).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServeError::Connect(e)) if e.is_fatal() => {
            tracing::error!(error = %e, "the XMPP server refused component.secret: not retrying, fix the secret");
            ExitCode::from(EXIT_SECRET_REFUSED)
        }
        Err(e) => {
            tracing::error!(error = %e, "stopped");
            ExitCode::FAILURE
        }
    }
}

/// The config file, or exit code 2 with the problem on stderr.
fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

fn config(action: ConfigAction) -> ExitCode {
    match action {
        ConfigAction::Check { path } => match load_config(&path) {
            Ok(config) => {
                println!("# {}: valid. In effect (file, environment, defaults); masked: {}", path.display(), SECRET_KEYS.join(", "));
                print!("{}", config.effective_toml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        ConfigAction::Defaults => {
            print!("{ANNOTATED_DEFAULTS}");
            ExitCode::SUCCESS
        }
    }
}

async fn admin(path: PathBuf, json: bool, action: admin::AdminAction) -> ExitCode {
    let config = match load_config(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(config.log.format, "warn", config.log.source_location);
    match admin::run(&config, json, action).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Exit codes of a failed login, as `--help` lists them.
fn login_exit_code(e: &ClientError) -> ExitCode {
    match e {
        ClientError::Certificate(_) => ExitCode::from(3),
        ClientError::NoTls => ExitCode::from(4),
        ClientError::Auth(_) => ExitCode::from(5),
        _ => ExitCode::FAILURE,
    }
}

async fn client(opts: ConnectOptions, service: Jid, state: PathBuf, action: cli::ClientAction) -> ExitCode {
    let session = match Session::connect(opts).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return login_exit_code(&e);
        }
    };
    let ctx = cli::Context { session, service, state };
    match cli::run(ctx, action).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", cli::explain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
