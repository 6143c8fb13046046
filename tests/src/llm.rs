//! A stub OpenAI-compatible LLM on loopback for the fault tests: a plain HTTP/1.1 server
//! (no framework) whose reply to `POST …/chat/completions` depends on a marker in the
//! request (the item text is in the prompt): answer, answer slowly, or hang.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the stub does with a request whose body contains a rule's marker.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Never answers (the connection stays open until the client gives up or dies).
    Hang,
    /// Hangs for the first `n` matching requests, then answers at once.
    HangFirst(usize),
    /// Answers after a delay.
    Slow(Duration),
}

struct Rule {
    marker: String,
    behavior: Behavior,
    requests: AtomicUsize,
    active: AtomicUsize,
}

/// A running stub; stops (dropping every held connection) when dropped.
pub struct StubLlm {
    /// Where it listens.
    pub addr: SocketAddr,
    rules: Arc<Mutex<Vec<Arc<Rule>>>>,
    requests: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for StubLlm {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Active(Arc<Rule>);
impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl StubLlm {
    /// Starts a stub that answers every request with a short summary.
    pub async fn start() -> StubLlm {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stub LLM");
        let addr = listener.local_addr().expect("stub address");
        let stub = StubLlm {
            addr,
            rules: Arc::default(),
            requests: Arc::default(),
            stop: CancellationToken::new(),
        };
        let (rules, requests, stop) =
            (stub.rules.clone(), stub.requests.clone(), stub.stop.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    () = stop.cancelled() => return,
                };
                let Ok((sock, _)) = conn else { continue };
                let (rules, requests, stop) = (rules.clone(), requests.clone(), stop.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(sock, rules, requests) => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
        stub
    }

    /// The base URL (…/v1) to give the summarizer.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Requests whose body contains `marker` get `behavior` (first matching rule wins).
    pub fn rule(&self, marker: &str, behavior: Behavior) {
        self.rules.lock().expect("rules").push(Arc::new(Rule {
            marker: marker.to_owned(),
            behavior,
            requests: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
        }));
    }

    fn find(&self, marker: &str) -> Option<Arc<Rule>> {
        self.rules
            .lock()
            .expect("rules")
            .iter()
            .find(|r| r.marker == marker)
            .cloned()
    }

    /// Requests received that matched `marker`.
    pub fn requests_for(&self, marker: &str) -> usize {
        self.find(marker)
            .map_or(0, |r| r.requests.load(Ordering::SeqCst))
    }

    /// Requests matching `marker` the stub is holding right now (hanging or slow).
    pub fn active_for(&self, marker: &str) -> usize {
        self.find(marker)
            .map_or(0, |r| r.active.load(Ordering::SeqCst))
    }

    /// Every request received.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads one request (headers, then `Content-Length` bytes of body).
async fn read_request(sock: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
            }
        }
    }
}

async fn serve(mut sock: TcpStream, rules: Arc<Mutex<Vec<Arc<Rule>>>>, requests: Arc<AtomicUsize>) {
    let Some(body) = read_request(&mut sock).await else {
        return;
    };
    requests.fetch_add(1, Ordering::SeqCst);
    let rule = rules
        .lock()
        .expect("rules")
        .iter()
        .find(|r| body.contains(&r.marker))
        .cloned();
    if let Some(rule) = rule {
        let n = rule.requests.fetch_add(1, Ordering::SeqCst);
        rule.active.fetch_add(1, Ordering::SeqCst);
        let _active = Active(rule.clone());
        match rule.behavior {
            Behavior::Hang => std::future::pending::<()>().await,
            Behavior::HangFirst(k) if n < k => std::future::pending::<()>().await,
            Behavior::HangFirst(_) => {}
            Behavior::Slow(d) => tokio::time::sleep(d).await,
        }
    }
    let reply = serde_json::json!({
        "id": "stub", "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "A stub summary of the item."}}]
    })
    .to_string();
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}
