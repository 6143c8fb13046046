//! A fault-injecting TCP proxy: put it between a client and a broker or database,
//! then cut, refuse or blackhole connections from the test.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Bytes one direction of a blackholed connection holds before it stops reading.
const HOLD_LIMIT: usize = 1 << 20;
/// How long the proxy waits for the upstream to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP proxy on `127.0.0.1` that forwards to one upstream and injects faults on demand.
///
/// * [`cut`](Self::cut) resets every open connection at once, both sides
///   (a lost worker, a broker restart seen from the client).
/// * [`set_refuse`](Self::set_refuse) resets new connections right after
///   accepting them (an unreachable peer).
/// * [`set_blackhole`](Self::set_blackhole) holds all bytes, in both
///   directions, on old and new connections, until it is lifted (a hung peer
///   or a partition); nothing is lost, it is delivered when lifted.
///
/// Must be started inside a Tokio runtime. Dropping it closes the listener
/// and every connection.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use fleet_test_support::{FaultProxy, amqp_url, url_addr, url_with_addr};
/// let proxy = FaultProxy::start(url_addr(&amqp_url())?).await?;
/// let url = url_with_addr(&amqp_url(), proxy.addr())?; // connect the client here
/// proxy.cut(); // the client now sees its connection drop
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    refuse: Arc<AtomicBool>,
    live: Arc<AtomicUsize>,
    blackhole: watch::Sender<bool>,
    cut: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let refuse = Arc::new(AtomicBool::new(false));
        let live = Arc::new(AtomicUsize::new(0));
        let (blackhole, hole_rx) = watch::channel(false);
        let (cut, cut_rx) = watch::channel(0u64);
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream,
            Arc::clone(&refuse),
            Arc::clone(&live),
            hole_rx,
            cut_rx,
        ));
        Ok(FaultProxy {
            addr,
            upstream,
            refuse,
            live,
            blackhole,
            cut,
            accept,
        })
    }

    /// The address clients connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Resets every connection open now, on both sides; later connections are unaffected.
    ///
    /// "Open" means accepted by the proxy: a client whose `connect` just
    /// returned may not be yet, so wait for [`connections`](Self::connections)
    /// first when that matters. The closing happens within milliseconds, not
    /// before this returns.
    pub fn cut(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }

    /// While true, new connections are accepted and reset at once; open ones go on.
    pub fn set_refuse(&self, refuse: bool) {
        self.refuse.store(refuse, Ordering::SeqCst);
    }

    /// While true, no byte passes in either direction and new connections are not forwarded.
    ///
    /// Held bytes (and end-of-stream) are delivered when it is lifted. A
    /// connection reset by either side while blackholed still ends at once.
    pub fn set_blackhole(&self, blackhole: bool) {
        self.blackhole.send_replace(blackhole);
    }

    /// How many connections are open: accepted and not yet closed (refused ones never count).
    pub fn connections(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Aborting the accept task drops the listener and its JoinSet, which
        // aborts every connection task and so closes every socket.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    refuse: Arc<AtomicBool>,
    live: Arc<AtomicUsize>,
    hole: watch::Receiver<bool>,
    cut: watch::Receiver<u64>,
) {
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            // Per-connection errors (e.g. ECONNABORTED, EMFILE): keep serving.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if refuse.load(Ordering::SeqCst) {
            reset(client);
            continue;
        }
        let mut cut = cut.clone();
        cut.mark_unchanged();
        let guard = LiveGuard::new(&live);
        tasks.spawn(serve(client, upstream, hole.clone(), cut, guard));
    }
}

