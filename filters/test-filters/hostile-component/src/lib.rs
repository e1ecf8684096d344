//! A `wasmtrace:filter` component that misbehaves on demand (request header `x-hostile: trap |
//! loop | grow | many-properties | huge-properties | hoard-filter-state | hoard-shared-data`), so
//! the tests can show components get the same limits as proxy-wasm modules: a trap, an endless
//! loop, a memory hoard, an abusive `get-properties`, or filter state or shared data piled up in
//! the host fails only its own stream. `x-hostile: properties` asks `get-properties` for `:path`,
//! a property nobody set and `:method`, and writes the answers to `x-hostile-properties` (`-` for
//! an absent one, `|` between). Well-behaved requests get `x-hostile-ok: <stream id>`.

use wasmtrace_filter_guest::{Action, Filter, HeaderPart, HttpStream, host};

/// Almost a megabyte of filter state (a writer may leave at most one per stream), asked for
/// again and again by `huge-properties`.
const HUGE: &str = "wasmtrace_hostile_huge";

struct Hostile;

impl Filter for Hostile {
    fn on_request_headers(stream: &HttpStream, _end_of_stream: bool) -> Action {
        match stream.header(HeaderPart::RequestHeaders, "x-hostile").as_deref() {
            Some(b"trap") => panic!("asked to trap"),
            Some(b"loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some(b"grow") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some(b"properties") => {
                let paths = [b"request\0path".to_vec(), b"nobody_set_this".to_vec(), b"request\0method".to_vec()];
                let answers: Vec<String> = host::get_properties(&paths)
                    .into_iter()
                    .map(|answer| answer.map_or_else(|| "-".to_owned(), |v| String::from_utf8_lossy(&v).into_owned()))
                    .collect();
                stream.set_header(HeaderPart::RequestHeaders, "x-hostile-properties", answers.join("|").as_bytes());
                Action::Continue
            }
            Some(b"many-properties") => {
                let paths = vec![b"request\0path".to_vec(); 65];
                std::hint::black_box(host::get_properties(&paths));
                Action::Continue
            }
            Some(b"huge-properties") => {
                host::set_property(&[HUGE.to_owned()], &vec![7u8; (1 << 20) - (64 << 10)]);
                let paths = vec![HUGE.as_bytes().to_vec(); 64];
                std::hint::black_box(host::get_properties(&paths));
                Action::Continue
            }
            Some(b"hoard-filter-state") => {
                // A fresh key each time: the host's copy grows, the guest's memory does not.
                let piece = vec![7u8; 64 << 10];
                for n in 0u32.. {
                    host::set_property(&[format!("hoard_{n}")], &piece);
                }
                Action::Continue
            }
            Some(b"hoard-shared-data") => {
                let piece = vec![7u8; 1 << 20];
                for n in 0u32.. {
                    let _ = host::set_shared_data(&format!("hoard_{n}"), &piece, None);
                }
                Action::Continue
            }
            _ => {
                stream.set_header(HeaderPart::RequestHeaders, "x-hostile-ok", stream.id().to_string().as_bytes());
                Action::Continue
            }
        }
    }
}

wasmtrace_filter_guest::export_filter!(Hostile);
