//! A live flow stream (`GET …/flows/stream`, Server-Sent Events) read in the background
//! from the REST app: every event is stamped with the instant it was read, whatever the
//! test is doing meanwhile.

use std::time::Instant;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::ControlPlane;

/// One event as read: when, its `event:` name and its JSON data.
#[derive(Debug, Clone)]
pub struct Read {
    pub at: Instant,
    pub event: String,
    pub data: Value,
}

pub struct EventStream {
    pub path: String,
    rx: mpsc::UnboundedReceiver<Read>,
    /// Everything read so far, in order.
    pub events: Vec<Read>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl EventStream {
    /// Opens the stream at `path` (which must answer 200 `text/event-stream`) and starts
    /// reading it.
    pub async fn open(cp: &ControlPlane, path: &str, token: &str) -> EventStream {
        let req = Request::builder()
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request");
        let resp = cp.app.clone().oneshot(req).await.expect("infallible");
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/event-stream",
            "{path}"
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read(resp.into_body(), tx));
        EventStream {
            path: path.to_string(),
            rx,
            events: Vec::new(),
            reader,
        }
    }

    /// Takes in what the reader has read by now.
    pub fn poll(&mut self) -> &[Read] {
        while let Ok(r) = self.rx.try_recv() {
            self.events.push(r);
        }
        &self.events
    }
}

/// Parses SSE frames off `body` as they come; keep-alive comments are skipped.
async fn read(mut body: Body, tx: mpsc::UnboundedSender<Read>) {
    let mut buf = String::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(bytes) = frame.into_data() else {
            continue;
        };
        let at = Instant::now();
        buf.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let (mut event, mut data) = (String::new(), String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if event.is_empty() {
                continue;
            }
            let data = serde_json::from_str(&data).unwrap_or(Value::Null);
            if tx.send(Read { at, event, data }).is_err() {
                return;
            }
        }
    }
}
