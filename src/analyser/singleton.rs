//! The bootstrap singleton: analyses every canary whose filters registered in this proxy, with
//! the configuration those filters published (so an xDS update of the filter reaches it).

use super::Analyser;
use crate::config;
use crate::host::{HostErrors, HttpCalls, Level, RootHost, SharedStore, Telemetry, Watched};
use crate::store::lease::HolderKind;
use crate::store::registry::registered;
use crate::store::Keys;
use hashbrown::HashMap;

pub struct Singleton {
    token: u64,
    analysers: HashMap<String, (Vec<u8>, Analyser)>,
    /// Published configurations that did not parse (logged once each).
    refused: HashMap<String, Vec<u8>>,
}

impl Singleton {
    pub fn new(token: u64) -> Self {
        Singleton {
            token,
            analysers: HashMap::new(),
            refused: HashMap::new(),
        }
    }

    pub fn tick(
        &mut self,
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        host: &mut dyn RootHost,
        now_ms: u64,
    ) {
        for name in registered(store) {
            // Host failures met for this canary, reported under its name at the end.
            let errors = HostErrors::default();
            let watched = Watched {
                store,
                errors: &errors,
            };
            let raw = match watched.get(&Keys::new(&name).config) {
                Ok(Some((bytes, _))) => bytes,
                _ => {
                    errors.report(&name, tel);
                    continue;
                }
            };
            if self.pick_up(&watched, tel, &name, raw) {
                if let Some((_, a)) = self.analysers.get_mut(&name) {
                    a.tick_with(&watched, tel, host, now_ms);
                }
            }
            errors.report(&name, tel);
        }
    }

    /// Makes sure the canary's analyser runs its published configuration `raw`; false when
    /// there is none to run (refused or not this canary's).
    fn pick_up(
        &mut self,
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        name: &str,
        raw: Vec<u8>,
    ) -> bool {
        let fresh = self
            .analysers
            .get(name)
            .is_none_or(|(seen, _)| *seen != raw);
        if !fresh {
            return true;
        }
        if self.refused.get(name) == Some(&raw) {
            return false;
        }
        match config::parse(&raw) {
            Ok(cfg) if cfg.name == name => {
                tel.log(
                    Level::Info,
                    &format!(
                        "canary {name} rev {}: singleton analyser picked up the configuration",
                        cfg.revision
                    ),
                );
                let mut analyser = Analyser::new(cfg, self.token, HolderKind::Singleton);
                if let Some((_, old)) = self.analysers.get(name) {
                    analyser.inherit_lead(old);
                }
                self.analysers.insert(name.to_string(), (raw, analyser));
                true
            }
            Ok(_) => false,
            Err(e) => {
                // Filters validate before publishing: this is corruption, never trusted.
                tel.log(
                    Level::Error,
                    &format!(
                        "canary {name}: published configuration is unreadable, not analysing: {e}"
                    ),
                );
                if let Some((_, mut old)) = self.analysers.remove(name) {
                    old.shutdown(store, tel);
                }
                self.refused.insert(name.to_string(), raw);
                false
            }
        }
    }

    /// The answer to an HTTP call one of the analysers made (fleet mode).
    #[allow(clippy::too_many_arguments)]
    pub fn on_http_call_response(
        &mut self,
        token: u32,
        status: Option<u32>,
        body: &[u8],
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        host: &mut dyn HttpCalls,
        now_ms: u64,
    ) {
        if let Some((_, a)) = self
            .analysers
            .values_mut()
            .find(|(_, a)| a.owns_call(token))
        {
            a.on_http_call_response(token, status, body, store, tel, host, now_ms);
        }
    }

    pub fn shutdown(&mut self, store: &dyn SharedStore, tel: &mut dyn Telemetry) {
        for (_, a) in self.analysers.values_mut() {
            a.shutdown(store, tel);
        }
    }

    /// Every analyser in fleet mode gives up its etcd lease (the context is done).
    pub fn leave_fleet(&mut self, tel: &mut dyn Telemetry, host: &mut dyn HttpCalls) {
        for (_, a) in self.analysers.values_mut() {
            a.leave_fleet(tel, host);
        }
    }
}
