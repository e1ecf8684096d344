//! Builds a proxy-wasm filter crate to a `wasm32-wasip1` module — the code path behind
//! `wasmtrace build`, and the one the tests use to build their filters.
//!
//! Two toolchains can do it, tried in order:
//! 1. **rustup**: the `wasm32-wasip1` target's prebuilt standard library is installed
//!    (`rustup target add wasm32-wasip1`).
//! 2. **Debian**: `rustc-web`, `cargo-web`, `rust-web-src`, `lld-22` and `wasi-libc`, building the
//!    standard library from source (`-Zbuild-std`, enabled with `RUSTC_BOOTSTRAP=1`).
//!
//! The component form of a filter (the `wasmtrace:filter` world in `wit/`, see
//! [`FilterForm::Component`]) is built for `wasm32-wasip2` with rustup's target, whose linker
//! writes the component.
//!
//! When neither is present the error says exactly what to install. Filters are built with the
//! release profile made small: `opt-level = "s"`, LTO, one codegen unit, `panic = "abort"` (set
//! through `CARGO_PROFILE_RELEASE_*`, so any crate builds the same way without editing it).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod scaffold;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use thiserror::Error;

/// The Rust target filters are built for.
pub const WASM_TARGET: &str = "wasm32-wasip1";
/// The Rust target component filters are built for.
pub const COMPONENT_TARGET: &str = "wasm32-wasip2";

/// Which form of a filter to build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FilterForm {
    /// A proxy-wasm module (`wasm32-wasip1`): loads into Envoy and the wasmtrace host.
    #[default]
    ProxyWasm,
    /// A `wasmtrace:filter` component (`wasm32-wasip2`): loads into the wasmtrace host.
    Component,
}

/// What to install when no toolchain can build filters.
pub const INSTALL_HINT: &str = "install one of:\n  \
     rustup target add wasm32-wasip1\n  \
     apt-get install rustc-web cargo-web rust-web-src lld-22 wasi-libc   (Debian 12/13)";

/// A toolchain able to build `wasm32-wasip1` modules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Toolchain {
    /// rustup's `wasm32-wasip1` target.
    Rustup {
        /// The `cargo` to run.
        cargo: PathBuf,
    },
    /// rustup's `wasm32-wasip2` target (components).
    RustupComponent {
        /// The `cargo` to run.
        cargo: PathBuf,
    },
    /// Debian's `rustc-web` with `-Zbuild-std`.
    Debian {
        /// `/usr/bin/cargo`.
        cargo: PathBuf,
        /// `/usr/bin/rustc`.
        rustc: PathBuf,
        /// The directory holding wasi-libc (`/usr/lib/wasm32-wasi`).
        wasi_libc: PathBuf,
    },
}

impl Toolchain {
    /// A short name for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::Rustup { .. } => "rustup target wasm32-wasip1",
            Self::RustupComponent { .. } => "rustup target wasm32-wasip2",
            Self::Debian { .. } => "Debian rustc-web with -Zbuild-std",
        }
    }
}

/// Why a filter could not be built.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The directory is not a crate.
    #[error("{0} has no Cargo.toml: pass the directory of a filter crate")]
    NotACrate(PathBuf),
    /// No toolchain can build wasm32-wasip1.
    #[error("no toolchain can build {WASM_TARGET} modules; {INSTALL_HINT}")]
    NoToolchain,
    /// No toolchain can build wasm32-wasip2 components.
    #[error(
        "no toolchain can build {COMPONENT_TARGET} components; install it with: rustup target add {COMPONENT_TARGET}"
    )]
    NoComponentToolchain,
    /// cargo could not be started.
    #[error("could not run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// cargo failed.
    #[error("cargo build failed for {crate_dir} ({toolchain}):\n{output}")]
    CargoFailed {
        /// The crate.
        crate_dir: PathBuf,
        /// Which toolchain was used.
        toolchain: &'static str,
        /// The end of cargo's error output.
        output: String,
    },
    /// cargo succeeded but produced no `.wasm` cdylib for the crate.
    #[error("{0} built, but produced no .wasm: is it a `crate-type = [\"cdylib\"]` crate?")]
    NoArtifact(PathBuf),
    /// Copying the module to the output path failed.
    #[error("could not write {path}")]
    Output {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What to build and where.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// The filter crate's directory.
    pub crate_dir: PathBuf,
    /// Cargo's target directory (default: the crate's workspace target directory).
    pub target_dir: Option<PathBuf>,
    /// Copy the module here when done.
    pub out: Option<PathBuf>,
    /// Capture cargo's progress output instead of showing it.
    pub quiet: bool,
    /// Proxy-wasm module (default) or component.
    pub form: FilterForm,
}

/// A built module.
#[derive(Clone, Debug)]
pub struct BuiltFilter {
    /// Where the `.wasm` is (the `out` path if one was given).
    pub wasm_path: PathBuf,
    /// The toolchain that built it.
    pub toolchain: Toolchain,
    /// Module size in bytes.
    pub size: u64,
}

fn cargo_program() -> PathBuf {
    std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
}