/// Counts a connection as live for as long as it exists.
struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn new(live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        LiveGuard(Arc::clone(live))
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Closes a socket with RST rather than FIN, discarding anything unsent.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut hole: watch::Receiver<bool>,
    mut cut: watch::Receiver<u64>,
    _guard: LiveGuard,
) {
    // A blackholed peer does not answer a connect either: hold it.
    let connect = async {
        if hole.wait_for(|held| !*held).await.is_err() {
            return None;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
            Ok(Ok(up)) => Some(up),
            _ => None,
        }
    };
    let mut upstream = tokio::select! {
        up = connect => match up {
            Some(up) => up,
            None => return reset(client),
        },
        _ = cut.changed() => return reset(client),
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);

    let clean = {
        let (client_r, client_w) = client.split();
        let (up_r, up_w) = upstream.split();
        let pumps = async {
            tokio::try_join!(
                pump(client_r, up_w, hole.clone()),
                pump(up_r, client_w, hole.clone()),
            )
        };
        tokio::select! {
            done = pumps => done.is_ok(),
            _ = cut.changed() => false,
        }
    };
    if !clean {
        // Cut, or one side failed: reset both, as a dead link would.
        reset(client);
        reset(upstream);
    }
}

/// Copies `from` to `to`, holding bytes while the blackhole is on; ends after passing on EOF.
async fn pump<R, W>(mut from: R, mut to: W, mut hole: watch::Receiver<bool>) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut held: Vec<u8> = Vec::new();
    let mut eof = false;
    loop {
        let blackholed = *hole.borrow_and_update();
        if !blackholed {
            if !held.is_empty() {
                to.write_all(&held).await?;
                held.clear();
            }
            if eof {
                return to.shutdown().await;
            }
        }
        tokio::select! {
            read = from.read(&mut buf), if !eof && held.len() < HOLD_LIMIT => {
                let n = read?;
                if n == 0 {
                    eof = true;
                } else if blackholed {
                    held.extend_from_slice(&buf[..n]);
                } else {
                    to.write_all(&buf[..n]).await?;
                }
            }
            changed = hole.changed() => {
                if changed.is_err() {
                    // The proxy is gone.
                    return Err(io::ErrorKind::ConnectionAborted.into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait_for;

    const BOUND: Duration = Duration::from_secs(5);
    const QUIET: Duration = Duration::from_millis(300);

    /// A loopback echo server; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("echo addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
        s.write_all(msg).await.expect("write");
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(BOUND, s.read_exact(&mut got))
            .await
            .expect("echo within bound")
            .expect("read");
        assert_eq!(got, msg);
    }

    /// Asserts the peer closed `s`: a read gives EOF or an error within the bound.
    async fn assert_closed(s: &mut TcpStream) {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(BOUND, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("expected a closed connection, read {n} bytes"),
            Err(_) => panic!("connection still open after {BOUND:?}"),
        }
    }

    async fn assert_quiet(s: &mut TcpStream) {
        let mut buf = [0u8; 64];
        if let Ok(r) = tokio::time::timeout(QUIET, s.read(&mut buf)).await {
            panic!("expected nothing to arrive, got {r:?}");
        }
    }

    async fn wait_live(proxy: &FaultProxy, n: usize) {
        wait_for(&format!("{n} live connections"), BOUND, || async {
            proxy.connections() == n
        })
        .await;
    }

    #[tokio::test]
    async fn traffic_passes_both_ways() {
        let proxy = FaultProxy::start(echo_server().await).await.expect("start");
        let mut a = TcpStream::connect(proxy.addr()).await.expect("connect a");
        let mut b = TcpStream::connect(proxy.addr()).await.expect("connect b");
        roundtrip(&mut a, b"hello").await;
        roundtrip(&mut b, b"world").await;
        let big = vec![7u8; 300_000];
        roundtrip(&mut a, &big).await;
        assert_eq!(proxy.connections(), 2);
        drop(a);
        wait_live(&proxy, 1).await;
        roundtrip(&mut b, b"still").await;
    }

    #[tokio::test]
    async fn cut_closes_both_sides_and_later_connections_work() {
        // A bare upstream, to observe that its side is closed too.
        let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = FaultProxy::start(upstream.local_addr().expect("addr"))
            .await
            .expect("start");
        let mut client = TcpStream::connect(proxy.addr()).await.expect("connect");
        let (mut server, _) = tokio::time::timeout(BOUND, upstream.accept())
            .await
            .expect("proxied connect within bound")
            .expect("accept");
        client.write_all(b"x").await.expect("write");
        let mut one = [0u8; 1];
        server.read_exact(&mut one).await.expect("upstream reads");
        wait_live(&proxy, 1).await;

        proxy.cut();
        assert_closed(&mut client).await;
        assert_closed(&mut server).await;
        wait_live(&proxy, 0).await;

        let mut again = TcpStream::connect(proxy.addr()).await.expect("reconnect");
        let (mut server, _) = upstream.accept().await.expect("accept again");
        again.write_all(b"y").await.expect("write");
        server.read_exact(&mut one).await.expect("read");
        assert_eq!(&one, b"y");
    }

    #[tokio::test]
    async fn refuse_resets_new_connections_only() {
        let proxy = FaultProxy::start(echo_server().await).await.expect("start");
        let mut old = TcpStream::connect(proxy.addr()).await.expect("connect");
        roundtrip(&mut old, b"before").await;

        proxy.set_refuse(true);
        let mut refused = TcpStream::connect(proxy.addr()).await.expect("tcp connect");
        let _ = refused.write_all(b"anyone?").await;
        assert_closed(&mut refused).await;
        roundtrip(&mut old, b"open one unaffected").await;
        assert_eq!(proxy.connections(), 1);

        proxy.set_refuse(false);
        let mut new = TcpStream::connect(proxy.addr()).await.expect("connect");
        roundtrip(&mut new, b"after").await;
    }

    #[tokio::test]
    async fn blackhole_holds_bytes_until_lifted() {
        let proxy = FaultProxy::start(echo_server().await).await.expect("start");
        let mut c = TcpStream::connect(proxy.addr()).await.expect("connect");
        roundtrip(&mut c, b"ping").await;

        proxy.set_blackhole(true);
        c.write_all(b"held").await.expect("write");
        assert_quiet(&mut c).await;
        // New connections hang too, but count as open.
        let mut late = TcpStream::connect(proxy.addr()).await.expect("connect");
        late.write_all(b"late").await.expect("write");
        assert_quiet(&mut late).await;
        assert_eq!(proxy.connections(), 2);

        proxy.set_blackhole(false);
        let mut got = [0u8; 4];
        tokio::time::timeout(BOUND, c.read_exact(&mut got))
            .await
            .expect("held bytes delivered")
            .expect("read");
        assert_eq!(&got, b"held");
        tokio::time::timeout(BOUND, late.read_exact(&mut got))
            .await
            .expect("late connection forwarded")
            .expect("read");
        assert_eq!(&got, b"late");
        roundtrip(&mut c, b"flowing").await;
    }

    #[tokio::test]
    async fn blackholed_connections_can_be_cut() {
        let proxy = FaultProxy::start(echo_server().await).await.expect("start");
        let mut c = TcpStream::connect(proxy.addr()).await.expect("connect");
        roundtrip(&mut c, b"ping").await;
        proxy.set_blackhole(true);
        c.write_all(b"lost").await.expect("write");
        proxy.cut();
        assert_closed(&mut c).await;
        wait_live(&proxy, 0).await;
    }

    #[tokio::test]
    async fn unreachable_upstream_closes_client() {
        let gone = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = gone.local_addr().expect("addr");
        drop(gone);
        let proxy = FaultProxy::start(addr).await.expect("start");
        let mut c = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_closed(&mut c).await;
        wait_live(&proxy, 0).await;
    }

    #[tokio::test]
    async fn drop_closes_listener_and_connections() {
        let proxy = FaultProxy::start(echo_server().await).await.expect("start");
        let addr = proxy.addr();
        let mut c = TcpStream::connect(addr).await.expect("connect");
        roundtrip(&mut c, b"ping").await;
        drop(proxy);
        assert_closed(&mut c).await;
        wait_for("the listener to close", BOUND, || async {
            TcpStream::connect(addr).await.is_err()
        })
        .await;
    }
}
