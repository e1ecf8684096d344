//! A filter that misbehaves on demand, to show that a bad guest fails only its own stream.
//!
//! Request header `x-hostile`: `trap` (panics), `loop` (never returns), `grow` (allocates until
//! the memory cap), `bad-pointer` (hands the host a key pointer outside its memory),
//! `bad-return-pointer` (asks the host to write results outside its memory), `bad-map` (sends a
//! malformed serialised header map). Plugin configuration `refuse-configure` makes
//! `on_configure` return false; `trap-on-start` panics in `on_vm_start`; `trap-on-configure`
//! panics in `on_configure`.
//! Every request that survives gets `x-hostile-ok: ctx=<id>`.

#![allow(missing_docs, reason = "proxy_wasm::main! defines the undocumented `_initialize` export")]

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(HostileRoot) });
}}

struct HostileRoot;

impl Context for HostileRoot {}

impl RootContext for HostileRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        if self.get_plugin_configuration().is_some_and(|c| c == b"trap-on-start") {
            panic!("hostile filter: deliberate trap in on_vm_start");
        }
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        if self.get_plugin_configuration().is_some_and(|c| c == b"trap-on-configure") {
            panic!("hostile filter: deliberate trap in on_configure");
        }
        self.get_plugin_configuration().is_none_or(|c| c != b"refuse-configure")
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Hostile { context_id }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Hostile {
    context_id: u32,
}

/// Raw ABI imports, to pass the host pointers the SDK never would.
#[allow(unsafe_code, reason = "declaring raw host imports")]
mod raw {
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        pub fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
        pub fn proxy_set_header_map_pairs(map_type: u32, data: *const u8, size: usize) -> u32;
    }
}

impl Context for Hostile {}

#[allow(unsafe_code, reason = "deliberately invalid pointers are the point of this filter")]
fn misbehave(kind: &str) {
    match kind {
        "trap" => panic!("hostile filter: deliberate trap"),
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "grow" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![0xAB; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "bad-pointer" => {
            let mut data = std::ptr::null_mut();
            let mut size = 0;
            // SAFETY: not safe at all — the host must reject the out-of-range key pointer.
            unsafe { raw::proxy_get_header_map_value(0, 0xFFFF_FF00usize as *const u8, 64, &mut data, &mut size) };
        }
        "bad-return-pointer" => {
            // SAFETY: not safe at all — the host must refuse to write outside linear memory.
            unsafe {
                raw::proxy_get_header_map_pairs(0, 0xFFFF_FFF0usize as *mut *mut u8, 0xFFFF_FFF8usize as *mut usize)
            };
        }
        "bad-map" => {
            // Claims 1000 pairs in 8 bytes.
            let bogus = [0xE8u8, 0x03, 0, 0, 1, 0, 0, 0];
            // SAFETY: the pointer is valid; the content is what is malformed.
            unsafe { raw::proxy_set_header_map_pairs(0, bogus.as_ptr(), bogus.len()) };
        }
        _ => {}
    }
}

impl HttpContext for Hostile {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(kind) = self.get_http_request_header("x-hostile") {
            misbehave(&kind);
        }
        self.add_http_request_header("x-hostile-ok", &format!("ctx={}", self.context_id));
        Action::Continue
    }
}
