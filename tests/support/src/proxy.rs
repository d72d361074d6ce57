//! A fault-injecting TCP proxy for end-to-end fault tests.
//!
//! Tests put a [`Proxy`] between ferry and a source or target `redis-server` and break the
//! link in controlled ways while data flows: reset every connection, close them after a
//! given number of bytes, stall or throttle one direction, or refuse new connections as a
//! node that is down would.
//!
//! Blocking std only: one acceptor thread, and per connection two pump threads (one per
//! [`Direction`]). A pump reads with a short timeout ([`POLL_INTERVAL`]) so it notices the
//! stall / cut / stop flags promptly, and forwards in chunks of at most 16 KiB. I/O errors
//! never panic a pump; they just close both sides of that connection.

use crate::text::percent_encode;
use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a pump blocks in one read before re-checking its flags; also the acceptor's
/// worst-case reaction time to [`Drop`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Largest chunk forwarded in one write.
const CHUNK: usize = 16 * 1024;

/// Timeout for connecting to the upstream for each accepted connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Granularity of the sleeps while stalled or throttled.
const TICK: Duration = Duration::from_millis(5);

/// Which way bytes flow through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client → server (what the proxied client writes).
    Upstream,
    /// Server → client (what the proxied client reads).
    Downstream,
}

impl Direction {
    fn idx(self) -> usize {
        match self {
            Direction::Upstream => 0,
            Direction::Downstream => 1,
        }
    }
}

#[derive(Default)]
struct DirCtl {
    /// Bytes still allowed before every connection is closed (`cut_after`).
    cut_remaining: Option<u64>,
    /// Throttle: when the next chunk may go out at the earliest.
    next_free: Option<Instant>,
    /// Bytes to look for in what is forwarded, and which byte from their first occurrence
    /// gets its lowest bit flipped (`flip_at`).
    flip_at: Option<(Vec<u8>, usize)>,
}

#[derive(Default)]
struct DirState {
    stalled: AtomicBool,
    /// Bytes per second; 0 = unlimited.
    rate: AtomicU64,
    bytes: AtomicU64,
    ctl: Mutex<DirCtl>,
}

/// One proxied connection: the accepted client socket and the socket to the upstream.
struct Conn {
    client: TcpStream,
    server: TcpStream,
    closed: AtomicBool,
    pumps_left: AtomicUsize,
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// Shut both sockets down (FIN to both peers, wakes both pumps). Idempotent.
    fn close(&self) {
        if !self.closed.swap(true, SeqCst) {
            self.shutdown_sockets();
        }
    }

    fn shutdown_sockets(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

struct Shared {
    upstream: SocketAddr,
    stop: AtomicBool,
    refuse: AtomicBool,
    accepted: AtomicUsize,
    live_threads: AtomicUsize,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    dirs: [DirState; 2],
}

impl Shared {
    fn dir(&self, dir: Direction) -> &DirState {
        &self.dirs[dir.idx()]
    }

    /// Close every registered connection. All are marked closed before any socket is shut
    /// down, so once any peer sees its connection end, no pump forwards anything more.
    fn close_all(&self) {
        let conns = lock(&self.conns);
        let to_shut: Vec<&Arc<Conn>> = conns
            .values()
            .filter(|c| !c.closed.swap(true, SeqCst))
            .collect();
        for c in to_shut {
            c.shutdown_sockets();
        }
    }
}

/// A mutex guard even if a holder panicked (the data are plain counters and flags).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts a live proxy thread for as long as it exists (decrements even on panic).
struct ThreadGuard(Arc<Shared>);

impl ThreadGuard {
    fn new(shared: &Arc<Shared>) -> ThreadGuard {
        shared.live_threads.fetch_add(1, SeqCst);
        ThreadGuard(shared.clone())
    }
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        self.0.live_threads.fetch_sub(1, SeqCst);
    }
}

/// A fault-injecting TCP proxy listening on `127.0.0.1:<free port>` that forwards every
/// accepted connection to one upstream address. Dropping it stops the acceptor, closes the
/// listener and every proxied connection.
///
/// All fault controls take effect within about [`POLL_INTERVAL`] and apply to every
/// connection (current and future) unless documented otherwise.
pub struct Proxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .finish()
    }
}

