//! An in-memory etcd v3 behind the HTTP/JSON gateway, for fleet-mode tests against the fake
//! host: the requests `fleet::etcd` builds (range, put, txn with CREATE/MOD compares, delete,
//! lease grant, keepalive and revoke) answered in the gateway's format (base64 keys and values, int64
//! fields as strings, `succeeded` omitted when false, keepalive wrapped in `result`), with
//! leases that expire on the test's clock and take their keys with them. Only what canary-guard
//! sends is implemented; anything else is a 404, as the gateway answers an unknown path.

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

#[derive(Debug, Default)]
pub struct FakeEtcd {
    pub kv: BTreeMap<Vec<u8>, Entry>,
    pub revision: i64,
    /// Lease id -> (TTL ms, expires at ms).
    leases: HashMap<i64, (u64, u64)>,
    next_lease: i64,
    /// Requests answered, by path.
    pub served: BTreeMap<String, u64>,
}

fn b64(data: &[u8]) -> String {
    crate::fleet::etcd::base64::encode(data)
}

fn unb64(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(crate::fleet::etcd::base64::decode)
        .unwrap_or_default()
}

fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

impl FakeEtcd {
    /// Answers one gateway call at `now_ms`: (HTTP status, body).
    pub fn handle(&mut self, path: &str, body: &[u8], now_ms: u64) -> (u32, Vec<u8>) {
        self.expire(now_ms);
        *self.served.entry(path.to_string()).or_default() += 1;
        let Ok(req) = serde_json::from_slice::<Value>(body) else {
            return (400, br#"{"error":"bad json","code":3}"#.to_vec());
        };
        let answer = match path {
            "/v3/kv/range" => Some(self.range(&req)),
            "/v3/kv/put" => self.put(&req).map(|_| json!({"header": self.header()})),
            "/v3/kv/deleterange" => Some(self.delete(&req)),
            "/v3/kv/txn" => self.txn(&req),
            "/v3/lease/grant" => Some(self.grant(&req, now_ms)),
            "/v3/lease/keepalive" => Some(self.keepalive(&req, now_ms)),
            "/v3/lease/revoke" => self.revoke(&req),
            _ => return (404, br#"{"error":"not found"}"#.to_vec()),
        };
        match answer {
            Some(v) => (200, v.to_string().into_bytes()),
            None => (
                400,
                br#"{"error":"etcdserver: requested lease not found","code":5}"#.to_vec(),
            ),
        }
    }

    /// The keys of expired leases vanish (etcd's lessor, on the test's clock).
    pub fn expire(&mut self, now_ms: u64) {
        let dead: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, (_, at))| *at <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        if dead.is_empty() {
            return;
        }
        for id in &dead {
            self.leases.remove(id);
        }
        let before = self.kv.len();
        self.kv.retain(|_, e| !dead.contains(&e.lease));
        if self.kv.len() != before {
            self.revision += 1;
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.kv.get(key)
    }

    /// Writes a key as a client outside the fleet would (a forged or restored value).
    pub fn put_raw(&mut self, key: &[u8], value: &[u8]) {
        self.write(key.to_vec(), value.to_vec(), 0);
    }

    fn header(&self) -> Value {
        json!({"cluster_id": "1", "member_id": "1", "revision": self.revision.to_string(), "raft_term": "2"})
    }

    fn kv_json(key: &[u8], e: &Entry, keys_only: bool) -> Value {
        let mut v = json!({
            "key": b64(key),
            "create_revision": e.create_revision.to_string(),
            "mod_revision": e.mod_revision.to_string(),
            "version": e.version.to_string(),
        });
        if !keys_only && !e.value.is_empty() {
            v["value"] = json!(b64(&e.value));
        }
        if e.lease != 0 {
            v["lease"] = json!(e.lease.to_string());
        }
        v
    }

    fn range(&self, req: &Value) -> Value {
        let key = unb64(&req["key"]);
        let end = unb64(&req["range_end"]);
        let keys_only = req["keys_only"].as_bool().unwrap_or(false);
        let kvs: Vec<Value> = self
            .kv
            .iter()
            .filter(|(k, _)| {
                if end.is_empty() {
                    **k == key
                } else {
                    k.as_slice() >= key.as_slice() && k.as_slice() < end.as_slice()
                }
            })
            .map(|(k, e)| Self::kv_json(k, e, keys_only))
            .collect();
        let mut out = json!({"header": self.header()});
        if !kvs.is_empty() {
            out["count"] = json!(kvs.len().to_string());
            out["kvs"] = Value::Array(kvs);
        }
        out
    }

    fn write(&mut self, key: Vec<u8>, value: Vec<u8>, lease: i64) {
        self.revision += 1;
        let rev = self.revision;
        let e = self.kv.entry(key).or_insert(Entry {
            value: Vec::new(),
            create_revision: rev,
            mod_revision: rev,
            version: 0,
            lease: 0,
        });
        e.value = value;
        e.mod_revision = rev;
        e.version += 1;
        e.lease = lease;
    }

    /// None: the lease named does not exist (etcd refuses the put).
    fn put(&mut self, req: &Value) -> Option<()> {
        let lease = int(&req["lease"]);
        if lease != 0 && !self.leases.contains_key(&lease) {
            return None;
        }
        self.write(unb64(&req["key"]), unb64(&req["value"]), lease);
        Some(())
    }

    fn delete(&mut self, req: &Value) -> Value {
        let key = unb64(&req["key"]);
        let end = unb64(&req["range_end"]);
        let before = self.kv.len();
        self.kv.retain(|k, _| {
            if end.is_empty() {
                *k != key
            } else {
                !(k.as_slice() >= key.as_slice() && k.as_slice() < end.as_slice())
            }
        });
        let deleted = before - self.kv.len();
        if deleted > 0 {
            self.revision += 1;
        }
        json!({"header": self.header(), "deleted": deleted.to_string()})
    }

    fn compare(&self, c: &Value) -> bool {
        let e = self.kv.get(&unb64(&c["key"]));
        let (actual, expected) = match c["target"].as_str() {
            Some("CREATE") => (
                e.map_or(0, |e| e.create_revision),
                int(&c["create_revision"]),
            ),
            Some("MOD") => (e.map_or(0, |e| e.mod_revision), int(&c["mod_revision"])),
            Some("VERSION") => (e.map_or(0, |e| e.version), int(&c["version"])),
            _ => return false,
        };
        match c["result"].as_str().unwrap_or("EQUAL") {
            "EQUAL" => actual == expected,
            "NOT_EQUAL" => actual != expected,
            "GREATER" => actual > expected,
            "LESS" => actual < expected,
            _ => false,
        }
    }

    fn txn(&mut self, req: &Value) -> Option<Value> {
        let ok = req["compare"]
            .as_array()
            .is_none_or(|cs| cs.iter().all(|c| self.compare(c)));
        let branch = if ok { &req["success"] } else { &req["failure"] };
        let ops = branch.as_array().cloned().unwrap_or_default();
        // A txn is one revision however many writes it holds.
        let mut responses = Vec::new();
        for op in &ops {
            if let Some(r) = op.get("request_range") {
                responses.push(json!({"response_range": self.range(r)}));
            } else if let Some(p) = op.get("request_put") {
                self.put(p)?;
                responses.push(json!({"response_put": {"header": self.header()}}));
            } else if let Some(d) = op.get("request_delete_range") {
                responses.push(json!({"response_delete_range": self.delete(d)}));
            }
        }
        let mut out = json!({"header": self.header(), "responses": responses});
        if ok {
            out["succeeded"] = json!(true);
        }
        Some(out)
    }

    fn grant(&mut self, req: &Value, now_ms: u64) -> Value {
        let ttl_s = int(&req["TTL"]).max(1);
        self.next_lease += 1;
        let id = 0x7000 + self.next_lease;
        let ttl_ms = ttl_s as u64 * 1000;
        self.leases.insert(id, (ttl_ms, now_ms + ttl_ms));
        json!({"header": self.header(), "ID": id.to_string(), "TTL": ttl_s.to_string()})
    }

    /// The lease and its keys go at once (None: no such lease, as etcd refuses it).
    fn revoke(&mut self, req: &Value) -> Option<Value> {
        let id = int(&req["ID"]);
        self.leases.remove(&id)?;
        let before = self.kv.len();
        self.kv.retain(|_, e| e.lease != id);
        if self.kv.len() != before {
            self.revision += 1;
        }
        Some(json!({"header": self.header()}))
    }

    fn keepalive(&mut self, req: &Value, now_ms: u64) -> Value {
        let id = int(&req["ID"]);
        let ttl = match self.leases.get_mut(&id) {
            Some((ttl_ms, at)) => {
                *at = now_ms + *ttl_ms;
                (*ttl_ms / 1000) as i64
            }
            None => 0, // an expired lease: the gateway answers TTL 0 (or omits it)
        };
        let mut result = json!({"header": self.header(), "ID": id.to_string()});
        if ttl > 0 {
            result["TTL"] = json!(ttl.to_string());
        }
        json!({"result": result})
    }
}