fn rustup_target_installed(target: &str) -> bool {
    let output = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc")))
        .args(["--print", "target-libdir", "--target", target])
        .stderr(Stdio::null())
        .output();
    let Ok(output) = output else { return false };
    if !output.status.success() {
        return false;
    }
    let libdir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    std::fs::read_dir(libdir)
        .is_ok_and(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
}

fn debian_toolchain() -> Option<Toolchain> {
    let cargo = PathBuf::from("/usr/bin/cargo");
    let rustc = PathBuf::from("/usr/bin/rustc");
    let wasi_libc = PathBuf::from("/usr/lib/wasm32-wasi");
    let sysroot = Command::new(&rustc).args(["--print", "sysroot"]).output().ok()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let std_src = sysroot.join("lib/rustlib/src/rust/library/std");
    (cargo.exists() && wasi_libc.is_dir() && std_src.is_dir()).then_some(Toolchain::Debian { cargo, rustc, wasi_libc })
}

/// Finds a toolchain that can build filters, preferring rustup's target.
pub fn detect_toolchain() -> Result<Toolchain, BuildError> {
    if rustup_target_installed(WASM_TARGET) {
        return Ok(Toolchain::Rustup { cargo: cargo_program() });
    }
    debian_toolchain().ok_or(BuildError::NoToolchain)
}

/// Finds the toolchain for `form`: for components, rustup's `wasm32-wasip2` target.
pub fn detect_toolchain_for(form: FilterForm) -> Result<Toolchain, BuildError> {
    match form {
        FilterForm::ProxyWasm => detect_toolchain(),
        FilterForm::Component if rustup_target_installed(COMPONENT_TARGET) => {
            Ok(Toolchain::RustupComponent { cargo: cargo_program() })
        }
        FilterForm::Component => Err(BuildError::NoComponentToolchain),
    }
}

fn command_for(toolchain: &Toolchain) -> Command {
    match toolchain {
        Toolchain::RustupComponent { cargo } => {
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--release", "--target", COMPONENT_TARGET]);
            cmd
        }
        Toolchain::Rustup { cargo } => {
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--release", "--target", WASM_TARGET]);
            cmd
        }
        Toolchain::Debian { cargo, rustc, wasi_libc } => {
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--release", "--target", WASM_TARGET, "-Zbuild-std=std,panic_abort"])
                .env("RUSTC", rustc)
                .env("RUSTC_BOOTSTRAP", "1")
                .env("RUSTFLAGS", format!("-L native={}", wasi_libc.display()));
            cmd
        }
    }
}

/// Builds the filter crate in `options.crate_dir`.
pub fn build_filter(options: &BuildOptions) -> Result<BuiltFilter, BuildError> {
    let manifest = options.crate_dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(BuildError::NotACrate(options.crate_dir.clone()));
    }
    let manifest = manifest.canonicalize().unwrap_or(manifest);
    let toolchain = detect_toolchain_for(options.form)?;
    let mut cmd = command_for(&toolchain);
    cmd.arg("--manifest-path")
        .arg(&manifest)
        .arg("--message-format=json-render-diagnostics")
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .stdout(Stdio::piped())
        .stderr(if options.quiet { Stdio::piped() } else { Stdio::inherit() });
    if let Some(dir) = &options.target_dir {
        cmd.arg("--target-dir").arg(dir);
    }
    let program = format!("{:?}", cmd.get_program());
    let mut child = cmd.spawn().map_err(|source| BuildError::Spawn { program, source })?;

    // Drain stderr on its own thread so a chatty build cannot block on a full pipe.
    let stderr_reader = child.stderr.take().map(|mut stderr| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        })
    });
    let mut wasm = None;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(path) = wasm_artifact(&line, &manifest) {
                wasm = Some(path);
            }
        }
    }
    let status = child.wait().map_err(|source| BuildError::Spawn { program: "cargo".into(), source })?;
    let stderr = stderr_reader.and_then(|h| h.join().ok()).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        let output = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        return Err(BuildError::CargoFailed {
            crate_dir: options.crate_dir.clone(),
            toolchain: toolchain.describe(),
            output: if output.is_empty() { "(cargo's output is shown above)".into() } else { output },
        });
    }
    let built = wasm.ok_or_else(|| BuildError::NoArtifact(options.crate_dir.clone()))?;
    let wasm_path = match &options.out {
        Some(out) => {
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|source| BuildError::Output { path: parent.to_owned(), source })?;
            }
            std::fs::copy(&built, out).map_err(|source| BuildError::Output { path: out.clone(), source })?;
            out.clone()
        }
        None => built,
    };
    let size = std::fs::metadata(&wasm_path).map(|m| m.len()).unwrap_or(0);
    Ok(BuiltFilter { wasm_path, toolchain, size })
}

/// The `.wasm` path of a `compiler-artifact` message for the crate at `manifest`, if `line` is one.
fn wasm_artifact(line: &str, manifest: &Path) -> Option<PathBuf> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    if message.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    let artifact_manifest = PathBuf::from(message.get("manifest_path")?.as_str()?);
    if artifact_manifest.canonicalize().unwrap_or(artifact_manifest) != manifest {
        return None;
    }
    message
        .get("filenames")?
        .as_array()?
        .iter()
        .filter_map(|f| f.as_str())
        .find(|f| f.ends_with(".wasm"))
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_crates_own_wasm_artifact_is_taken() {
        let manifest = Path::new("/no/such/dir/Cargo.toml");
        let ours = r#"{"reason":"compiler-artifact","manifest_path":"/no/such/dir/Cargo.toml","filenames":["/t/x.rlib","/t/x.wasm"]}"#;
        let other = r#"{"reason":"compiler-artifact","manifest_path":"/else/Cargo.toml","filenames":["/t/y.wasm"]}"#;
        assert_eq!(wasm_artifact(ours, manifest), Some(PathBuf::from("/t/x.wasm")));
        assert_eq!(wasm_artifact(other, manifest), None);
        assert_eq!(wasm_artifact("not json", manifest), None);
        assert_eq!(wasm_artifact(r#"{"reason":"build-finished","success":true}"#, manifest), None);
    }

    #[test]
    fn a_directory_without_a_manifest_is_refused() {
        let options = BuildOptions { crate_dir: PathBuf::from("/no/such/dir"), ..BuildOptions::default() };
        assert!(matches!(build_filter(&options), Err(BuildError::NotACrate(_))));
    }
}
