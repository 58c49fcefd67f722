//! The little HTTP the server answers: a strict responder for `GET /metrics`.
//! Plain HTTP/1.1 on tokio, one request per connection, bounded in size and
//! time; nothing else (no keep-alive, no chunked bodies, no TLS: the metrics
//! are for localhost or a private network). Webhooks go out through
//! `net::webhook`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head (request line and headers) read.
pub const MAX_HEAD_BYTES: usize = 8 << 10;
/// How long a client may take to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;

/// What a request head asks for, as far as this server cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (or `HEAD`): the exposition text.
    Metrics {
        /// Whether the body is wanted (false for HEAD).
        body: bool,
    },
    /// Another path.
    NotFound,
    /// Another method on `/metrics`.
    MethodNotAllowed,
    /// Not an HTTP/1.x request line.
    BadRequest,
}

/// Routes a request head (everything up to the blank line).
pub fn route(head: &[u8]) -> Route {
    let Some(line) = head
        .split(|b| *b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
    else {
        return Route::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { body: true },
        "HEAD" => Route::Metrics { body: false },
        _ => Route::MethodNotAllowed,
    }
}

fn response(
    status: &str,
    content_type: &str,
    extra: &str,
    body: &[u8],
    send_body: bool,
) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    if send_body {
        r.extend_from_slice(body);
    }
    r
}

/// Reads a request head: up to the blank line, at most [`MAX_HEAD_BYTES`].
/// `None` when the head is too long or the connection ended first.
async fn read_head(s: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end + 4);
            return Ok(Some(buf));
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Ok(None);
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn answer(mut s: TcpStream, text: Arc<dyn Fn() -> Option<Arc<String>> + Send + Sync>) {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut s)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => {
            let r = response(
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
                b"",
                false,
            );
            let _ = s.write_all(&r).await;
            return;
        }
        _ => return,
    };
    let plain = "text/plain; charset=utf-8";
    let r = match route(&head) {
        Route::Metrics { body } => match text() {
            Some(t) => response(
                "200 OK",
                crate::monitor::metrics::CONTENT_TYPE,
                "",
                t.as_bytes(),
                body,
            ),
            None => response(
                "503 Service Unavailable",
                plain,
                "Retry-After: 5\r\n",
                b"figures are being collected\n",
                body,
            ),
        },
        Route::NotFound => response(
            "404 Not Found",
            plain,
            "",
            b"not found; try /metrics\n",
            true,
        ),
        Route::MethodNotAllowed => response(
            "405 Method Not Allowed",
            plain,
            "Allow: GET, HEAD\r\n",
            b"only GET\n",
            true,
        ),
        Route::BadRequest => response("400 Bad Request", plain, "", b"bad request\n", true),
    };
    let _ = tokio::time::timeout(READ_TIMEOUT, async {
        let _ = s.write_all(&r).await;
        let _ = s.shutdown().await;
        // Unread request bytes would make the close a reset that can
        // destroy the answer in flight: read (a bounded amount of) them.
        let mut sink = [0u8; 4096];
        let mut left = 64usize << 10;
        while left > 0 {
            match s.read(&mut sink).await {
                Ok(n) if n > 0 => left = left.saturating_sub(n),
                _ => break,
            }
        }
    })
    .await;
}

/// Serves `GET /metrics` with whatever `text` returns (`None`: not yet
/// collected, 503), until the task is dropped. Never waits on a collection.
pub async fn serve_metrics(
    listener: TcpListener,
    text: Arc<dyn Fn() -> Option<Arc<String>> + Send + Sync>,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((s, _)) = listener.accept().await else {
            // Out of descriptors, for instance: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // unwrap: the semaphore is never closed
        let permit = limit.clone().acquire_owned().await.expect("semaphore open");
        let text = text.clone();
        tokio::spawn(async move {
            answer(s, text).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { body: true }
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { body: true }
        );
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { body: false }
        );
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metrics/x HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe\r\n\r\n"), Route::BadRequest);
        assert_eq!(
            route(b"GET http://x/metrics HTTP/1.1\r\n\r\n"),
            Route::BadRequest
        );
    }
}
