//! The fault-injecting proxy, against a real redis-server.

use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ferry_testkit::{read_reply, Client, Direction, Proxy, Reply, Server};

const BIG: usize = 1 << 20;

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn connect(proxy: &Proxy) -> Client {
    Client::connect(&proxy.addr()).expect("connect to proxy")
}

fn raw(proxy: &Proxy, timeout: Duration) -> TcpStream {
    let s = TcpStream::connect(proxy.addr()).expect("connect to proxy");
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    s
}

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A server holding `big` = BIG bytes.
fn server_with_big_value() -> (Server, Vec<u8>) {
    let server = Server::start();
    let value: Vec<u8> = (0..BIG).map(|i| b'a' + (i % 26) as u8).collect();
    server.cmd_bytes(&[b"SET", b"big", &value]);
    (server, value)
}

#[test]
fn commands_pass_through() {
    let server = Server::start();
    let proxy = Proxy::start(&server.addr());
    assert_eq!(proxy.upstream(), server.addr());
    assert_eq!(proxy.url(), format!("redis://{}", proxy.addr()));
    assert_eq!(
        proxy.url_with_auth(Some("us er"), "p@ss:w/rd"),
        format!("redis://us%20er:p%40ss%3Aw%2Frd@{}", proxy.addr())
    );
    assert_eq!(
        proxy.url_with_auth(None, "pw"),
        format!("redis://:pw@{}", proxy.addr())
    );

    let mut c = connect(&proxy);
    assert_eq!(c.cmd_str(&["SET", "k", "v"]).as_str(), "OK");
    assert_eq!(c.cmd_str(&["GET", "k"]).as_str(), "v");
    assert_eq!(server.cmd(&["GET", "k"]).as_str(), "v");
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(proxy.connections(), 1);
    // SET + GET requests, "+OK\r\n" + "$1\r\nv\r\n" replies.
    assert_eq!(
        proxy.bytes(Direction::Upstream),
        (encode(&[b"SET", b"k", b"v"]).len() + encode(&[b"GET", b"k"]).len()) as u64
    );
    assert_eq!(proxy.bytes(Direction::Downstream), 5 + 7);

    // A second concurrent connection, and a client hanging up is noticed.
    let mut c2 = connect(&proxy);
    assert_eq!(c2.cmd_str(&["PING"]).as_str(), "PONG");
    assert_eq!(proxy.connections(), 2);
    assert_eq!(proxy.accepted(), 2);
    drop(c2);
    wait_until("closed connection to go", Duration::from_secs(5), || {
        proxy.connections() == 1
    });
    assert_eq!(c.cmd_str(&["PING"]).as_str(), "PONG");
}

#[test]
fn reset_all_breaks_clients_and_new_connections_work() {
    let server = Server::start();
    let proxy = Proxy::start(&server.addr());
    let mut a = connect(&proxy);
    let mut b = connect(&proxy);
    assert_eq!(a.cmd_str(&["PING"]).as_str(), "PONG");
    assert_eq!(b.cmd_str(&["PING"]).as_str(), "PONG");
    assert_eq!(proxy.connections(), 2);

    proxy.reset_all();
    assert_eq!(proxy.connections(), 0);
    assert!(a.cmd(&[b"PING"]).is_err(), "command after reset_all");
    assert!(b.cmd(&[b"GET", b"x"]).is_err(), "command after reset_all");

    let mut c = connect(&proxy);
    assert_eq!(c.cmd_str(&["SET", "after", "reset"]).as_str(), "OK");
    assert_eq!(server.cmd(&["GET", "after"]).as_str(), "reset");
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.accepted(), 3);
}

#[test]
fn cut_after_downstream_closes_mid_reply() {
    let (server, value) = server_with_big_value();
    let proxy = Proxy::start(&server.addr());
    let mut warm = connect(&proxy);
    assert_eq!(warm.cmd_str(&["PING"]).as_str(), "PONG");

    let before = proxy.bytes(Direction::Downstream);
    let cut = 100_000u64;
    proxy.cut_after(Direction::Downstream, cut);
    let mut s = raw(&proxy, Duration::from_secs(10));
    s.write_all(&encode(&[b"GET", b"big"])).unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading the cut reply: {e}"),
    }
    assert_eq!(got.len() as u64, cut, "bytes received before the cut");
    assert_eq!(proxy.bytes(Direction::Downstream) - before, cut);
    assert!(got.starts_with(format!("${BIG}\r\n").as_bytes()));
    // Every connection open at the cut was closed, the idle one too.
    assert!(
        warm.cmd(&[b"PING"]).is_err(),
        "idle connection survived cut"
    );
    wait_until("connections to close", Duration::from_secs(5), || {
        proxy.connections() == 0
    });

    // The cut applied once: a new connection gets the whole value.
    let mut c = connect(&proxy);
    assert_eq!(c.cmd_str(&["GET", "big"]).as_bytes(), value);
}

