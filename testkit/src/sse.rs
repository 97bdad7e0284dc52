//! A live Server-Sent Events stream (`GET …/flows/stream`) read from the REST app: pulled
//! one event at a time ([`EventStream::next`], which leaves the server's buffer filling
//! while the test does not read), or read in the background with every event stamped with
//! the instant it arrived ([`EventStream::in_background`]).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tower::ServiceExt;

pub struct EventStream {
    pub path: String,
    body: Body,
    buf: String,
}

impl EventStream {
    /// Opens the stream at `path` as `token`; it must answer 200 `text/event-stream`.
    pub async fn open(app: &Router, path: &str, token: &str) -> EventStream {
        let req = Request::builder()
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request");
        let resp = app.clone().oneshot(req).await.expect("infallible");
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/event-stream",
            "{path}"
        );
        EventStream {
            path: path.to_string(),
            body: resp.into_body(),
            buf: String::new(),
        }
    }

    /// The next `(event, data)` within `wait`; keep-alive comments are skipped.
    pub async fn next(&mut self, wait: Duration) -> Option<(String, Value)> {
        tokio::time::timeout(wait, self.next_event())
            .await
            .ok()
            .flatten()
    }

    /// The next `(event, data)`, or `None` when the stream ends.
    async fn next_event(&mut self) -> Option<(String, Value)> {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut data) = (String::new(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !event.is_empty() {
                    return Some((event, serde_json::from_str(&data).unwrap_or(Value::Null)));
                }
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(bytes) = frame.into_data() {
                self.buf.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }

    /// Reads the stream in the background from now on, stamping each event.
    pub fn in_background(mut self) -> Stamped {
        let path = self.path.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some((event, data)) = self.next_event().await {
                let read = Read {
                    at: Instant::now(),
                    event,
                    data,
                };
                if tx.send(read).is_err() {
                    return;
                }
            }
        });
        Stamped {
            path,
            rx,
            events: Vec::new(),
            reader,
        }
    }
}

/// One event as read: when, its `event:` name and its JSON data.
#[derive(Debug, Clone)]
pub struct Read {
    pub at: Instant,
    pub event: String,
    pub data: Value,
}

/// A stream read in the background (see [`EventStream::in_background`]); stops reading on
/// drop.
pub struct Stamped {
    pub path: String,
    rx: mpsc::UnboundedReceiver<Read>,
    /// Everything read so far, in order.
    pub events: Vec<Read>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Stamped {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Stamped {
    /// Takes in what the reader has read by now.
    pub fn poll(&mut self) -> &[Read] {
        while let Ok(r) = self.rx.try_recv() {
            self.events.push(r);
        }
        &self.events
    }
}
