//! The on-disk module cache: a second runtime on the same directory loads what the first
//! compiled instead of compiling, and an entry that is corrupt, truncated, foreign or not private
//! is refused and compiled again, never handed to wasmtime.

use std::cell::RefCell;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};

use wasmtrace_build::{BuildOptions, FilterForm, build_filter};
use wasmtrace_runtime::{
    Action, CacheLimits, HeaderMap, HostServices, HttpExchange, LogLevel, ModuleSource, NoClusters, PluginConfig,
    PluginInstance, Runtime, RuntimeOptions,
};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Built modules by crate and form.
type Built = Mutex<Vec<(String, Vec<u8>)>>;

/// Damage done to a cache entry file, and what it is called.
type Corruption = (&'static str, Box<dyn Fn(&Path)>);

/// A filter crate's module (or component), built once per process.
fn built(crate_dir: &str, form: FilterForm) -> Vec<u8> {
    static BUILT: OnceLock<Built> = OnceLock::new();
    let key = format!("{crate_dir}:{form:?}");
    let mut cache = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, bytes)) = cache.iter().find(|(k, _)| *k == key) {
        return bytes.clone();
    }
    let root = workspace_root();
    let module = build_filter(&BuildOptions {
        crate_dir: root.join(crate_dir),
        target_dir: Some(root.join("target/wasm-filters")),
        out: None,
        quiet: true,
        form,
    })
    .unwrap_or_else(|e| panic!("building {crate_dir}: {e}"));
    let bytes = std::fs::read(&module.wasm_path).expect("read built module");
    cache.push((key, bytes.clone()));
    bytes
}

fn probe_module() -> Vec<u8> {
    built("filters/test-filters/abi-probe", FilterForm::ProxyWasm)
}

/// `bytes` with a custom section appended: another sha256, the same code.
fn variant(bytes: &[u8], tag: u8) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    bytes.extend_from_slice(&[0, 3, 2, b'w', tag]);
    bytes
}

/// An empty directory of this test's own under cargo's scratch space (never $HOME).
fn fresh_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("module-cache-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn runtime_on(dir: &Path) -> Arc<Runtime> {
    runtime_with(RuntimeOptions { module_cache: Some(dir.to_owned()), ..RuntimeOptions::default() })
}

fn runtime_with(options: RuntimeOptions) -> Arc<Runtime> {
    Runtime::with_options(HostServices::new(Default::default(), LogLevel::Warn), &options).expect("runtime")
}

/// The cache's entries (not its temporary files).
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("cache dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    found.sort();
    found
}

fn only_entry(dir: &Path) -> PathBuf {
    let mut found = entries(dir);
    assert_eq!(found.len(), 1, "one entry expected: {found:?}");
    found.remove(0)
}

/// Runs one request through the abi-probe filter and checks the filter answered.
fn serve_one_request(runtime: &Runtime, module: Arc<wasmtrace_runtime::PluginModule>) {
    let plugin = PluginConfig { name: "probe".into(), ..PluginConfig::default() };
    let instance =
        PluginInstance::start(runtime, module, Arc::new(plugin), Rc::new(NoClusters)).expect("plugin starts");
    let headers = HeaderMap::from_pairs([(":method", "GET"), (":path", "/"), (":authority", "x"), (":scheme", "http")]);
    let exchange = Rc::new(RefCell::new(HttpExchange::with_request_headers(headers)));
    let mut stream = instance.new_stream(exchange.clone());
    assert_eq!(stream.on_request_headers(true), Action::Continue);
    let exchange = exchange.borrow();
    let probe = exchange.request_headers.as_ref().and_then(|h| h.get_str("x-probe"));
    assert!(probe.is_some(), "the filter ran and set x-probe");
}

