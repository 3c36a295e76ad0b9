//! The XEP-0114 component: keeps one stream to the XMPP server up,
//! reconnecting with capped exponential backoff, and feeds stanzas to the
//! router with bounded concurrency.

pub mod connect;
mod lanes;
pub mod router;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use minidom::Element;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::config::Config;
use crate::metrics::{self, metrics};
use crate::protocol::disco::PING;
use crate::service::{Issued, Service};
use crate::store::{Store, StoreError};
use crate::xmpp::link::{self, Link, LinkError, StanzaNs};
use crate::xmpp::namespace::CLIENT;
use connect::ConnectError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on metrics.listen: {0}")]
    Metrics(std::io::Error),
}

/// Runs the component until `shutdown` turns true (or the secret is wrong).
/// Returns once every accepted write is committed.
pub async fn serve(config: Config, mut shutdown: watch::Receiver<bool>) -> Result<(), ServeError> {
    let config = Arc::new(config);
    log_startup(&config);
    let store = Store::open(&config.store)?;
    store.ensure_service_key(crate::service::new_key()).await?;
    let service = Arc::new(Service::new(config.clone(), store.clone()));
    let every = Duration::from_secs(config.history.maintenance_secs);
    let endpoint = match config.metrics_addr()? {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(ServeError::Metrics)?;
            service.refresh_gauges().await?;
            tracing::info!(%addr, "metrics endpoint listening");
            Some(tokio::spawn(metrics::http::serve(listener)))
        }
        None => None,
    };
    let (link_tx, link_rx) = watch::channel(None);
    let maintenance = tokio::spawn(maintain(service.clone(), every, link_rx, shutdown.clone()));
    let result = connection_loop(&config, &service, &link_tx, &mut shutdown).await;
    maintenance.abort();
    endpoint.inspect(|e| e.abort());
    if let Err(e) = service.stop_maintaining().await {
        tracing::warn!(error = %e, "cannot give the maintenance turn up");
    }
    store.close().await;
    tracing::info!("stopped");
    result
}

/// One line with what an operator checks first: version, JID, store, limits.
fn log_startup(config: &Config) {
    let (c, l) = (&config.component, &config.limits);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        jid = %c.jid,
        server = %c.server,
        store = %Store::describe(&config.store),
        synchronous = ?config.store.synchronous,
        max_payload_size = l.max_payload_size,
        max_stanza_out = l.max_stanza_out,
        max_in_flight = l.max_in_flight,
        account_rate = l.account_rate,
        account_burst = l.account_burst,
        max_members = config.groups.max_members,
        max_devices_per_account = config.directory.max_devices_per_account,
        metrics = %config.metrics.listen,
        "starting xmpp-mls"
    );
}

/// The current connection's outgoing queue, for stanzas that no incoming
/// stanza caused (maintenance).
type CurrentLink = watch::Sender<Option<mpsc::Sender<Element>>>;