#[test]
fn stall_downstream_times_out_and_resume_delivers() {
    let server = Server::start();
    server.cmd(&["SET", "k", "stalled-value"]);
    let proxy = Proxy::start(&server.addr());

    let mut c = connect(&proxy);
    assert_eq!(c.cmd_str(&["PING"]).as_str(), "PONG");
    c.set_timeout(Some(Duration::from_millis(500))).unwrap();
    proxy.stall(Direction::Downstream);
    let err = c
        .cmd(&[b"GET", b"k"])
        .expect_err("GET through a stalled proxy");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );

    // Same on a raw socket, where the pending reply can be read after `resume`.
    let s = raw(&proxy, Duration::from_millis(500));
    (&s).write_all(&encode(&[b"GET", b"k"])).unwrap();
    let mut byte = [0u8; 1];
    let err = (&s)
        .read(&mut byte)
        .expect_err("read through a stalled proxy");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
    assert_eq!(proxy.connections(), 2, "stall keeps connections open");

    proxy.resume(Direction::Downstream);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(&s);
    assert_eq!(read_reply(&mut r).unwrap().as_str(), "stalled-value");
    (&s).write_all(&encode(&[b"PING"])).unwrap();
    assert_eq!(read_reply(&mut r).unwrap().as_str(), "PONG");
}

#[test]
fn stall_upstream_holds_commands_until_resume() {
    let server = Server::start();
    let proxy = Proxy::start(&server.addr());
    let mut c = connect(&proxy);
    assert_eq!(c.cmd_str(&["PING"]).as_str(), "PONG");

    proxy.stall(Direction::Upstream);
    let s = raw(&proxy, Duration::from_secs(5));
    (&s).write_all(&encode(&[b"SET", b"held", b"1"])).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.cmd(&["GET", "held"]).is_nil(), "command got through");

    proxy.resume(Direction::Upstream);
    let mut r = BufReader::new(&s);
    assert_eq!(read_reply(&mut r).unwrap().as_str(), "OK");
    assert_eq!(server.cmd(&["GET", "held"]).as_str(), "1");
}

#[test]
fn throttle_slows_transfers() {
    let (server, value) = server_with_big_value();
    let proxy = Proxy::start(&server.addr());
    let mut c = connect(&proxy);
    let rate = 2 * BIG as u64; // 1 MiB at 2 MiB/s: about 0.5 s

    proxy.throttle(Direction::Downstream, Some(rate));
    let t = Instant::now();
    assert_eq!(c.cmd_str(&["GET", "big"]).as_bytes(), value);
    let down = t.elapsed();
    assert!(
        down >= Duration::from_millis(350),
        "downstream took {down:?}"
    );

    proxy.throttle(Direction::Downstream, None);
    proxy.throttle(Direction::Upstream, Some(rate));
    let t = Instant::now();
    assert_eq!(
        c.cmd(&[b"SET", b"big2", &value]).unwrap().as_str(),
        "OK".to_string()
    );
    let up = t.elapsed();
    assert!(up >= Duration::from_millis(350), "upstream took {up:?}");
    assert_eq!(server.cmd_bytes(&[b"GET", b"big2"]).as_bytes(), value);

    proxy.throttle(Direction::Upstream, None);
    assert_eq!(c.cmd_str(&["GET", "big"]).as_bytes(), value);
}

#[test]
fn refuse_closes_new_connections_until_lifted() {
    let server = Server::start();
    let proxy = Proxy::start(&server.addr());
    let mut existing = connect(&proxy);
    assert_eq!(existing.cmd_str(&["PING"]).as_str(), "PONG");

    proxy.refuse(true);
    for _ in 0..2 {
        let mut c = connect(&proxy);
        let r: io::Result<Reply> = c.cmd(&[b"PING"]);
        assert!(r.is_err(), "refused connection answered {r:?}");
    }
    assert_eq!(proxy.accepted(), 3);
    assert_eq!(proxy.connections(), 1);
    assert_eq!(existing.cmd_str(&["PING"]).as_str(), "PONG");

    proxy.refuse(false);
    let mut c = connect(&proxy);
    assert_eq!(c.cmd_str(&["PING"]).as_str(), "PONG");
    assert_eq!(proxy.connections(), 2);
}

#[test]
fn drop_closes_listener_and_connections() {
    let server = Server::start();
    let proxy = Proxy::start(&server.addr());
    let addr = proxy.addr();
    let mut c = connect(&proxy);
    assert_eq!(c.cmd_str(&["PING"]).as_str(), "PONG");
    drop(proxy);
    assert!(c.cmd(&[b"PING"]).is_err(), "connection survived drop");
    // (A connect to a closed port in the ephemeral range can rarely "succeed" as a TCP
    // self-connection; that is not a listener.)
    if let Ok(s) = TcpStream::connect(&addr) {
        assert_eq!(
            s.local_addr().ok(),
            s.peer_addr().ok(),
            "listener survived drop"
        );
    }
}

#[test]
fn upstream_down_closes_accepted_connections() {
    let mut server = Server::start();
    let proxy = Proxy::start(&server.addr());
    server.kill();
    let mut c = connect(&proxy);
    assert!(c.cmd(&[b"PING"]).is_err());
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(proxy.connections(), 0);
}
