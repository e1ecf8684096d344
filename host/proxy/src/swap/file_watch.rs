//! Hot swap from the file system: a plugin's module file (`code.local.filename`) or the
//! configuration file changes, and the plugins it concerns are swapped.
//!
//! Directories are watched, not files, so editors and deploy tools that write a temporary file
//! and rename it over the old one (atomic replace, also what a Kubernetes ConfigMap update does)
//! are seen. Events are debounced; a change that leaves the module and configuration as they
//! are (same sha256, same bytes) swaps nothing.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use wasmtrace_config::{Bootstrap, SERVICE_SCOPE};

use crate::error::WorkerError;

use super::coordinator::{ModuleSource, SwapCoordinator, SwapError, SwapRequest};

/// Quiet time after the last event before acting: a copy or a multi-step deploy is one change.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// Longest a burst of events delays acting on it.
const MAX_DEBOUNCE: Duration = Duration::from_secs(2);

/// Whether an event for `event_path` may have changed `key` (a watched file as events name it):
/// the file itself, or a Kubernetes volume update, which swaps a `..data` symlink in the same
/// directory and never names the file.
fn touches(event_path: &Path, key: &Path) -> bool {
    event_path == key
        || (event_path.parent() == key.parent()
            && event_path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("..")))
}

/// Where a path lives, in the form directory events report it (canonical directory + name).
fn watch_key(path: &Path) -> Option<(PathBuf, PathBuf)> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = parent.canonicalize().ok()?;
    let name = path.file_name()?;
    Some((dir.clone(), dir.join(name)))
}

/// Starts watching; runs until `stop` changes. `config_path` is the bootstrap file the proxy
/// was started from (its changes swap plugin modules and configurations); `modules` watches
/// the serving modules' files.
pub fn spawn(
    coordinator: Arc<SwapCoordinator>,
    config_path: Option<PathBuf>,
    modules: bool,
    bootstrap: Arc<Bootstrap>,
    stop: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let (events, changes) = mpsc::unbounded_channel::<PathBuf>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        // Reads (ours included: a swap reads the module) are not changes; acting on them
        // would loop.
        Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => {}
        Ok(event) => event.paths.into_iter().for_each(|p| {
            let _ = events.send(p);
        }),
        Err(e) => tracing::warn!("file watch: {e}"),
    })
    .map_err(WorkerError::Watch)?;
    let mut state = WatchState {
        coordinator,
        config: config_path.as_deref().and_then(watch_key).map(|(_, file)| file),
        config_path,
        modules,
        bootstrap,
        watcher,
        watched: BTreeSet::new(),
    };
    state.update_watches();
    tokio::spawn(state.run(changes, stop));
    Ok(())
}

struct WatchState {
    coordinator: Arc<SwapCoordinator>,
    /// The configuration file as events name it.
    config: Option<PathBuf>,
    config_path: Option<PathBuf>,
    modules: bool,
    /// The configuration as last applied, to tell plugin changes from others.
    bootstrap: Arc<Bootstrap>,
    watcher: notify::RecommendedWatcher,
    watched: BTreeSet<PathBuf>,
}