/// Every log line of this test process. One process-wide subscriber, set once: a thread-local
/// one (`set_default`) misses events whose callsite another test's thread registered at the
/// same moment (tracing caches each callsite's interest), so a test reading the log would fail
/// now and then. Tests find their own lines by what only they log (a module's sha256).
fn process_log() -> &'static Mutex<Vec<u8>> {
    static LINES: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LINES.get_or_init(|| {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .without_time()
            .with_writer(move || Sink(sink.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        lines
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log lines so far that mention `needle`.
fn logged(needle: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&process_log().lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    text.lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
}

#[test]
fn a_restart_with_a_warm_disk_cache_serves_its_first_request_without_compiling() {
    let dir = fresh_dir("restart");
    process_log();
    // A module of this test's own (another sha256), so the log lines it looks for are its own.
    let bytes = variant(&probe_module(), b'r');
    let sha256 = wasmtrace_runtime::hex_sha256(&bytes);

    let first = runtime_on(&dir);
    let module = first.compile(&bytes).expect("compiles");
    assert_eq!(module.source(), ModuleSource::Compiled);
    assert_eq!(first.module_load_stats().compiled, 1);
    serve_one_request(&first, module);
    first.shutdown();
    drop(first);

    let entry = only_entry(&dir);
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the cache directory is private");
    assert_eq!(mode(&entry), 0o600, "entries are private");

    let restarted = runtime_on(&dir);
    let module = restarted.compile(&bytes).expect("loads");
    assert_eq!(module.source(), ModuleSource::DiskCache, "loaded, not compiled");
    serve_one_request(&restarted, module);
    let stats = restarted.module_load_stats();
    assert_eq!((stats.compiled, stats.from_disk_cache, stats.disk_cache_rejected), (0, 1, 0), "{stats:?}");
    let lines = logged(&sha256);
    assert!(
        lines.iter().any(|l| l.contains("module loaded") && l.contains("compiled=false") && l.contains("disk cache")),
        "the load is logged as not compiled:\n{}",
        lines.join("\n")
    );
}

#[test]
fn a_component_is_cached_and_loaded_like_a_module() {
    let dir = fresh_dir("component");
    let bytes = built("wit/example", FilterForm::Component);
    let first = runtime_on(&dir);
    assert_eq!(first.compile(&bytes).expect("compiles").source(), ModuleSource::Compiled);
    drop(first);
    let restarted = runtime_on(&dir);
    let module = restarted.compile(&bytes).expect("loads");
    assert_eq!(module.source(), ModuleSource::DiskCache);
    let plugin =
        PluginConfig { name: "hello".into(), plugin_configuration: b"component".to_vec(), ..PluginConfig::default() };
    PluginInstance::start(&restarted, module, Arc::new(plugin), Rc::new(NoClusters))
        .expect("the cached component starts and configures");
}

/// Damage done to a cache entry; each must be refused, then the module compiled and the entry
/// rewritten.
fn corruptions() -> Vec<Corruption> {
    let flip_at = |at: fn(usize) -> usize| {
        move |path: &Path| {
            let mut bytes = std::fs::read(path).expect("read entry");
            let i = at(bytes.len());
            bytes[i] ^= 0x40;
            std::fs::write(path, bytes).expect("write entry");
        }
    };
    let truncate_to = |keep: fn(u64) -> u64| {
        move |path: &Path| {
            let file = std::fs::OpenOptions::new().write(true).open(path).expect("open entry");
            let len = file.metadata().expect("stat").len();
            file.set_len(keep(len)).expect("truncate");
        }
    };
    vec![
        ("a byte flipped in the machine code", Box::new(flip_at(|len| len / 2))),
        ("a byte flipped in the last byte", Box::new(flip_at(|len| len - 1))),
        ("a byte flipped in the header", Box::new(flip_at(|_| 20))),
        ("truncated to half", Box::new(truncate_to(|len| len / 2))),
        ("truncated by one byte", Box::new(truncate_to(|len| len - 1))),
        ("truncated inside the header", Box::new(truncate_to(|_| 10))),
        ("emptied", Box::new(truncate_to(|_| 0))),
        (
            "extended",
            Box::new(|path: &Path| {
                let mut file = std::fs::OpenOptions::new().append(true).open(path).expect("open entry");
                file.write_all(b"trailing garbage").expect("append");
            }),
        ),
        ("replaced by garbage", Box::new(|path: &Path| std::fs::write(path, vec![0xa5; 4096]).expect("write"))),
    ]
}

#[test]
fn a_corrupted_or_truncated_cache_entry_is_detected_and_recompiled_not_trusted() {
    let bytes = probe_module();
    for (what, damage) in corruptions() {
        let dir = fresh_dir(&format!("corrupt-{}", what.replace(' ', "-")));
        drop(runtime_on(&dir).compile(&bytes).expect("compiles"));
        let entry = only_entry(&dir);
        damage(&entry);

        let runtime = runtime_on(&dir);
        let module = runtime.compile(&bytes).unwrap_or_else(|e| panic!("{what}: the module still loads: {e}"));
        assert_eq!(module.source(), ModuleSource::Compiled, "{what}: recompiled, not loaded");
        let stats = runtime.module_load_stats();
        assert_eq!((stats.compiled, stats.disk_cache_rejected), (1, 1), "{what}: {stats:?}");
        serve_one_request(&runtime, module);
        drop(runtime);

        // The recompiled module replaced the damaged entry.
        let healed = runtime_on(&dir);
        assert_eq!(healed.compile(&bytes).expect("loads").source(), ModuleSource::DiskCache, "{what}: rewritten");
    }
}

#[test]
fn another_modules_entry_under_this_modules_name_is_refused() {
    let dir = fresh_dir("swapped-names");
    let probe = probe_module();
    let other = variant(&probe, b'x');
    let runtime = runtime_on(&dir);
    runtime.compile(&other).expect("compiles");
    drop(runtime);
    // Put the variant's entry where the probe's would be.
    let entry = only_entry(&dir);
    let name = entry.file_name().and_then(|n| n.to_str()).expect("utf-8 name").to_owned();
    let (_, engine) = name.split_once('-').expect("sha-fingerprint name");
    std::fs::rename(&entry, dir.join(format!("{}-{engine}", wasmtrace_runtime::hex_sha256(&probe)))).expect("rename");

    let runtime = runtime_on(&dir);
    assert_eq!(runtime.compile(&probe).expect("loads").source(), ModuleSource::Compiled);
    assert_eq!(runtime.module_load_stats().disk_cache_rejected, 1);
}

#[test]
fn an_entry_others_may_write_or_a_symlink_is_refused() {
    let bytes = probe_module();
    for what in ["group-writable", "symlink"] {
        let dir = fresh_dir(&format!("not-private-{what}"));
        drop(runtime_on(&dir).compile(&bytes).expect("compiles"));
        let entry = only_entry(&dir);
        if what == "symlink" {
            let target = dir.with_extension("elsewhere");
            std::fs::rename(&entry, &target).expect("move");
            std::os::unix::fs::symlink(&target, &entry).expect("symlink");
        } else {
            std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o664)).expect("chmod");
        }
        let runtime = runtime_on(&dir);
        assert_eq!(runtime.compile(&bytes).expect("loads").source(), ModuleSource::Compiled, "{what}");
        assert_eq!(runtime.module_load_stats().disk_cache_rejected, 1, "{what}");
    }
}

#[test]
fn a_cache_directory_others_may_write_to_is_not_used() {
    let dir = fresh_dir("shared-dir");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let runtime = runtime_on(&dir);
    assert_eq!(runtime.module_cache_dir(), None, "refused");
    assert_eq!(runtime.compile(&probe_module()).expect("compiles").source(), ModuleSource::Compiled);
    assert!(entries(&dir).is_empty(), "nothing written there");
}

#[test]
fn the_cache_keeps_at_most_its_limit_of_entries_dropping_the_least_recently_used() {
    let dir = fresh_dir("bounded");
    let probe = probe_module();
    let limits = CacheLimits { max_entries: 2, ..CacheLimits::default() };
    let options = RuntimeOptions { module_cache: Some(dir.clone()), module_cache_limits: limits, ..Default::default() };
    let (a, b, c) = (variant(&probe, b'a'), variant(&probe, b'b'), variant(&probe, b'c'));
    let name = |bytes: &[u8]| wasmtrace_runtime::hex_sha256(bytes);
    let has = |bytes: &[u8]| entries(&dir).iter().any(|p| p.to_string_lossy().contains(&name(bytes)));
    let pause = || std::thread::sleep(std::time::Duration::from_millis(20));
    runtime_with(options.clone()).compile(&a).expect("a");
    pause();
    runtime_with(options.clone()).compile(&b).expect("b");
    pause();
    // Using `a` again makes `b` the least recently used.
    assert_eq!(runtime_with(options.clone()).compile(&a).expect("a").source(), ModuleSource::DiskCache);
    pause();
    runtime_with(options.clone()).compile(&c).expect("c");
    assert_eq!(entries(&dir).len(), 2);
    assert!(has(&a) && has(&c) && !has(&b), "b evicted: {:?}", entries(&dir));
}

#[test]
fn a_runtime_without_a_cache_directory_writes_nothing() {
    let runtime = Runtime::with_services(HostServices::default()).expect("runtime");
    assert_eq!(runtime.module_cache_dir(), None);
    assert_eq!(runtime.compile(&probe_module()).expect("compiles").source(), ModuleSource::Compiled);
}