impl Proxy {
    /// Listen on `127.0.0.1:<free port>` and forward to `upstream` (`"127.0.0.1:PORT"`).
    /// The upstream is connected to once per accepted connection, so it need not be up yet.
    /// Panics if the listener cannot be set up or `upstream` does not resolve.
    pub fn start(upstream: &str) -> Proxy {
        let upstream_addr = upstream
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("proxy: cannot resolve upstream {upstream:?}"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("proxy: set listener non-blocking");
        let addr = listener.local_addr().expect("proxy: listener address");
        let shared = Arc::new(Shared {
            upstream: upstream_addr,
            stop: AtomicBool::new(false),
            refuse: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            live_threads: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            dirs: Default::default(),
        });
        let sh = shared.clone();
        let acceptor = thread::Builder::new()
            .name(format!("proxy-accept-{}", addr.port()))
            .spawn(move || accept_loop(sh, listener))
            .expect("proxy: spawn acceptor thread");
        Proxy {
            shared,
            addr,
            acceptor: Some(acceptor),
        }
    }

    /// `127.0.0.1:PORT` of the listener.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The listener's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address every connection is forwarded to.
    pub fn upstream(&self) -> String {
        self.shared.upstream.to_string()
    }

    /// `redis://127.0.0.1:PORT` of the listener.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    /// `redis://user:password@127.0.0.1:PORT` (`redis://:password@…` without a user), user
    /// and password percent-encoded like [`crate::Server::url`].
    pub fn url_with_auth(&self, user: Option<&str>, password: &str) -> String {
        match user {
            Some(u) => format!(
                "redis://{}:{}@{}",
                percent_encode(u),
                percent_encode(password),
                self.addr()
            ),
            None => format!("redis://:{}@{}", percent_encode(password), self.addr()),
        }
    }

    /// Abruptly close every current connection: both sockets of each are `shutdown(Both)`
    /// and the pumps stop. This is an orderly FIN, not an RST (std cannot set `SO_LINGER 0`
    /// on stable): the peers' next read sees EOF and a later write typically fails with
    /// `EPIPE`/`ECONNRESET`. Bytes the proxy has not forwarded yet are dropped. New
    /// connections are accepted as usual.
    pub fn reset_all(&self) {
        self.shared.close_all();
    }

    /// Once `bytes` more bytes have been forwarded in `dir` (counted over all connections),
    /// close every current connection as [`reset_all`](Self::reset_all) does. Exactly
    /// `bytes` bytes get through: the chunk that crosses the budget is truncated. Applies
    /// once; a new call replaces a pending one. `bytes == 0` closes at the next byte.
    pub fn cut_after(&self, dir: Direction, bytes: u64) {
        lock(&self.shared.dir(dir).ctl).cut_remaining = Some(bytes);
    }

    /// Flip the lowest bit of the byte `skip` bytes into the next occurrence of `needle`
    /// forwarded in `dir` (a faulty link that TCP's checksum missed); once. An occurrence
    /// (with its flipped byte) split across two reads is not seen.
    pub fn flip_at(&self, dir: Direction, needle: &[u8], skip: usize) {
        lock(&self.shared.dir(dir).ctl).flip_at = Some((needle.to_vec(), skip));
    }

    /// Stop forwarding in `dir`: the sockets stay open, nothing more is read (at most one
    /// chunk already read is held back), so the sender's writes pile up in the TCP buffers
    /// and eventually block.
    pub fn stall(&self, dir: Direction) {
        self.shared.dir(dir).stalled.store(true, SeqCst);
    }

    /// Undo [`stall`](Self::stall).
    pub fn resume(&self, dir: Direction) {
        self.shared.dir(dir).stalled.store(false, SeqCst);
    }

    /// Limit `dir` to `bytes_per_sec` (shared by all connections in that direction; `None`
    /// removes the limit, `Some(0)` is treated as 1 byte/s). Data go out in small chunks
    /// (≈ 1/20 s worth each), each delayed so the average rate is respected; there is no
    /// burst allowance.
    pub fn throttle(&self, dir: Direction, bytes_per_sec: Option<u64>) {
        let d = self.shared.dir(dir);
        let mut ctl = lock(&d.ctl);
        d.rate.store(bytes_per_sec.map_or(0, |r| r.max(1)), SeqCst);
        ctl.next_free = None;
    }

    /// While `yes`, new connections are accepted and closed at once (the client sees EOF),
    /// like a node that is down behind a load balancer. Existing connections are untouched.
    pub fn refuse(&self, yes: bool) {
        self.shared.refuse.store(yes, SeqCst);
    }

    /// Currently open proxied connections (connected to the upstream and not closed).
    /// Connections are registered asynchronously after accept, so poll rather than assert
    /// right after connecting.
    pub fn connections(&self) -> usize {
        lock(&self.shared.conns)
            .values()
            .filter(|c| !c.is_closed())
            .count()
    }

    /// Connections accepted since start, including refused ones and ones whose upstream
    /// connect failed.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(SeqCst)
    }

