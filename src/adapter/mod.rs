//! The proxy-wasm adapter: Envoy's callbacks forwarded to `plugin` with the host traits
//! implemented over the ABI (`host_impl`, raw calls in `ffi`). No decision lives here.

mod ffi;
mod host_impl;

use crate::plugin::{self, Env};
use host_impl::{HostHttp, HostRoot, HostStore, HostTelemetry};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    // A panic traps the VM: say why in Envoy's log before it does.
    std::panic::set_hook(Box::new(|info| ffi::log(ffi::LOG_CRITICAL, &format!("canary-guard panicked: {info}"))));
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root { plugin: plugin::Root::new(context_id), telemetry: HostTelemetry::default(), host: HostRoot })
    });
}}

struct Root {
    plugin: plugin::Root,
    telemetry: HostTelemetry,
    host: HostRoot,
}

impl Root {
    fn env(&mut self) -> (&mut plugin::Root, Env<'_>) {
        let env = Env {
            store: &HostStore,
            telemetry: &mut self.telemetry,
            host: &mut self.host,
        };
        (&mut self.plugin, env)
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let (status, body) = host_impl::http_call_response(num_headers, body_size);
        let (plugin, mut env) = self.env();
        plugin.on_http_call_response(token_id, status, &body, &mut env);
    }

    fn on_done(&mut self) -> bool {
        let (plugin, mut env) = self.env();
        plugin.on_done(&mut env);
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let config = ffi::plugin_configuration(size);
        let (plugin, mut env) = self.env();
        plugin.on_configure(config, &mut env)
    }

    fn on_tick(&mut self) {
        let (plugin, mut env) = self.env();
        plugin.on_tick(&mut env);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if let Some(control) = self.plugin.new_control_stream() {
            return Some(Box::new(ControlHttp(control)));
        }
        Some(Box::new(Http(self.plugin.new_stream())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The control endpoint's stream: answered locally, never forwarded upstream.
struct ControlHttp(plugin::ControlStream);

impl Context for ControlHttp {}

impl HttpContext for ControlHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.0
            .on_request_headers(&HostStore, &mut HostHttp, end_of_stream);
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.0
            .on_request_body(&HostStore, &mut HostHttp, body_size, end_of_stream);
        Action::Pause
    }
}

struct Http(plugin::Stream);

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.0
            .on_request_headers(&HostStore, &mut HostHttp, end_of_stream);
        Action::Continue
    }

    fn on_http_request_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        self.0.on_request_end(&HostHttp, end_of_stream);
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.0.on_request_end(&HostHttp, true);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.0.on_response_headers(&mut HostHttp);
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.0.on_response_trailers(&HostHttp);
        Action::Continue
    }

    fn on_log(&mut self) {
        self.0.on_log(&HostHttp);
    }
}