impl WatchState {
    /// Watches the directories of the configuration file and of every serving module (a swap
    /// may have moved a module).
    fn update_watches(&mut self) {
        let mut wanted: Vec<PathBuf> = self.config_path.iter().cloned().collect();
        if self.modules {
            wanted.extend(self.coordinator.slots().iter().map(|s| s.active().filter.module_path.clone()));
        }
        for path in wanted {
            let Some((dir, _)) = watch_key(&path) else {
                tracing::warn!(path = %path.display(), "file watch: the directory does not exist");
                continue;
            };
            if self.watched.contains(&dir) {
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::debug!(dir = %dir.display(), "watching for module and configuration changes");
                    self.watched.insert(dir);
                }
                Err(e) => tracing::warn!(dir = %dir.display(), "file watch: {e}"),
            }
        }
    }

    async fn run(mut self, mut changes: mpsc::UnboundedReceiver<PathBuf>, mut stop: watch::Receiver<bool>) {
        loop {
            let first = tokio::select! {
                change = changes.recv() => change,
                _ = stop.wait_for(|stopped| *stopped) => return,
            };
            let Some(first) = first else { return };
            let mut changed = HashSet::from([first]);
            // Quiet for DEBOUNCE, but never longer than MAX_DEBOUNCE: a directory that never
            // goes quiet (a log beside the module) must not hold a swap back forever.
            let give_up = tokio::time::Instant::now() + MAX_DEBOUNCE;
            while let Ok(Ok(Some(more))) =
                tokio::time::timeout_at(give_up, tokio::time::timeout(DEBOUNCE, changes.recv())).await
            {
                changed.insert(more);
            }
            self.apply(&changed).await;
            self.update_watches();
        }
    }

    async fn apply(&mut self, changed: &HashSet<PathBuf>) {
        let mut requests = Vec::new();
        if self.config.as_ref().is_some_and(|c| changed.iter().any(|p| touches(p, c))) {
            requests.extend(self.config_changes());
        }
        for slot in self.coordinator.slots().iter().filter(|_| self.modules) {
            let module_path = slot.active().filter.module_path.clone();
            let Some((_, key)) = watch_key(&module_path) else { continue };
            let already = requests.iter().any(|r: &SwapRequest| {
                r.plugin == slot.name && r.listener.as_deref() == Some(slot.listener.as_str()) && r.module.is_some()
            });
            if changed.iter().any(|p| touches(p, &key)) && !already && module_path.exists() {
                requests.push(SwapRequest {
                    plugin: slot.name.clone(),
                    listener: Some(slot.listener.clone()),
                    module: Some(ModuleSource::Path(module_path)),
                    ..SwapRequest::default()
                });
            }
        }
        for request in requests {
            let what = format!("{}/{}", request.listener.as_deref().unwrap_or("*"), request.plugin);
            match self.coordinator.swap(request).await {
                Ok(outcome) if outcome.swapped.is_empty() => {
                    tracing::debug!(plugin = %what, "file changed; module and configuration are unchanged")
                }
                Ok(outcome) => tracing::info!(
                    plugin = %what,
                    published_after_ms = outcome.published_after_ms,
                    "file change swapped the plugin"
                ),
                Err(SwapError::Refused(reason)) => {
                    tracing::error!(plugin = %what, "file change refused, the serving generation stays: {reason}")
                }
                Err(e) => tracing::error!(plugin = %what, "file change not applied: {e}"),
            }
        }
    }

    /// The swaps a changed configuration file asks for. Other changes (listeners, routes,
    /// clusters) need a restart: they are reported, not applied.
    fn config_changes(&mut self) -> Vec<SwapRequest> {
        let Some(path) = &self.config_path else { return Vec::new() };
        let bootstrap = match Bootstrap::from_file(path) {
            Ok(bootstrap) => bootstrap,
            Err(e) => {
                tracing::error!(config = %path.display(), "configuration change ignored, it does not load:\n{e}");
                return Vec::new();
            }
        };
        if without_plugin_code(&bootstrap) != without_plugin_code(&self.bootstrap) {
            tracing::warn!(
                config = %path.display(),
                "the configuration changed beyond Wasm plugin modules and configurations; those changes need a restart \
                 (plugin changes are applied now)"
            );
        }
        let mut requests = Vec::new();
        let filters = bootstrap
            .listeners
            .iter()
            .flat_map(|l| l.http.wasm_filters.iter().map(move |f| (l.name.as_str(), f)))
            .chain(bootstrap.wasm_services.iter().map(|s| (SERVICE_SCOPE, &s.filter)));
        for (scope, filter) in filters {
            requests.push(SwapRequest {
                plugin: filter.name.clone(),
                listener: Some(scope.to_owned()),
                module: Some(ModuleSource::Path(filter.module_path.clone())),
                configuration: Some(filter.plugin_configuration.clone()),
                vm_configuration: Some(filter.vm_configuration.clone()),
            });
        }
        self.bootstrap = Arc::new(bootstrap);
        requests
    }
}

/// The configuration with what a hot swap can change blanked out.
fn without_plugin_code(bootstrap: &Bootstrap) -> serde_json::Value {
    let mut value = serde_json::to_value(bootstrap).unwrap_or_default();
    let blank = |filter: &mut serde_json::Value| {
        if let Some(filter) = filter.as_object_mut() {
            for field in ["module_path", "plugin_configuration", "vm_configuration"] {
                filter.remove(field);
            }
        }
    };
    if let Some(listeners) = value.get_mut("listeners").and_then(|l| l.as_array_mut()) {
        for listener in listeners {
            let filters = listener.pointer_mut("/http/wasm_filters").and_then(|f| f.as_array_mut());
            filters.into_iter().flatten().for_each(blank);
        }
    }
    if let Some(services) = value.get_mut("wasm_services").and_then(|s| s.as_array_mut()) {
        services.iter_mut().filter_map(|s| s.get_mut("filter")).for_each(blank);
    }
    value
}