async fn connection_loop(
    config: &Arc<Config>,
    service: &Arc<Service>,
    current: &CurrentLink,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let mut backoff = Backoff::new(Duration::from_secs(config.component.reconnect_max_secs));
    let mut first = true;
    loop {
        let connected = tokio::select! {
            _ = stopped(shutdown) => return Ok(()),
            c = connect::connect(config) => c,
        };
        match connected {
            Ok(stream) => {
                if !std::mem::take(&mut first) {
                    metrics().reconnects.inc();
                }
                metrics().set_connected(true);
                tracing::info!(jid = %config.component.jid, "component connected");
                backoff.reset();
                let link = link::spawn(stream, StanzaNs::Component, keepalive(config));
                current.send_replace(Some(link.outgoing.clone()));
                let lost = run_session(link, config, service, shutdown).await;
                current.send_replace(None);
                metrics().set_connected(false);
                match lost {
                    None => return Ok(()),
                    Some(e) => tracing::warn!(error = %e, "connection lost"),
                }
            }
            Err(e) if e.is_fatal() => return Err(e.into()),
            Err(e) => tracing::warn!(error = %e, "cannot connect"),
        }
        let delay = backoff.next_delay();
        tracing::info!(delay_ms = delay.as_millis() as u64, "reconnecting");
        tokio::select! {
            _ = stopped(shutdown) => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Routes stanzas until the stream ends (`Some(error)`) or shutdown (`None`).
async fn run_session(
    link: Link,
    config: &Config,
    service: &Arc<Service>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<LinkError> {
    let Link { outgoing, mut incoming, task } = link;
    let max = config.limits.max_in_flight;
    let permits = Arc::new(Semaphore::new(max));
    let lanes = {
        let service = service.clone();
        lanes::Lanes::new(move |stanza| handle(service.clone(), outgoing.clone(), stanza))
    };
    loop {
        let stanza = tokio::select! {
            _ = stopped(shutdown) => break,
            s = incoming.recv() => s,
        };
        let Some(stanza) = stanza else {
            return Some(match task.await {
                Ok(Err(e)) => e,
                _ => LinkError::Closed,
            });
        };
        // Waiting here (not queueing) keeps memory bounded under floods.
        let permit = permits.clone().acquire_owned().await.expect("semaphore open");
        lanes.push(stanza, permit);
    }
    // Shutdown: let handlers finish and send their replies, then close.
    let _ = permits.acquire_many(max as u32).await;
    drop(lanes);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    None
}

/// Routes one stanza and sends what it caused, in its group's archive order.
async fn handle(service: Arc<Service>, out: mpsc::Sender<Element>, stanza: Element) {
    let routed = router::route(&service, stanza).await;
    if let Some((group, seq)) = &routed.order {
        service.order.wait_turn(group, *seq).await;
    }
    'sending: for outgoing in routed.stanzas {
        for stanza in outgoing.into_stanzas() {
            if out.send(stanza).await.is_err() {
                break 'sending;
            }
        }
    }
    if let Some((group, seq)) = &routed.order {
        service.order.done(group, *seq);
    }
    send_issued(&service, &out, routed.issued).await;
}

/// The service's own group messages, each in its group's archive order.
async fn send_issued(service: &Service, out: &mpsc::Sender<Element>, issued: Vec<Issued>) {
    for Issued { order: (group, seq), copies } in issued {
        service.order.wait_turn(&group, seq).await;
        for stanza in copies.into_stanzas() {
            let _ = out.send(stanza).await;
        }
        service.order.done(&group, seq);
    }
}

/// Resolves once shutdown is requested (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Periodic housekeeping until shutdown; what it has to say goes out on
/// the current connection (none: the devices it concerns are unreachable).
async fn maintain(
    service: Arc<Service>,
    every: Duration,
    link: watch::Receiver<Option<mpsc::Sender<Element>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => return,
            _ = tick.tick() => match service.maintain().await {
                Ok((stanzas, issued)) => {
                    let out = link.borrow().clone();
                    if let Some(out) = out {
                        for stanza in stanzas {
                            metrics().stanzas_sent.inc(metrics::StanzaKind::of(stanza.name()));
                            if out.send(stanza).await.is_err() {
                                break;
                            }
                        }
                        send_issued(&service, &out, issued).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "maintenance failed"),
            },
        }
    }
}

/// XEP-0199 ping to the server host: any answer proves the stream alive.
fn keepalive(config: &Config) -> impl Fn() -> Element + Send + 'static {
    let from = config.component.jid.clone();
    let to = config.ping_target();
    let counter = AtomicU64::new(0);
    move || {
        let id = format!("keepalive-{}", counter.fetch_add(1, Ordering::Relaxed));
        Element::builder("iq", CLIENT)
            .attr("type".try_into().expect("ncname"), "get")
            .attr("id".try_into().expect("ncname"), id)
            .attr("from".try_into().expect("ncname"), from.as_str())
            .attr("to".try_into().expect("ncname"), to.as_str())
            .append(Element::builder("ping", PING).build())
            .build()
    }
}

/// Capped exponential backoff with jitter, from 250 ms.
struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    const START: Duration = Duration::from_millis(250);

    fn new(max: Duration) -> Self {
        Self { current: Self::START, max }
    }

    fn reset(&mut self) {
        self.current = Self::START;
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.current.min(self.max);
        self.current = (self.current * 2).min(self.max);
        let jitter = rand::random_range(0.0..0.25);
        base.mul_f64(1.0 + jitter).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(250) && delays[0] < Duration::from_millis(320));
        assert!(delays[1] >= Duration::from_millis(500));
        assert!(delays[3] >= Duration::from_secs(2) && delays[5] == Duration::from_secs(2));
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(320));
    }
}
