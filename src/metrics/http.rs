//! The metrics endpoint on hyper (HTTP/1.1): `GET /metrics` is the
//! OpenMetrics text format; `GET /health` is 200 `connected` or 503
//! `disconnected` (the component stream's state). A scrape reads only
//! the registry and `/proc/self`, never the store.

use std::convert::Infallible;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::metrics;

/// The content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
/// A client that has not sent its request head by then is dropped; one
/// request per connection, so that no idle connection stays open.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers requests until the task is aborted.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            // Out of file descriptors, most likely: let some close.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tokio::spawn(async move {
            let http = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(conn), hyper::service::service_fn(answer))
                .await;
            if let Err(e) = http {
                tracing::debug!(error = %e, "metrics request failed");
            }
        });
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, OPENMETRICS, metrics().render()),
        (&Method::GET, "/health") if metrics().connected() => (StatusCode::OK, TEXT, "connected\n".to_owned()),
        (&Method::GET, "/health") => (StatusCode::SERVICE_UNAVAILABLE, TEXT, "disconnected\n".to_owned()),
        (&Method::GET, _) => (StatusCode::NOT_FOUND, TEXT, "not found\n".to_owned()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    Ok(response)
}
