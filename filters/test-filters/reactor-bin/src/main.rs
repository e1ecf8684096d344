//! A proxy-wasm filter built as a WASI reactor `bin`: its SDK start-up (`set_root_context`) runs
//! in `main`, which a reactor exports as `__main_void`; a host that never calls it gets a module
//! whose root context does not exist. Every response gets `x-reactor: main ran`.
//!
//! Natively (the workspace's `cargo test` builds every member for the host) it is an empty
//! program: the filter is only meaningful as a module.

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel};

    pub fn start() {
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ReactorRoot) });
    }

    struct ReactorRoot;

    impl Context for ReactorRoot {}

    impl RootContext for ReactorRoot {
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(ReactorStream))
        }
    }

    struct ReactorStream;

    impl Context for ReactorStream {}

    impl HttpContext for ReactorStream {
        fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            self.set_http_response_header("x-reactor", Some("main ran"));
            Action::Continue
        }
    }
}

fn main() {
    #[cfg(target_arch = "wasm32")]
    filter::start();
}
