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
    /// Answers at once with this HTTP status and an error body (e.g. 500).
    Status(u16),
}

/// Faults for every request no rule matches, in percent of requests (the fault campaign's
/// "hung dependency": e.g. 10 % hang, 5 % answer 500); chosen by a hash of the request
/// number, so a retry of the same request may well get through.
#[derive(Debug, Default)]
struct Chaos {
    hang_pct: AtomicUsize,
    error_pct: AtomicUsize,
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
    chaos: Arc<Chaos>,
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
            chaos: Arc::default(),
            stop: CancellationToken::new(),
        };
        let (rules, requests, chaos, stop) = (
            stub.rules.clone(),
            stub.requests.clone(),
            stub.chaos.clone(),
            stub.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    () = stop.cancelled() => return,
                };
                let Ok((sock, _)) = conn else { continue };
                let (rules, requests, chaos, stop) =
                    (rules.clone(), requests.clone(), chaos.clone(), stop.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(sock, rules, requests, chaos) => {}
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

    /// From now on, of the requests no rule matches, `hang_pct` % hang and `error_pct` %
    /// get a 500 (0 and 0: all answer again; held requests stay held until dropped).
    pub fn set_chaos(&self, hang_pct: usize, error_pct: usize) {
        self.chaos.hang_pct.store(hang_pct, Ordering::SeqCst);
        self.chaos.error_pct.store(error_pct, Ordering::SeqCst);
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

/// A well-mixed percentile (0..100) of request number `n` (SplitMix64 finalizer).
fn percentile(n: usize) -> usize {
    let mut z = (n as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % 100) as usize
}

async fn respond(sock: &mut TcpStream, status: u16, reply: &str) {
    let resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}

async fn serve(
    mut sock: TcpStream,
    rules: Arc<Mutex<Vec<Arc<Rule>>>>,
    requests: Arc<AtomicUsize>,
    chaos: Arc<Chaos>,
) {
    let Some(body) = read_request(&mut sock).await else {
        return;
    };
    let nth = requests.fetch_add(1, Ordering::SeqCst);
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
            Behavior::Status(code) => {
                return respond(&mut sock, code, r#"{"error":{"message":"stub failure"}}"#).await;
            }
        }
    } else {
        let (hang, error) = (
            chaos.hang_pct.load(Ordering::SeqCst),
            chaos.error_pct.load(Ordering::SeqCst),
        );
        let p = percentile(nth);
        if p < hang {
            std::future::pending::<()>().await;
        } else if p < hang + error {
            return respond(&mut sock, 500, r#"{"error":{"message":"stub failure"}}"#).await;
        }
    }
    let reply = serde_json::json!({
        "id": "stub", "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "A stub summary of the item."}}]
    })
    .to_string();
    respond(&mut sock, 200, &reply).await;
}
