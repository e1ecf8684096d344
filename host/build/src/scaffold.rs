//! `wasmtrace new`: a filter crate that builds with `wasmtrace build` as it is, from one of the
//! templates (`templates/`): its `Cargo.toml` (its own workspace, so it builds wherever it is
//! created), `src/lib.rs`, a README with the commands that build, check and swap it in, and an
//! Envoy configuration snippet that runs it before the trace filter.
//!
//! The crates the filter uses for its part in the span (`wasmtrace-span`) and, for a component,
//! the world's bindings (`wasmtrace-filter-guest`) are path dependencies on this source tree.

use std::path::{Path, PathBuf};

use crate::FilterForm;

/// What the new filter does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// Tags the request's span with an attribute from a request header.
    Tag,
    /// Samples one customer's requests at 100 % and answers with the trace id.
    Sample,
    /// Asks another service before each request goes on, the call traced as a child span
    /// (the request held until the answer).
    Callout,
}

impl Template {
    /// The template's name, as `--template` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tag => "tag",
            Self::Sample => "sample",
            Self::Callout => "callout",
        }
    }

    /// The template `name` names.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "tag" => Some(Self::Tag),
            "sample" => Some(Self::Sample),
            "callout" => Some(Self::Callout),
            _ => None,
        }
    }

    fn source(self, form: FilterForm) -> &'static str {
        match (self, form) {
            (Self::Tag, FilterForm::ProxyWasm) => include_str!("../templates/tag_proxy_wasm.rs"),
            (Self::Tag, FilterForm::Component) => include_str!("../templates/tag_component.rs"),
            (Self::Sample, FilterForm::ProxyWasm) => include_str!("../templates/sample_proxy_wasm.rs"),
            (Self::Sample, FilterForm::Component) => include_str!("../templates/sample_component.rs"),
            (Self::Callout, FilterForm::ProxyWasm) => include_str!("../templates/callout_proxy_wasm.rs"),
            (Self::Callout, FilterForm::Component) => include_str!("../templates/callout_component.rs"),
        }
    }

    /// The crate's runtime tests (`tests/runtime.rs`), for either form.
    fn runtime_tests(self) -> &'static str {
        match self {
            Self::Tag => include_str!("../templates/tests/tag.rs"),
            Self::Sample => include_str!("../templates/tests/sample.rs"),
            Self::Callout => include_str!("../templates/tests/callout.rs"),
        }
    }

    /// Where the filter goes in a chain, relative to the trace filter.
    fn placement(self) -> &'static str {
        match self {
            // The hand-off is read when the trace filter ends the span.
            Self::Tag => "before or after the trace filter",
            // The hint is read when the trace filter starts the span.
            Self::Sample => "before the trace filter",
            // The context exists once the trace filter has run.
            Self::Callout => "after the trace filter",
        }
    }

    /// The plugin configuration the snippet and README show.
    fn configuration(self) -> &'static str {
        match self {
            Self::Tag => r#"{"header": "x-tenant", "attribute": "tenant.id"}"#,
            Self::Sample => {
                r#"{"header": "x-customer", "value": "acme", "decision": "sample", "trace_id_header": "x-trace-id"}"#
            }
            Self::Callout => r#"{"cluster": "auth", "path": "/check", "timeout_ms": 1000, "attribute": "auth.status"}"#,
        }
    }
}

/// What `wasmtrace new` makes.
#[derive(Clone, Debug)]
pub struct NewFilter {
    /// The crate's directory (created; must not exist). Its last component is the crate's name.
    pub dir: PathBuf,
    /// Which form it builds to.
    pub form: FilterForm,
    /// What it does.
    pub template: Template,
    /// The wasmtrace source tree its path dependencies point into.
    pub source_tree: PathBuf,
}

/// Why a filter crate was not made.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The directory is there already.
    #[error("{} exists already; choose a new directory", .0.display())]
    Exists(PathBuf),
    /// The name is not a crate name.
    #[error(
        "`{0}` cannot name the crate: use lowercase letters, digits, `-` and `_`, starting with a letter, and no Rust keyword, standard crate or dependency of the filter"
    )]
    BadName(String),
    /// The source tree has no `filters/span` crate.
    #[error("{} is not the wasmtrace source tree (no filters/span); pass --source-tree", .0.display())]
    NoSourceTree(PathBuf),
    /// Writing a file failed.
    #[error("cannot write {}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The source tree this binary was built from, if it is still there.
