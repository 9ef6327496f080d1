//! `canary-guard`: the operator's CLI for the control endpoint of a canary-guard proxy.
//!
//!   canary-guard [--endpoint URL] [--token TOKEN] status [--json]
//!   canary-guard [--endpoint URL] [--token TOKEN] watch [--interval 1s]
//!   canary-guard [--endpoint URL] [--token TOKEN] promote|abort|pause|resume|approve NAME
//!
//!   canary-guard --etcd http://127.0.0.1:2379 [--prefix /canary-guard] status | ACTION NAME
//!
//! The endpoint defaults to $CANARY_GUARD_ENDPOINT, else http://127.0.0.1:9902; the token to
//! $CANARY_GUARD_TOKEN. Plain HTTP/1.1 to a loopback listener (the control endpoint takes
//! loopback callers unless allowRemote); exit 0 on success, 1 on a refused request, 2 when
//! the endpoint cannot be reached or the command line is wrong.

// serde_json's `value["key"]` gives Null for a missing key (it never panics), and the table's
// rows are arrays of a fixed width.
#![allow(clippy::indexing_slicing)]

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: canary-guard [--endpoint URL] [--token TOKEN] status [--json] | watch [--interval 1s] | promote|abort|pause|resume|approve NAME\n       canary-guard --etcd http://HOST:2379 [--prefix /canary-guard] status | promote|abort|pause|resume|approve NAME   (fleet mode, straight from etcd)";

struct Endpoint {
    host: String,
    port: u16,
    token: Option<String>,
}

fn parse_endpoint(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: the endpoint must be an http:// URL (host:port)"))?;
    let hostport = rest.split('/').next().unwrap_or("");
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| format!("{url}: the endpoint needs a port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{url}: {port:?} is not a port"))?;
    Ok((host.to_string(), port))
}

/// One request: (status, body as JSON).
fn call(ep: &Endpoint, method: &str, path: &str) -> Result<(u32, Value), String> {
    call_with(ep, method, path, "")
}