    /// Total bytes forwarded in `dir` since start (counted as each chunk is handed to the
    /// destination socket, so never less than what the peer has received).
    pub fn bytes(&self, dir: Direction) -> u64 {
        self.shared.dir(dir).bytes.load(SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join(); // drops the listener
        }
        self.shared.close_all();
        // The pumps notice within a poll interval; don't leave them behind needlessly.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.shared.live_threads.load(SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(TICK);
        }
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    while !shared.stop.load(SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                shared.accepted.fetch_add(1, SeqCst);
                if shared.refuse.load(SeqCst) {
                    let _ = stream.shutdown(Shutdown::Both);
                    continue;
                }
                let guard = ThreadGuard::new(&shared);
                let sh = shared.clone();
                // If the spawn fails, the closure (stream and guard) is dropped: closed.
                let _ = thread::Builder::new()
                    .name("proxy-conn".into())
                    .spawn(move || {
                        let _guard = guard;
                        serve(sh, stream);
                    });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => thread::sleep(TICK), // WouldBlock, or e.g. EMFILE: retry
        }
    }
}

/// Connect to the upstream, register the connection, run the upstream pump here and the
/// downstream pump in a second thread.
fn serve(shared: Arc<Shared>, client: TcpStream) {
    let _ = client.set_nonblocking(false);
    let server = match TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(_) => {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    };
    for s in [&client, &server] {
        let _ = s.set_nodelay(true);
        if s.set_read_timeout(Some(POLL_INTERVAL)).is_err() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            return;
        }
    }
    let conn = Arc::new(Conn {
        client,
        server,
        closed: AtomicBool::new(false),
        pumps_left: AtomicUsize::new(2),
    });
    let id = shared.next_id.fetch_add(1, SeqCst);
    {
        let mut conns = lock(&shared.conns);
        if shared.stop.load(SeqCst) {
            conn.close();
            return;
        }
        conns.insert(id, conn.clone());
    }
    let guard = ThreadGuard::new(&shared);
    let (sh, c) = (shared.clone(), conn.clone());
    let spawned = thread::Builder::new()
        .name("proxy-pump-down".into())
        .spawn(move || {
            let _guard = guard;
            pump(&sh, &c, id, Direction::Downstream);
        });
    if spawned.is_err() {
        conn.close();
        finish(&shared, &conn, id);
    }
    pump(&shared, &conn, id, Direction::Upstream);
}

