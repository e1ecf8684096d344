//! `wasmtrace`: the command line. Thin by design: each subcommand parses its arguments and calls
//! into the crate that does the work. [`run_command_line`] is the whole command line, for the
//! binary and for tests that run the commands a user types.

mod admin_client;
mod demo;
mod runtime_flags;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::time::Duration;

use wasmtrace_build::{BuildOptions, FilterForm, build_filter};
use wasmtrace_config::Bootstrap;
use wasmtrace_proxy::ProxyOptions;

/// Distributed-tracing logic as WebAssembly filters.
#[derive(Parser)]
#[command(name = "wasmtrace", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a filter crate to a proxy-wasm module (wasm32-wasip1) or, with --component, a
    /// wasmtrace:filter component (wasm32-wasip2); release, size-optimised.
    Build {
        /// The filter crate's directory.
        crate_dir: PathBuf,
        /// Copy the module to this path.
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// Cargo target directory.
        #[arg(long)]
        target_dir: Option<PathBuf>,
        /// Build the `wasmtrace:filter` component (wasm32-wasip2, see wit/README.md) instead of
        /// the proxy-wasm module; the wasmtrace host loads either, Envoy the proxy-wasm one.
        #[arg(long)]
        component: bool,
    },
    /// Make a new filter crate that builds with `wasmtrace build` as it is: a template's code
    /// over `wasmtrace-span` (its part in the request's span), a README with the commands that
    /// build and swap it in, and an Envoy configuration snippet.
    New {
        /// The crate's directory (its last component is the crate's name).
        dir: PathBuf,
        /// What the filter does: `tag` (an attribute from a request header), `sample` (one
        /// customer traced at 100 %, the trace id sent back) or `callout` (another service asked
        /// first, the call a child span).
        #[arg(long, default_value = "tag")]
        template: String,
        /// A `wasmtrace:filter` component instead of a proxy-wasm module.
        #[arg(long)]
        component: bool,
        /// The wasmtrace source tree the crate's path dependencies point into (default: the one
        /// this binary was built from).
        #[arg(long)]
        source_tree: Option<PathBuf>,
    },
    /// Serve an Envoy v3 bootstrap configuration (the subset in the README) until SIGINT/SIGTERM.
    Run {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// Seconds shutdown waits for open streams and filters to flush.
        #[arg(long, default_value_t = 10)]
        drain_timeout_secs: u64,
        /// Bind the admin API where configured even when that is not loopback.
        #[arg(long)]
        admin_any_address: bool,
        /// Do not hot-swap plugins when their module files or the configuration file change.
        #[arg(long)]
        no_watch: bool,
        /// A file holding the bearer token admin changes (swap, rollback) must carry; required
        /// with --admin-any-address when the admin address is not loopback.
        #[arg(long)]
        admin_token_file: Option<PathBuf>,
        /// Most downstream connections open at once per listener (default: from the open-file
        /// limit, which is raised to its hard limit at start).
        #[arg(long)]
        max_connections: Option<usize>,
        #[command(flatten)]
        runtime: runtime_flags::RuntimeFlags,
    },
    /// The whole system on this machine: builds the filters, starts the trace collector and
    /// viewer and the three gallery services each behind its own wasmtrace sidecar, seeds images,
    /// sends some traffic, prints where to look and one trace; runs until Ctrl-C.
    Demo {
        /// Where the trace viewer (and Jaeger-compatible API) listens.
        #[arg(long, default_value = "127.0.0.1:16686")]
        viewer: SocketAddr,
        /// Put every socket on a free port instead of where `deploy/envoy/*.yaml` puts them
        /// (gallery 8080, OTLP 4318, sidecars 8081-8082, 9080-9082, 9180-9181, 9901-9903).
        #[arg(long)]
        any_ports: bool,
        /// Databases and images (default: `target/demo-state` in the repository, so a demo
        /// leaves nothing in the checkout).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// No sidecars: each service runs its sidecar file's filters inside its own process
        /// (the `wasmtrace-tower` layers), listening where the sidecar would.
        #[arg(long)]
        in_process: bool,
    },
    /// Recent traces from a running collector, or one trace as a waterfall.
    Traces {
        /// The collector's query address (the viewer's).
        #[arg(long, default_value = "http://127.0.0.1:16686")]
        collector: String,
        /// Only traces through this service.
        #[arg(long)]
        service: Option<String>,
        /// Show this trace as a waterfall.
        #[arg(long)]
        trace: Option<String>,
        /// How many traces to list.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// Only traces with a span that has this attribute (`key=value`; repeat for more).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
    },
    /// Hot-swap a plugin of a running proxy: a new module and/or configuration, or a rollback to
    /// the previous generation. Prints the outcome; exit code 1 when it was refused.
    Swap {
        /// The proxy's admin address (host:port).
        #[arg(long)]
        admin: SocketAddr,
        /// The plugin's name (`config.name`).
        #[arg(long)]
        plugin: String,
        /// Only the plugin on this listener (default: every listener's plugin of that name).
        #[arg(long)]
        listener: Option<String>,
        /// The new module (`.wasm`), sent to the proxy.
        #[arg(long)]
        module: Option<PathBuf>,
        /// The new plugin configuration: the text itself, or `@file`.
        #[arg(long)]
        config: Option<String>,
        /// Return to the previous generation's module and configuration.
        #[arg(long)]
        rollback: bool,
        /// A file holding the admin API's bearer token (when it was started with one).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Validate a configuration without serving: every field is in the supported subset, and
    /// every module loads, starts and configures. Exit code 0 or 1.
    Check {
        /// The configuration file.
        config: PathBuf,
    },
    /// Load a module into the runtime and report whether it would be accepted (imports,
    /// exports, ABI version), without starting it.
    Inspect {
        /// The `.wasm` module.
        module: PathBuf,
    },
}

