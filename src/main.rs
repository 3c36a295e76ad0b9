//! `xmpp-mls`: run the component (`serve`) or act as a client (`client`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::sync::watch;
use xmpp_mls::client::{ConnectOptions, Session};
use xmpp_mls::config::{Config, LogFormat};
use xmpp_parsers::disco::DiscoInfoResult;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::ns;

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
    /// Run the component. Every config key can be overridden by an
    /// environment variable XMPP_MLS_<SECTION>_<KEY>, e.g.
    /// XMPP_MLS_COMPONENT_SECRET; see examples/xmpp-mls.toml.
    Serve {
        /// The TOML configuration file.
        #[arg(long, short, env = "XMPP_MLS_CONFIG")]
        config: PathBuf,
    },
    /// Act as a client of an MLS service through an XMPP account.
    Client {
        /// The account's bare JID, e.g. alice@example.org.
        #[arg(long)]
        jid: BareJid,
        /// The account's password.
        #[arg(long, env = "XMPP_MLS_PASSWORD", hide_env_values = true)]
        password: String,
        /// The XMPP server's c2s address host:port (default: the JID's
        /// domain, port 5222). Plain TCP: loopback or test servers only.
        #[arg(long)]
        server: Option<String>,
        #[command(subcommand)]
        action: ClientAction,
    },
}

#[derive(Subcommand)]
enum ClientAction {
    /// Show what an MLS service offers: identity, features and limits.
    Info {
        /// The service JID, e.g. mls.example.org.
        service: Jid,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match cli.command {
        Command::Serve { config } => runtime.block_on(serve(config)),
        Command::Client { jid, password, server, action } => {
            init_logging(LogFormat::Text, "warn");
            let mut opts = ConnectOptions::new(jid, password);
            opts.server = server;
            runtime.block_on(client(opts, action))
        }
    }
}

async fn serve(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log.format, &config.log.level);
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    match xmpp_mls::component::serve(config, rx).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stopped");
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

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::new(level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn client(opts: ConnectOptions, action: ClientAction) -> ExitCode {
    let session = match Session::connect(opts).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match action {
        ClientAction::Info { service } => info(&session, &service).await,
    };
    session.close().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn info(session: &Session, service: &Jid) -> Result<(), Box<dyn std::error::Error>> {
    let query = minidom::Element::builder("query", ns::DISCO_INFO).build();
    let reply = session.iq(service, "get", query).await?.ok_or("empty disco#info result")?;
    let info = DiscoInfoResult::try_from(reply)?;
    println!("{service}");
    for id in &info.identities {
        let name = id.name.as_deref().unwrap_or("");
        println!("  identity: {}/{} {name}", id.category, id.type_);
    }
    for feature in &info.features {
        println!("  feature:  {feature}");
    }
    for form in &info.extensions {
        for field in form.fields.iter().filter(|f| f.var.as_deref() != Some("FORM_TYPE")) {
            let var = field.var.as_deref().unwrap_or("");
            println!("  limit:    {var} = {}", field.values.join(", "));
        }
    }
    Ok(())
}