fn call_with(ep: &Endpoint, method: &str, path: &str, body: &str) -> Result<(u32, Value), String> {
    let addr = (ep.host.as_str(), ep.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", ep.host))?
        .next()
        .ok_or_else(|| format!("cannot resolve {}", ep.host))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| {
        format!(
            "cannot reach the control endpoint at http://{}:{}: {e}",
            ep.host, ep.port
        )
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let auth = ep
        .token
        .as_ref()
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {}:{}\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        ep.host,
        ep.port,
        body.len()
    );
    stream
        .write_all(req.as_bytes())
        .map_err(|e| format!("sending the request failed: {e}"))?;
    // Read the head, then exactly content-length bytes: Envoy holds a closing connection
    // open for its delayed-close timeout (1 s), so waiting for the end would wait for that.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("reading the answer failed: {e}"))?;
        raw.extend_from_slice(&buf[..n]);
        if n == 0 || answer_complete(&raw) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the endpoint's answer is not HTTP")?;
    let status: u32 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("the endpoint's answer has no status")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    let json = serde_json::from_str(body.trim()).unwrap_or(Value::String(body.trim().to_string()));
    Ok((status, json))
}

/// The head is in and so is the whole body (by content-length, or a chunked body's end).
fn answer_complete(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    match length {
        Some(n) => body.len() >= n,
        None => body.ends_with("0\r\n\r\n"),
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A table like `kubectl get canary`.
fn table(list: &[Value]) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "REVISION".into(),
        "PHASE".into(),
        "WEIGHT".into(),
        "FAILED CHECKS".into(),
        "LAST DECISION".into(),
    ]];
    for c in list {
        let mut phase = cell(&c["phase"]);
        if c["paused"].as_bool() == Some(true) {
            phase.push_str(" (paused)");
        }
        let decision = c["lastDecision"]["text"]
            .as_str()
            .map(|t| t.split_once(": ").map_or(t, |(_, rest)| rest).to_string())
            .unwrap_or_else(|| "-".into());
        rows.push([
            cell(&c["name"]),
            cell(&c["revision"]),
            phase,
            cell(&c["weight"]),
            cell(&c["failedChecks"]),
            decision,
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                line.push_str(&format!("{:<w$}   ", r[i], w = *w));
            }
            line.push_str(&r[5]);
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Fleet mode, straight from etcd (its v3 HTTP gateway): every canary's newest revision state
/// and its judge, as the control endpoint's status shape.
fn etcd_status(ep: &Endpoint, prefix: &str) -> Result<Vec<Value>, String> {
    use canary_guard::fleet::etcd::base64;
    let start = format!("{prefix}/");
    let end = format!("{prefix}0"); // '/' + 1
    let q = serde_json::json!({"key": base64::encode(start.as_bytes()), "range_end": base64::encode(end.as_bytes())});
    let (status, body) = call_with(ep, "POST", "/v3/kv/range", &q.to_string())?;
    if status != 200 {
        return Err(format!("etcd answered HTTP {status}: {body}"));
    }
    let mut newest: std::collections::BTreeMap<String, (i64, Value)> = Default::default();
    let mut judges: std::collections::BTreeMap<String, String> = Default::default();
    for kv in body["kvs"].as_array().cloned().unwrap_or_default() {
        let key = base64::decode(kv["key"].as_str().unwrap_or("")).unwrap_or_default();
        let key = String::from_utf8_lossy(&key).into_owned();
        let Some(rest) = key.strip_prefix(&start) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let value = base64::decode(kv["value"].as_str().unwrap_or("")).unwrap_or_default();
        let modrev: i64 = kv["mod_revision"]
            .as_str()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        match parts.as_slice() {
            [name, "state", _] => {
                let Some(st) = canary_guard::state::CanaryState::decode(&value) else {
                    continue;
                };
                let row = serde_json::json!({"name": name, "revision": st.revision, "phase": st.phase.name(),
                    "weight": st.weight, "failedChecks": st.failed_checks, "lastCheckMs": st.last_check_ms});
                if newest.get(*name).is_none_or(|(m, _)| modrev > *m) {
                    newest.insert((*name).to_string(), (modrev, row));
                }
            }
            [name, "judge", _] => {
                judges.insert(
                    (*name).to_string(),
                    String::from_utf8_lossy(&value).into_owned(),
                );
            }
            _ => {}
        }
    }
    Ok(newest
        .into_iter()
        .map(|(name, (_, mut row))| {
            let judge = judges.get(&name).cloned().unwrap_or_else(|| "-".into());
            row["lastDecision"] = serde_json::json!({"text": format!("judge {judge}")});
            row
        })
        .collect())
}

/// Fleet mode, straight to etcd: the command key the judge reads at its next poll.
fn etcd_act(ep: &Endpoint, prefix: &str, verb: &str, name: &str) -> Result<String, (u8, String)> {
    use canary_guard::control::{Action, Command};
    use canary_guard::fleet::etcd::base64;
    let list = etcd_status(ep, prefix).map_err(|e| (2, e))?;
    let Some(row) = list.iter().find(|r| r["name"] == name) else {
        return Err((1, format!("no canary {name:?} in etcd under {prefix}")));
    };
    if row["phase"] == "Failed" {
        return Err((
            1,
            format!(
                "revision {} of canary {name} is Failed: only a new revision runs again",
                cell(&row["revision"])
            ),
        ));
    }
    let Some(action) = Action::parse(verb) else {
        return Err((2, format!("unknown action {verb}")));
    };
    let revision = cell(&row["revision"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let cmd = Command {
        id: now,
        action,
        revision: revision.clone(),
        by: "canary-guard CLI (etcd)".into(),
        at_ms: now,
    };
    let key = format!(
        "{prefix}/{name}/command/{}",
        canary_guard::fleet::escape(&revision)
    );
    let put = serde_json::json!({"key": base64::encode(key.as_bytes()), "value": base64::encode(&cmd.encode())});
    match call_with(ep, "POST", "/v3/kv/put", &put.to_string()) {
        Ok((200, _)) => Ok(revision),
        Ok((status, body)) => Err((1, format!("etcd answered HTTP {status}: {body}"))),
        Err(e) => Err((2, e)),
    }
}

fn refused(status: u32, body: &Value) -> ExitCode {
    let msg = body["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string());
    eprintln!("canary-guard: HTTP {status}: {msg}");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut endpoint =
        std::env::var("CANARY_GUARD_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9902".into());
    let mut token = std::env::var("CANARY_GUARD_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let mut json_out = false;
    let mut etcd: Option<String> = None;
    let mut prefix = "/canary-guard".to_string();
    let mut interval = Duration::from_secs(1);
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = std::mem::take(&mut args[i]);
        let value = |i: &mut usize| {
            *i += 1;
            args.get(*i).cloned()
        };
        match a.as_str() {
            "--endpoint" => match value(&mut i) {
                Some(v) => endpoint = v,
                None => return usage("--endpoint needs a URL"),
            },
            "--token" => token = value(&mut i),
            "--etcd" => etcd = value(&mut i),
            "--prefix" => match value(&mut i) {
                Some(p) => prefix = p,
                None => return usage("--prefix needs the fleet prefix (default /canary-guard)"),
            },
            "--json" => json_out = true,
            "--interval" => match value(&mut i)
                .and_then(|v| canary_guard::config::duration::parse_millis(&v).ok())
            {
                Some(ms) if ms >= 100 => interval = Duration::from_millis(ms),
                _ => return usage("--interval needs a duration of at least 100ms (e.g. 2s)"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => rest.push(a),
        }
        i += 1;
    }
    let (host, port) = match parse_endpoint(&endpoint) {
        Ok(hp) => hp,
        Err(e) => return usage(&e),
    };
    let ep = Endpoint { host, port, token };
    if let Some(url) = etcd {
        let (host, port) = match parse_endpoint(&url) {
            Ok(hp) => hp,
            Err(e) => return usage(&e),
        };
        let etcd = Endpoint {
            host,
            port,
            token: None,
        };
        return match rest
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["status"] => match etcd_status(&etcd, &prefix) {
                Ok(list) if json_out => {
                    println!("{}", Value::Array(list));
                    ExitCode::SUCCESS
                }
                Ok(list) => {
                    println!("{}", table(&list));
                    ExitCode::SUCCESS
                }
                Err(e) => unreachable_endpoint(&e),
            },
            [verb @ ("promote" | "abort" | "pause" | "resume" | "approve"), name] => {
                match etcd_act(&etcd, &prefix, verb, name) {
                    Ok(rev) => {
                        println!("canary {name}: {verb} written to etcd (revision {rev}); the fleet's judge carries it out at its next poll");
                        ExitCode::SUCCESS
                    }
                    Err((code, e)) => {
                        eprintln!("canary-guard: {e}");
                        ExitCode::from(code)
                    }
                }
            }
            _ => usage("with --etcd: status, or promote|abort|pause|resume|approve NAME"),
        };
    }
    match rest
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["status"] => match call(&ep, "GET", "/canaries") {
            Ok((200, Value::Array(list))) => {
                if json_out {
                    println!("{}", Value::Array(list));
                } else {
                    println!("{}", table(&list));
                }
                ExitCode::SUCCESS
            }
            Ok((status, body)) => refused(status, &body),
            Err(e) => unreachable_endpoint(&e),
        },
        ["watch"] => loop {
            match call(&ep, "GET", "/canaries") {
                Ok((200, Value::Array(list))) => {
                    // Clear the screen and home the cursor, then the table.
                    println!("\x1b[2J\x1b[H{}", table(&list));
                    let _ = std::io::stdout().flush();
                }
                Ok((status, body)) => return refused(status, &body),
                Err(e) => return unreachable_endpoint(&e),
            }
            std::thread::sleep(interval);
        },
        [verb @ ("promote" | "abort" | "pause" | "resume" | "approve"), name] => {
            match call(&ep, "POST", &format!("/canaries/{name}/{verb}")) {
                Ok((202, body)) => {
                    println!(
                        "canary {name}: {verb} accepted (revision {}, by {}); the analyser carries it out on its next tick",
                        cell(&body["revision"]),
                        cell(&body["by"])
                    );
                    ExitCode::SUCCESS
                }
                Ok((status, body)) => refused(status, &body),
                Err(e) => unreachable_endpoint(&e),
            }
        }
        _ => usage("unknown command"),
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("canary-guard: {why}\n{USAGE}");
    ExitCode::from(2)
}

fn unreachable_endpoint(e: &str) -> ExitCode {
    eprintln!(
        "canary-guard: {e} (is the control listener configured? see the README's Control API)"
    );
    ExitCode::from(2)
}
