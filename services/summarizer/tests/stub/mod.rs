//! A stub OpenAI-compatible server on loopback whose replies each test scripts:
//! answer (JSON or SSE), answer slowly, an HTTP status (429 with Retry-After,
//! 500), malformed JSON, a stream that stalls mid-way, a hang, or an endless answer.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio_util::sync::CancellationToken;

/// One scripted reply.
#[derive(Debug, Clone)]
#[allow(dead_code)] // each test binary uses a subset
pub enum Reply {
    /// A JSON chat completion.
    Answer(String),
    /// An SSE stream of chunks, then `[DONE]`.
    Stream(String),
    /// A JSON completion after a delay.
    Slow(Duration, String),
    /// A bare status, with an optional Retry-After in seconds.
    Status(u16, Option<u64>),
    /// 200 with a body that is not JSON.
    Malformed,
    /// An SSE stream that sends one chunk and then nothing, forever.
    StallMidStream,
    /// Never answers.
    Hang,
    /// 200 with a JSON completion whose content never ends (an endless body).
    EndlessJson,
    /// An SSE stream of content chunks that never finishes.
    EndlessStream,
}

#[derive(Default)]
struct Inner {
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Option<Reply>>,
    requests: AtomicUsize,
    active: AtomicUsize,
    bodies: Mutex<Vec<serde_json::Value>>,
}

/// A running stub.
#[derive(Clone)]
pub struct Stub {
    /// Where it listens.
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    _stop: Arc<tokio_util::sync::DropGuard>,
}

struct Active(Arc<Inner>);
impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[allow(dead_code)]
impl Stub {
    /// Starts a stub answering `default` when the script is empty.
    pub async fn start(default: Reply) -> Stub {
        let inner = Arc::new(Inner::default());
        *inner.default.lock().expect("lock") = Some(default);
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stub");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        Stub {
            addr,
            inner,
            _stop: Arc::new(stop.drop_guard()),
        }
    }

    /// The base URL (…/v1).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues replies used before the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.script.lock().expect("lock").extend(replies);
    }

    /// Replaces the default reply.
    pub fn set_default(&self, r: Reply) {
        *self.inner.default.lock().expect("lock") = Some(r);
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::SeqCst)
    }

    /// Requests whose handler is still running.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::SeqCst)
    }

    /// Every request body received.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.inner.bodies.lock().expect("lock").clone()
    }
}

fn completion(text: &str) -> Response {
    axum::Json(serde_json::json!({
        "id": "stub", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]
    }))
    .into_response()
}

fn sse(body: Body) -> Response {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r
}

fn chunk(text: &str, finish: bool) -> bytes::Bytes {
    let v = serde_json::json!({
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": if finish { Some("stop") } else { None }}]
    });
    bytes::Bytes::from(format!("data: {v}\n\n"))
}

async fn complete(
    State(inner): State<Arc<Inner>>,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> Response {
    inner.requests.fetch_add(1, Ordering::SeqCst);
    inner.active.fetch_add(1, Ordering::SeqCst);
    let _active = Active(inner.clone());
    inner.bodies.lock().expect("lock").push(body);
    let reply = {
        let next = inner.script.lock().expect("lock").pop_front();
        next.or_else(|| inner.default.lock().expect("lock").clone())
            .unwrap_or(Reply::Status(500, None))
    };
    match reply {
        Reply::Answer(t) => completion(&t),
        Reply::Slow(d, t) => {
            tokio::time::sleep(d).await;
            completion(&t)
        }
        Reply::Stream(t) => {
            let words: Vec<String> = t.split_inclusive(' ').map(str::to_owned).collect();
            let n = words.len();
            let mut parts: Vec<Result<bytes::Bytes, std::io::Error>> = words
                .iter()
                .enumerate()
                .map(|(i, w)| Ok(chunk(w, i + 1 == n)))
                .collect();
            parts.push(Ok(bytes::Bytes::from_static(b"data: [DONE]\n\n")));
            sse(Body::from_stream(futures::stream::iter(parts)))
        }
        Reply::Status(code, retry_after) => {
            let mut r = (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "stub error",
            )
                .into_response();
            if let Some(s) = retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(s));
            }
            r
        }
        Reply::Malformed => {
            let mut r = Response::new(Body::from("{\"choices\": [ this is not json"));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Reply::StallMidStream => {
            let first =
                futures::stream::iter([Ok::<_, std::io::Error>(chunk("The beginning", false))]);
            sse(Body::from_stream(futures::StreamExt::chain(
                first,
                futures::stream::pending(),
            )))
        }
        Reply::Hang => std::future::pending().await,
        Reply::EndlessJson => {
            let head = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(
                b"{\"choices\":[{\"message\":{\"content\":\"",
            ))]);
            let filler = bytes::Bytes::from(vec![b'a'; 64 * 1024]);
            let body = futures::StreamExt::chain(
                head,
                futures::stream::repeat_with(move || Ok(filler.clone())),
            );
            let mut r = Response::new(Body::from_stream(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Reply::EndlessStream => {
            let piece = chunk(&"word ".repeat(200), false);
            sse(Body::from_stream(futures::stream::repeat_with(move || {
                Ok::<_, std::io::Error>(piece.clone())
            })))
        }
    }
}