enum End {
    /// The source sent FIN: pass the half-close on and let the other direction finish.
    Eof,
    /// Error, cut, reset or stop: close both sides.
    Close,
}

/// Forward `dir` of one connection until EOF, error, or the connection is closed.
fn pump(shared: &Shared, conn: &Conn, id: u64, dir: Direction) {
    let (mut src, mut dst) = match dir {
        Direction::Upstream => (&conn.client, &conn.server),
        Direction::Downstream => (&conn.server, &conn.client),
    };
    let d = shared.dir(dir);
    let mut buf = vec![0u8; CHUNK];
    let end = loop {
        if !wait_while_stalled(shared, conn, d) {
            break End::Close;
        }
        let rate = d.rate.load(SeqCst);
        let want = if rate == 0 {
            CHUNK
        } else {
            (rate / 20).clamp(1, CHUNK as u64) as usize
        };
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => break End::Eof,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => break End::Close,
        };
        // A stall set while we were blocked in `read` holds this chunk back too.
        if !wait_while_stalled(shared, conn, d) {
            break End::Close;
        }
        let (take, cut) = {
            let mut ctl = lock(&d.ctl);
            if let Some((needle, skip)) = &ctl.flip_at {
                let found = buf[..n]
                    .windows(needle.len())
                    .position(|w| w == &needle[..])
                    .map(|i| i + skip)
                    .filter(|&i| i < n);
                if let Some(i) = found {
                    buf[i] ^= 1;
                    ctl.flip_at = None;
                }
            }
            match ctl.cut_remaining {
                Some(rem) if n as u64 >= rem => {
                    ctl.cut_remaining = None;
                    (rem as usize, true)
                }
                Some(rem) => {
                    ctl.cut_remaining = Some(rem - n as u64);
                    (n, false)
                }
                None => (n, false),
            }
        };
        if take > 0 {
            if !throttle_wait(shared, conn, d, take) {
                break End::Close;
            }
            // Counted before the write, so a peer never sees bytes `bytes()` does not.
            d.bytes.fetch_add(take as u64, SeqCst);
            if dst.write_all(&buf[..take]).is_err() {
                break End::Close;
            }
        }
        if cut {
            shared.close_all();
            break End::Close;
        }
    };
    match end {
        End::Eof => {
            let _ = dst.shutdown(Shutdown::Write);
        }
        End::Close => conn.close(),
    }
    finish(shared, conn, id);
}

/// One pump is done; the last one closes the connection and unregisters it.
fn finish(shared: &Shared, conn: &Conn, id: u64) {
    if conn.pumps_left.fetch_sub(1, SeqCst) == 1 {
        conn.close();
        lock(&shared.conns).remove(&id);
    }
}

/// Sleep while `d` is stalled; false if the connection closed or the proxy stopped meanwhile.
fn wait_while_stalled(shared: &Shared, conn: &Conn, d: &DirState) -> bool {
    loop {
        if conn.is_closed() || shared.stop.load(SeqCst) {
            return false;
        }
        if !d.stalled.load(SeqCst) {
            return true;
        }
        thread::sleep(TICK);
    }
}

/// Delay sending `n` bytes so `d`'s rate is respected; false if the connection closed or
/// the proxy stopped meanwhile.
fn throttle_wait(shared: &Shared, conn: &Conn, d: &DirState, n: usize) -> bool {
    let until = {
        let mut ctl = lock(&d.ctl);
        let rate = d.rate.load(SeqCst);
        if rate == 0 {
            return true;
        }
        let now = Instant::now();
        let start = ctl.next_free.map_or(now, |t| t.max(now));
        let until = start + Duration::from_secs_f64(n as f64 / rate as f64);
        ctl.next_free = Some(until);
        until
    };
    loop {
        if conn.is_closed() || shared.stop.load(SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        thread::sleep((until - now).min(TICK));
    }
}
