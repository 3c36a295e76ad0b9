//! The metrics endpoint: a minimal HTTP/1.1 server for scrapers and health
//! checks, one request per connection. `GET /metrics` is the Prometheus
//! text format; `GET /health` is 200 `connected` or 503 `disconnected`
//! (the component stream's state).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::metrics;
use crate::store::Store;

/// Longest request head read; scrapers send a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// A client that has not sent its request by then is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers requests until the task is aborted. `low_water` is
/// directory.low_water, for the low KeyPackage stock gauge.
pub async fn serve(listener: TcpListener, store: Store, low_water: u32) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            // Out of file descriptors, most likely: let some close.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(conn, &store, low_water).await {
                tracing::debug!(error = %e, "metrics request failed");
            }
        });
    }
}

async fn answer(mut conn: TcpStream, store: &Store, low_water: u32) -> std::io::Result<()> {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut conn))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    let (status, body) = match request_line(&head) {
        Some(("GET", "/metrics")) => ("200 OK", scrape(store, low_water).await),
        Some(("GET", "/health")) if metrics().connected() => ("200 OK", "connected\n".to_owned()),
        Some(("GET", "/health")) => ("503 Service Unavailable", "disconnected\n".to_owned()),
        Some(("GET", _)) => ("404 Not Found", "not found\n".to_owned()),
        Some(_) => ("405 Method Not Allowed", "only GET\n".to_owned()),
        None => ("400 Bad Request", "bad request\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes()).await?;
    conn.shutdown().await
}

/// Reads up to the blank line ending the request head (or MAX_HEAD bytes).
async fn read_head(conn: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Method and path of an HTTP/1.x request line; the query string is ignored.
fn request_line(head: &str) -> Option<(&str, &str)> {
    let mut parts = head.lines().next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    Some((method, target.split('?').next().unwrap_or(target)))
}

async fn scrape(store: &Store, low_water: u32) -> String {
    let gauges = match store.gauges(low_water, crate::protocol::now()).await {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot read the store");
            None
        }
    };
    metrics().render(gauges.as_ref())
}

#[cfg(test)]
mod tests {
    use super::request_line;

    #[test]
    fn request_lines() {
        assert_eq!(request_line("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Some(("GET", "/metrics")));
        assert_eq!(request_line("GET /health?verbose HTTP/1.0\r\n\r\n"), Some(("GET", "/health")));
        assert_eq!(request_line("POST /metrics HTTP/1.1\r\n\r\n"), Some(("POST", "/metrics")));
        assert_eq!(request_line("GET /metrics\r\n\r\n"), None);
        assert_eq!(request_line("GET / metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_line(""), None);
    }
}
