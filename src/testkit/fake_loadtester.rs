//! A fake of Flagger's load tester for webhook tests on the fake host: its gate API, keyed by
//! `name.namespace` as fluxcd/flagger `pkg/loadtester/server.go` keys them, its task endpoint
//! `/`, and an event sink at `/events` (tests/integration/loadtester.py is the real-HTTP one).

use crate::testkit::fake_host::SentCall;
use serde_json::Value;
use std::collections::HashSet;

/// Flagger's load tester as far as gates go, plus an event sink and a load-test endpoint.
#[derive(Default)]
pub struct LoadTester {
    pub open: HashSet<String>,
    pub events: Vec<Value>,
    pub load_tests: u64,
    /// Status the load-test endpoint answers (200 by default).
    pub load_status: Option<u32>,
    /// Calls to these paths get no answer (unreachable).
    pub unreachable: HashSet<String>,
    pub calls: Vec<(String, Value)>,
}

impl LoadTester {
    fn key(body: &Value) -> String {
        format!(
            "{}.{}",
            body["name"].as_str().unwrap(),
            body["namespace"].as_str().unwrap()
        )
    }

    pub fn respond(&mut self, call: &SentCall) -> Option<(u32, Vec<u8>)> {
        let body: Value = serde_json::from_slice(&call.body).unwrap();
        self.calls.push((call.path.clone(), body.clone()));
        if self.unreachable.contains(&call.path) {
            return None;
        }
        let key = Self::key(&body);
        let forbidden = || Some((403, b"Forbidden".to_vec()));
        match call.path.as_str() {
            "/gate/approve" => Some((200, Vec::new())),
            "/gate/halt" => forbidden(),
            "/gate/check" if self.open.contains(&key) => Some((200, b"Approved".to_vec())),
            "/gate/check" => forbidden(),
            "/rollback/check" if self.open.contains(&format!("rollback.{key}")) => {
                Some((200, b"Approved".to_vec()))
            }
            "/rollback/check" => forbidden(),
            "/events" => {
                self.events.push(body);
                Some((202, Vec::new()))
            }
            "/" => {
                self.load_tests += 1;
                Some((self.load_status.unwrap_or(200), b"{}".to_vec()))
            }
            _ => Some((404, Vec::new())),
        }
    }

    pub fn open(&mut self, gate: &str) {
        self.open.insert(gate.to_string());
    }
}
