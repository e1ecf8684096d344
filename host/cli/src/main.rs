//! The `wasmtrace` binary: sets the process up (allocator, huge pages, logging) and runs the
//! command line ([`wasmtrace::run_command_line`]).

use std::process::ExitCode;

/// mimalloc instead of the system allocator: a proxied request allocates and frees many small
/// buffers (header names and values, futures, body frames) across threads, and glibc's malloc was
/// 15–20 % of a request's CPU in the profile (see the README's performance section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Transparent huge pages off for the serving commands, before anything allocates: mimalloc
    // advises them for its heap arena, and the kernel then backs each touched 2 MiB of heap with
    // a whole huge page — 22 MiB of an idle sidecar's 41 MiB when measured. A sidecar runs beside
    // every service, so its footprint counts more than the TLB misses huge pages save (the
    // benchmark shows no throughput change; README, Benchmarks). Child processes inherit the
    // setting, so `build` (cargo, rustc) keeps the default. Best effort: a kernel without the
    // prctl keeps its default.
    if std::env::args_os().nth(1).is_some_and(|command| command == "run" || command == "demo") {
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match wasmtrace::run_command_line(std::env::args_os()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