pub fn default_source_tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Names Cargo or rustc refuse for a crate, or that clash with the crate's own dependencies.
const TAKEN_NAMES: &[&str] = &[
    "self",
    "super",
    "crate",
    "test",
    "std",
    "core",
    "alloc",
    "proc_macro",
    "serde",
    "serde_json",
    "proxy-wasm",
    "proxy_wasm",
    "wasmtrace-span",
    "wasmtrace_span",
    "wasmtrace-filter-guest",
    "wasmtrace_filter_guest",
];

fn valid_name(name: &str) -> bool {
    !TAKEN_NAMES.contains(&name)
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// A TOML basic string of `text` (paths may hold quotes or backslashes).
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn cargo_toml(name: &str, form: FilterForm, tree: &Path) -> String {
    let path = |crate_dir: &str| toml_string(&tree.join(crate_dir).display().to_string());
    let form_dependency = match form {
        FilterForm::ProxyWasm => "proxy-wasm = \"0.2.5\"".to_owned(),
        FilterForm::Component => format!("wasmtrace-filter-guest = {{ path = {} }}", path("filters/filter-guest")),
    };
    let crate_types = match form {
        // rlib too, so `cargo test` can run the unit tests natively.
        FilterForm::ProxyWasm => r#"["cdylib", "rlib"]"#,
        FilterForm::Component => r#"["cdylib"]"#,
    };
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = {crate_types}

[dependencies]
{form_dependency}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"
wasmtrace-span = {{ path = {span} }}

# `cargo test`: tests/runtime.rs builds the module and runs it in the wasmtrace runtime.
[dev-dependencies]
serde_json = "1"
wasmtrace-testing = {{ path = {testing} }}

# Its own workspace: it builds wherever it was created, inside another workspace or not.
[workspace]
"#,
        span = path("filters/span"),
        testing = path("host/testing"),
    )
}

fn envoy_snippet(name: &str, form: FilterForm, template: Template) -> String {
    let module = match form {
        FilterForm::ProxyWasm => format!("{name}.wasm"),
        FilterForm::Component => format!("{name}.component.wasm"),
    };
    let configuration = template.configuration().replace('"', "\\\"");
    let placement = template.placement();
    let loads = match form {
        FilterForm::ProxyWasm => "the wasmtrace sidecar reads the same, and Envoy loads the module",
        // Envoy loads proxy-wasm modules only.
        FilterForm::Component => "for the wasmtrace sidecar only: Envoy does not load components",
    };
    let build_flag = match form {
        FilterForm::ProxyWasm => "",
        FilterForm::Component => " --component",
    };
    format!(
        r#"# The filter in a listener's http_filters, {placement} (Envoy v3 bootstrap;
# {loads}). `wasmtrace build{build_flag} . -o {module}` makes the module.
- name: {name}
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: {name}
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: "{configuration}"
      vm_config:
        runtime: envoy.wasm.runtime.v8
        code: {{ local: {{ filename: {module} }} }}
"#
    )
}

