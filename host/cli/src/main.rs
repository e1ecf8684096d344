//! `wasmtrace`: the command-line entry point. Thin by design: each subcommand parses its
//! arguments and calls into the crate that does the work.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wasmtrace_build::{BuildOptions, build_filter};

/// Distributed-tracing logic as WebAssembly filters.
#[derive(Parser)]
#[command(name = "wasmtrace", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a proxy-wasm filter crate to a wasm32-wasip1 module (release, size-optimised).
    Build {
        /// The filter crate's directory.
        crate_dir: PathBuf,
        /// Copy the module to this path.
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// Cargo target directory.
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
    /// Load a module into the runtime and report whether it would be accepted (imports,
    /// exports, ABI version), without starting it.
    Inspect {
        /// The `.wasm` module.
        module: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Build { crate_dir, out, target_dir } => {
            let built = build_filter(&BuildOptions { crate_dir, target_dir, out, quiet: false })?;
            let bytes =
                std::fs::read(&built.wasm_path).with_context(|| format!("reading {}", built.wasm_path.display()))?;
            println!(
                "built {} ({} bytes, sha256 {}) with {}",
                built.wasm_path.display(),
                built.size,
                wasmtrace_runtime::hex_sha256(&bytes),
                built.toolchain.describe()
            );
            Ok(())
        }
        Command::Inspect { module } => {
            let bytes = std::fs::read(&module).with_context(|| format!("reading {}", module.display()))?;
            let runtime = wasmtrace_runtime::Runtime::new()?;
            let compiled = runtime
                .compile(&bytes)
                .with_context(|| format!("{} is not a loadable proxy-wasm module", module.display()))?;
            println!(
                "{}: proxy-wasm {:?}, {} bytes, sha256 {}",
                module.display(),
                compiled.abi_version(),
                compiled.size(),
                compiled.sha256()
            );
            Ok(())
        }
    }
}
