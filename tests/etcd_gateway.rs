//! `fleet::etcd`'s requests and parsers against a real etcd (Debian's etcd-server, 3.4): the
//! election, the fenced write, lease-bound records and prefix reads work as the fleet mode
//! needs them. The etcd binary is `$ETCD_BIN` or `etcd` on the PATH (`.ci/run` installs it);
//! without it the test is skipped, and fails when `CI` is set.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use canary_guard::fleet::etcd::{self, Request};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

struct Etcd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn etcd_binary() -> Option<String> {
    if let Ok(p) = std::env::var("ETCD_BIN") {
        return Some(p);
    }
    let found = Command::new("sh")
        .args(["-c", "command -v etcd"])
        .output()
        .ok()?;
    let p = String::from_utf8(found.stdout).ok()?.trim().to_string();
    (!p.is_empty()).then_some(p)
}

fn start() -> Option<Etcd> {
    let Some(bin) = etcd_binary() else {
        let ci = std::env::var("CI")
            .is_ok_and(|v| matches!(v.to_lowercase().as_str(), "1" | "true" | "yes"));
        assert!(
            !ci,
            "etcd not found (ETCD_BIN or PATH): CI must run this test"
        );
        eprintln!("etcd not found: skipping");
        return None;
    };
    let (port, peer) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("cg-etcd-{}-{port}", std::process::id()));
    let client = format!("http://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(bin)
        .args(["--name", "n1", "--data-dir"])
        .arg(&dir)
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("n1={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let etcd = Etcd { child, port, dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok((200, body)) = http(port, "GET", "/health", b"") {
            if String::from_utf8_lossy(&body).contains("\"true\"") {
                return Some(etcd);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("etcd did not become healthy on port {port}");
}

/// One HTTP/1.1 exchange (Connection: close), chunked bodies decoded.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u32, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: etcd\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let headers = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = headers
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut payload = raw.get(split + 4..).unwrap_or_default().to_vec();
    if headers.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = payload.as_slice();
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + size]);
            rest = &rest[nl + 2 + size + 2..];
        }
        payload = out;
    }
    Ok((status, payload))
}

fn send(etcd: &Etcd, r: &Request) -> (Option<u32>, Vec<u8>) {
    let (status, body) = http(etcd.port, "POST", r.path, &r.body).unwrap();
    (Some(status), body)
}

#[test]
fn election_fenced_writes_and_lease_bound_records_against_a_real_etcd() {
    let Some(e) = start() else { return };
    let (judge, state) = (b"/cg/web/judge".as_slice(), b"/cg/web/state".as_slice());

    let (st, b) = send(&e, &etcd::lease_grant(5));
    let lease = etcd::parse_lease(st, &b).unwrap();
    assert!(lease.id > 0 && lease.ttl_s == 5, "{lease:?}");

    // Election: the first create wins; the second learns the holder and its create revision.
    let (st, b) = send(
        &e,
        &etcd::create_if_absent(judge, b"replica-a", Some(lease.id)),
    );
    assert!(etcd::parse_txn(st, &b).unwrap().succeeded);
    let (st, b) = send(&e, &etcd::create_if_absent(judge, b"replica-b", None));
    let lost = etcd::parse_txn(st, &b).unwrap();
    assert!(!lost.succeeded);
    assert_eq!(lost.kvs[0].value, b"replica-a");
    let created = lost.kvs[0].create_revision;

    // Fenced writes: only the holder, only against the state it read.
    let (st, b) = send(&e, &etcd::fenced_put(judge, created, state, 0, b"s1"));
    assert!(
        etcd::parse_txn(st, &b).unwrap().succeeded,
        "first write (state absent)"
    );
    let (st, b) = send(&e, &etcd::fenced_put(judge, created, state, 0, b"s2"));
    let stale = etcd::parse_txn(st, &b).unwrap();
    assert!(
        !stale.succeeded,
        "a writer that read no state cannot overwrite one"
    );
    let seen = stale
        .kvs
        .iter()
        .find(|kv| kv.key == state)
        .unwrap()
        .mod_revision;
    let (st, b) = send(
        &e,
        &etcd::fenced_put(judge, created + 1000, state, seen, b"s2"),
    );
    assert!(
        !etcd::parse_txn(st, &b).unwrap().succeeded,
        "a deposed judge cannot write"
    );
    let (st, b) = send(&e, &etcd::fenced_put(judge, created, state, seen, b"s2"));
    assert!(etcd::parse_txn(st, &b).unwrap().succeeded);
    let (st, b) = send(&e, &etcd::range(state));
    assert_eq!(etcd::parse_range(st, &b).unwrap().kvs[0].value, b"s2");

    // Replica records under a prefix, bound to the lease; they vanish with it.
    for r in [b"/cg/web/replica/a".as_slice(), b"/cg/web/replica/b"] {
        let (st, b) = send(&e, &etcd::put(r, b"tally", Some(lease.id)));
        assert_eq!(st, Some(200), "{}", String::from_utf8_lossy(&b));
    }
    let (st, b) = send(&e, &etcd::range_prefix(b"/cg/web/replica/"));
    assert_eq!(etcd::parse_range(st, &b).unwrap().kvs.len(), 2);
    let (st, b) = send(&e, &etcd::lease_keepalive(lease.id));
    assert!(etcd::parse_lease(st, &b).unwrap().ttl_s > 0);
    let (st, b) = send(&e, &etcd::lease_revoke(lease.id));
    assert_eq!(st, Some(200), "{}", String::from_utf8_lossy(&b));
    let (st, b) = send(&e, &etcd::range_prefix(b"/cg/web/replica/"));
    assert!(etcd::parse_range(st, &b).unwrap().kvs.is_empty());
    let (st, b) = send(&e, &etcd::range(judge));
    assert!(
        etcd::parse_range(st, &b).unwrap().kvs.is_empty(),
        "the judge key went with its lease"
    );
    let (st, b) = send(&e, &etcd::lease_keepalive(lease.id));
    assert_eq!(
        etcd::parse_lease(st, &b).map(|l| l.ttl_s <= 0),
        Ok(true),
        "a revoked lease renews to nothing"
    );
}