/// Runs the command line `args` (the program's name first, as `std::env::args_os` gives it):
/// what the `wasmtrace` binary does once the process is set up. Invalid arguments print clap's
/// message and exit the process, as the binary does.
pub fn run_command_line<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).unwrap_or_else(|error| error.exit());
    run(cli)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Build { crate_dir, out, target_dir, component } => {
            let form = if component { FilterForm::Component } else { FilterForm::ProxyWasm };
            let built = build_filter(&BuildOptions { crate_dir, target_dir, out, quiet: false, form })?;
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
        Command::New { dir, template, component, source_tree } => {
            use wasmtrace_build::scaffold::{NewFilter, Template, default_source_tree, new_filter};
            let template = Template::from_name(&template)
                .with_context(|| format!("no template `{template}`: choose tag, sample or callout"))?;
            let form = if component { FilterForm::Component } else { FilterForm::ProxyWasm };
            let source_tree = source_tree.unwrap_or_else(default_source_tree);
            let files = new_filter(&NewFilter { dir: dir.clone(), form, template, source_tree })?;
            println!("created {} ({} filter, {} template):", dir.display(), form_name(form), template.name());
            for file in files {
                println!("  {}", file.display());
            }
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let (flag, module) = if component {
                (" --component", format!("{name}.component.wasm"))
            } else {
                ("", format!("{name}.wasm"))
            };
            println!("next: wasmtrace build{flag} {} -o {module} (see its README.md)", dir.display());
            Ok(())
        }
        Command::Run {
            config,
            workers,
            drain_timeout_secs,
            admin_any_address,
            no_watch,
            admin_token_file,
            max_connections,
            runtime,
        } => {
            let bootstrap = Bootstrap::from_file(&config)?;
            let mut options = ProxyOptions {
                drain_timeout: Duration::from_secs(drain_timeout_secs),
                admin_any_address,
                watch_modules: !no_watch,
                watch_config: (!no_watch).then(|| config.clone()),
                admin_token_file,
                max_connections_per_listener: max_connections,
                runtime: runtime.options(),
                ..ProxyOptions::default()
            };
            if let Some(workers) = workers {
                options.workers = workers;
            }
            let proxy = wasmtrace_proxy::start(bootstrap, options)?;
            proxy.run_until_signal(|proxy| {
                for (name, address) in proxy.listeners() {
                    println!("listener {name} on http://{address}");
                }
                if let Some(admin) = proxy.admin_address() {
                    println!("admin on http://{admin}");
                }
            })?;
            Ok(())
        }
        Command::Demo { viewer, any_ports, state_dir, in_process } => {
            demo::run(viewer, any_ports, state_dir, in_process)
        }
        Command::Traces { collector, service, trace, limit, tags } => {
            demo::traces(&collector, service, trace, limit, &tags)
        }
        Command::Swap { admin, plugin, listener, module, config, rollback, token_file } => {
            admin_client::swap(admin_client::SwapArgs { admin, plugin, listener, module, config, rollback, token_file })
        }
        Command::Check { config } => {
            let bootstrap = Bootstrap::from_file(&config)?;
            for line in wasmtrace_proxy::check(&bootstrap, &ProxyOptions::default())? {
                println!("{line}");
            }
            println!("{}: OK", config.display());
            Ok(())
        }
        Command::Inspect { module } => {
            let bytes = std::fs::read(&module).with_context(|| format!("reading {}", module.display()))?;
            let runtime = wasmtrace_runtime::Runtime::new()?;
            let compiled =
                runtime.compile(&bytes).with_context(|| format!("{} is not a loadable filter", module.display()))?;
            let form = match compiled.form() {
                wasmtrace_runtime::FilterForm::ProxyWasm(abi) => format!("proxy-wasm {abi:?}"),
                wasmtrace_runtime::FilterForm::Component => {
                    format!("component ({})", wasmtrace_runtime::component::WORLD)
                }
            };
            println!("{}: {form}, {} bytes, sha256 {}", module.display(), compiled.size(), compiled.sha256());
            Ok(())
        }
    }
}

/// What a filter form is called in messages.
fn form_name(form: FilterForm) -> &'static str {
    match form {
        FilterForm::ProxyWasm => "proxy-wasm",
        FilterForm::Component => "wasmtrace:filter component",
    }
}