fn readme(name: &str, form: FilterForm, template: Template) -> String {
    let (flag, module) = match form {
        FilterForm::ProxyWasm => ("", format!("{name}.wasm")),
        FilterForm::Component => (" --component", format!("{name}.component.wasm")),
    };
    let what = match template {
        Template::Tag => "tags each request's span with an attribute from a request header",
        Template::Sample => "traces one customer's requests at 100 % and answers with the trace id",
        Template::Callout => "asks another service before each request goes on, the call traced as a child span",
    };
    let configuration = template.configuration();
    let test = "cargo test    # the configuration's unit tests, and tests/runtime.rs: the module in the runtime\n";
    format!(
        r#"# {name}

A wasmtrace filter that {what}, through `wasmtrace-span` (its part in the request's span,
beside the trace filter). Made by `wasmtrace new --template {template}`.

```sh
wasmtrace build{flag} . -o {module}
{test}```

In a chain, it goes {placement}. Swap it into a running sidecar in place of a plugin in that
place (the demo's gallery-api sidecar prints its admin address; its `tagging` plugin runs before
the trace filter), with its configuration:

```sh
wasmtrace swap --admin 127.0.0.1:9901 --plugin {plugin} --module {module} \
  --config '{configuration}'
```

or run it from a configuration: `envoy-snippet.yaml` is its `http_filters` entry, and
`wasmtrace check <your bootstrap>.yaml` loads, starts and configures it without serving.{note}
"#,
        template = template.name(),
        placement = template.placement(),
        plugin = if template == Template::Callout { "<a plugin after the trace filter>" } else { "tagging" },
        note = match template {
            Template::Tag => "",
            Template::Sample =>
                "\n\nThe customer is named by a request header a client sets: any client can ask to be traced\n(key it on a header your edge sets, or on an authenticated identity, in production).",
            Template::Callout => "\n\nThe cluster it calls (`auth` by default) must be one of the proxy's clusters.",
        }
    )
}

fn write(path: &Path, text: &str) -> Result<(), ScaffoldError> {
    std::fs::write(path, text).map_err(|source| ScaffoldError::Write { path: path.to_owned(), source })
}

/// Makes the filter crate; returns the files written.
pub fn new_filter(options: &NewFilter) -> Result<Vec<PathBuf>, ScaffoldError> {
    let NewFilter { dir, form, template, source_tree } = options;
    let template = *template;
    let source = template.source(*form);
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    if !valid_name(&name) {
        return Err(ScaffoldError::BadName(name));
    }
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir.clone()));
    }
    let tree = source_tree.canonicalize().map_err(|_| ScaffoldError::NoSourceTree(source_tree.clone()))?;
    if !tree.join("filters/span/Cargo.toml").is_file() {
        return Err(ScaffoldError::NoSourceTree(tree));
    }
    let (src, tests) = (dir.join("src"), dir.join("tests"));
    for made in [&src, &tests] {
        std::fs::create_dir_all(made).map_err(|source| ScaffoldError::Write { path: made.clone(), source })?;
    }
    let form_path = match form {
        FilterForm::ProxyWasm => "FilterForm::ProxyWasm",
        FilterForm::Component => "FilterForm::Component",
    };
    let files = [
        (dir.join("Cargo.toml"), cargo_toml(&name, *form, &tree)),
        (src.join("lib.rs"), source.replace("{{name}}", &name)),
        (tests.join("runtime.rs"), template.runtime_tests().replace("{{name}}", &name).replace("{{form}}", form_path)),
        (dir.join("README.md"), readme(&name, *form, template)),
        (dir.join("envoy-snippet.yaml"), envoy_snippet(&name, *form, template)),
    ];
    for (path, text) in &files {
        write(path, text)?;
    }
    Ok(files.into_iter().map(|(path, _)| path).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_checked_and_quoted() {
        assert!(valid_name("tenant-tag"));
        for bad in ["", "Tenant", "1tag", "a/b", "a b", "ä"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(toml_string(r#"/a "b"\c"#), r#""/a \"b\"\\c""#);
    }

    #[test]
    fn a_crate_is_made_once_with_its_templates_name() {
        let base = std::env::temp_dir().join(format!("wasmtrace-scaffold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let options = NewFilter {
            dir: base.join("tenant-tag"),
            form: FilterForm::ProxyWasm,
            template: Template::Tag,
            source_tree: default_source_tree(),
        };
        let files = new_filter(&options).expect("made");
        assert_eq!(files.len(), 5);
        let lib = std::fs::read_to_string(base.join("tenant-tag/src/lib.rs")).expect("lib.rs");
        assert!(lib.starts_with("//! tenant-tag: tags"), "{lib}");
        assert!(!lib.contains("{{name}}"), "every placeholder filled");
        let manifest = std::fs::read_to_string(base.join("tenant-tag/Cargo.toml")).expect("Cargo.toml");
        assert!(manifest.contains("name = \"tenant-tag\"") && manifest.contains("filters/span"), "{manifest}");
        assert!(matches!(new_filter(&options), Err(ScaffoldError::Exists(_))));
        let _ = std::fs::remove_dir_all(&base);
    }
}
