//! The on-disk cache of compiled modules: a restart, or a swap to a module some earlier process
//! compiled, deserializes wasmtime's artifact instead of compiling the module again.
//!
//! Entries are named by the module's sha256 and the engine's fingerprint
//! ([`Engine::precompile_compatibility_hash`], hashed with sha256), so an entry is only ever
//! offered to an engine configured like the one that wrote it.
//!
//! # Why the files are not trusted
//!
//! A compiled artifact is machine code: wasmtime's `deserialize` is `unsafe` because it maps the
//! bytes as executable and trusts their metadata. A file on disk is input like any other, so
//! before one is deserialized:
//!
//! - the directory must be ours (same owner as a file we just created in it) and writable by
//!   nobody else; we create it 0700, entries 0600. Otherwise the cache is not used at all.
//! - the entry must be a regular file, owned by us, writable by nobody else, no larger than
//!   [`CacheLimits::max_entry_bytes`].
//! - its header must name this format, the module's sha256 and this engine's fingerprint, and
//!   the sha256 of the artifact it carries must match the artifact: a torn write, a truncated or
//!   bit-flipped file is refused (and deleted) and the module compiled again.
//!
//! Entries are written to a temporary file and renamed into place, so a reader (this process or
//! another sharing the directory) sees a whole entry or none. The directory is kept to
//! [`CacheLimits`] (entry count and total bytes), oldest use first; a hit refreshes the entry's
//! modification time.

use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use thiserror::Error;
use wasmtime::Engine;
use wasmtime::component::Component;

/// Which wasmtime artifact an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArtifactKind {
    /// A core module ([`wasmtime::Module`]).
    Module,
    /// A component ([`Component`]).
    Component,
}

impl ArtifactKind {
    fn tag(self) -> u8 {
        match self {
            Self::Module => 1,
            Self::Component => 2,
        }
    }
}

/// A compiled artifact read back from the cache.
pub(crate) enum Artifact {
    /// A core module.
    Module(wasmtime::Module),
    /// A component.
    Component(Component),
}

/// How large the cache directory may grow, so it cannot fill a disk.
#[derive(Clone, Copy, Debug)]
pub struct CacheLimits {
    /// Most entries kept; the least recently used go first.
    pub max_entries: usize,
    /// Most bytes all entries may take together.
    pub max_total_bytes: u64,
    /// Largest entry written or read; a bigger file is not even read.
    pub max_entry_bytes: u64,
}

impl Default for CacheLimits {
    fn default() -> Self {
        // A compiled filter is a few MiB; 64 of them cover every module a sidecar swaps between
        // plus history, and 1 GiB caps the worst case.
        Self { max_entries: 64, max_total_bytes: 1 << 30, max_entry_bytes: 256 << 20 }
    }
}

/// Why the cache directory cannot be used, or why an entry was refused.
#[derive(Debug, Error)]
pub(crate) enum ModuleCacheError {
    /// A file system operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The directory (or an entry) belongs to someone else or others may write to it: its
    /// contents could have been planted, so it is not used.
    #[error("{} is not private to this user (owner uid {owner}, mode {mode:o}; expected uid {uid}, not group/other-writable)", path.display())]
    NotPrivate {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
        /// Our uid (as the file system records it).
        uid: u32,
    },
    /// The entry is not a regular file.
    #[error("{} is not a regular file", .0.display())]
    NotAFile(PathBuf),
    /// The entry is larger than the cache accepts.
    #[error("{} has {size} bytes, more than the {limit} a cache entry may have", path.display())]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The entry's header is not this format's, or names another module, engine or kind.
    #[error("{} has a bad header: {why}", path.display())]
    BadHeader {
        /// The path.
        path: PathBuf,
        /// What did not match.
        why: &'static str,
    },
    /// The artifact's sha256 differs from the one recorded when it was written.
    #[error("{} fails its checksum (truncated or corrupted)", .0.display())]
    Checksum(PathBuf),
    /// Wasmtime refused the artifact (another wasmtime version, or incompatible settings).
    #[error("wasmtime refused {}: {detail}", path.display())]
    Deserialize {
        /// The path.
        path: PathBuf,
        /// Wasmtime's message.
        detail: String,
    },
    /// Wasmtime could not serialize a compiled module.
    #[error("serializing the compiled module: {0}")]
    Serialize(String),
}

/// What a cache lookup found.
pub(crate) enum Lookup {
    /// A verified entry, deserialized.
    Hit(Artifact),
    /// No entry for this module and engine.
    Miss,
    /// An entry was there but refused (and removed); the caller compiles.
    Rejected(ModuleCacheError),
}

/// The cache directory, checked once when the runtime starts.
pub(crate) struct DiskCache {
    dir: PathBuf,
    /// Hex sha256 of the engine's compatibility hash (and this format's version).
    fingerprint: [u8; 32],
    /// Our uid as the file system records it (the owner of a file we created).
    uid: u32,
    limits: CacheLimits,
    /// Entries refused since the runtime started.
    rejected: AtomicU64,
}

/// Entry header: magic, format version, kind, module sha256, engine fingerprint, artifact
/// sha256, artifact length.
const MAGIC: &[u8; 8] = b"WTRCWASM";
const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 4 + 32 + 32 + 32 + 8;
const ENTRY_SUFFIX: &str = ".cwasm";
const TEMP_PREFIX: &str = ".tmp-";
/// A temporary file older than this was left by a writer that died.
const STALE_TEMP: Duration = Duration::from_secs(600);

/// Feeds a `Hash` implementation into sha256, so the engine fingerprint is stable across
/// processes (std's `DefaultHasher` promises no stability).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        // Unused: the full digest is taken from the inner state.
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ModuleCacheError + 'a {
    move |source| ModuleCacheError::Io { what, path: path.to_owned(), source }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The default cache directory: `$XDG_CACHE_HOME/wasmtrace/modules`, else
/// `$HOME/.cache/wasmtrace/modules`; `None` when neither variable holds an absolute path. The
/// library never uses it on its own: the CLI passes it to [`crate::RuntimeOptions`].
pub fn default_cache_dir() -> Option<PathBuf> {
    let absolute = |name: &str| std::env::var_os(name).map(PathBuf::from).filter(|p| p.is_absolute());
    let base = absolute("XDG_CACHE_HOME").or_else(|| absolute("HOME").map(|home| home.join(".cache")))?;
    Some(base.join("wasmtrace").join("modules"))
}

impl DiskCache {
    /// Creates (0700) and checks the directory.
    pub(crate) fn open(dir: &Path, engine: &Engine, limits: CacheLimits) -> Result<Self, ModuleCacheError> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io("creating", dir))?;
        // Resolve symlinks the user put in the path, then check the directory itself.
        let dir = dir.canonicalize().map_err(io("resolving", dir))?;
        let uid = Self::probe_uid(&dir)?;
        let meta = std::fs::symlink_metadata(&dir).map_err(io("reading", &dir))?;
        check_private(&dir, &meta, uid)?;
        let mut hasher = Sha256Hasher(Sha256::new());
        FORMAT_VERSION.hash(&mut hasher);
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let fingerprint = hasher.0.finalize().into();
        Ok(Self { dir, fingerprint, uid, limits, rejected: AtomicU64::new(0) })
    }

    /// Our uid as the file system sees it: the owner of a file we create. (This also proves
    /// the directory is writable before the first compile relies on it.)
    fn probe_uid(dir: &Path) -> Result<u32, ModuleCacheError> {
        let (path, file) = create_temp(dir)?;
        let uid = file.metadata().map(|m| m.uid());
        let _ = std::fs::remove_file(&path);
        uid.map_err(io("reading", &path))
    }

    /// The directory in use (after resolving symlinks).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, module_sha256: &str) -> PathBuf {
        // The fingerprint's first 16 bytes name the file; the header carries all 32.
        self.dir.join(format!("{module_sha256}-{}{ENTRY_SUFFIX}", hex(&self.fingerprint[..16])))
    }

    /// Whether an entry for the module with this sha256 exists (unverified: [`Self::load`]
    /// checks it). A quick-tier compile is not worth it when the full code is a read away.
    pub(crate) fn contains(&self, module_sha256: &str) -> bool {
        self.entry_path(module_sha256).is_file()
    }

    /// The compiled artifact of the module with this sha256, if a verified entry exists. A
    /// refused entry is deleted, so the recompiled module replaces it.
    pub(crate) fn load(&self, engine: &Engine, module_sha256: &str, kind: ArtifactKind) -> Lookup {
        let path = self.entry_path(module_sha256);
        let found = self
            .read_verified(&path, module_sha256, kind)
            .and_then(|artifact| artifact.map(|bytes| deserialize(engine, &path, kind, &bytes)).transpose());
        match found {
            Ok(None) => Lookup::Miss,
            Ok(Some(artifact)) => Lookup::Hit(artifact),
            Err(e) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                // An entry that failed its checks is deleted so the recompiled module's entry
                // replaces it (a file we may not delete, not ours, stays refused on every
                // lookup). A failure to read it (out of descriptors, interrupted) says nothing
                // about the entry: it stays for the next start.
                if !matches!(e, ModuleCacheError::Io { .. }) {
                    let _ = std::fs::remove_file(&path);
                }
                Lookup::Rejected(e)
            }
        }
    }

    /// Entries refused since the runtime started.
    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Reads the entry and returns its artifact once every check passed; `None` if absent.
    fn read_verified(
        &self,
        path: &Path,
        module_sha256: &str,
        kind: ArtifactKind,
    ) -> Result<Option<Vec<u8>>, ModuleCacheError> {
        // Checked before opening (a symlink, FIFO or device is never opened) and again on the
        // open handle (it must be the very file checked).
        let link = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("reading", path)(e)),
        };
        if !link.is_file() {
            return Err(ModuleCacheError::NotAFile(path.to_owned()));
        }
        check_private(path, &link, self.uid)?;
        let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(io("opening", path))?;
        let meta = file.metadata().map_err(io("reading", path))?;
        if !meta.is_file() || (meta.dev(), meta.ino()) != (link.dev(), link.ino()) {
            return Err(ModuleCacheError::NotAFile(path.to_owned()));
        }
        check_private(path, &meta, self.uid)?;
        let limit = self.limits.max_entry_bytes;
        if meta.len() > limit {
            return Err(ModuleCacheError::TooLarge { path: path.to_owned(), size: meta.len(), limit });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        // Bounded even if the file grows while being read.
        (&mut file).take(limit + 1).read_to_end(&mut bytes).map_err(io("reading", path))?;
        let bad = |why| ModuleCacheError::BadHeader { path: path.to_owned(), why };
        let (header, artifact) = bytes.split_at_checked(HEADER_LEN).ok_or_else(|| bad("shorter than the header"))?;
        let field = |range: std::ops::Range<usize>| header.get(range).unwrap_or_default();
        if field(0..8) != MAGIC {
            return Err(bad("not a wasmtrace cache entry"));
        }
        if field(8..12) != FORMAT_VERSION.to_le_bytes() {
            return Err(bad("another format version"));
        }
        if field(12..13) != [kind.tag()] || field(13..16) != [0, 0, 0] {
            return Err(bad("another artifact kind"));
        }
        if unhex_sha256(module_sha256).as_ref().map(<[u8; 32]>::as_slice) != Some(field(16..48)) {
            return Err(bad("another module's sha256"));
        }
        if field(48..80) != self.fingerprint {
            return Err(bad("another engine's fingerprint"));
        }
        if field(112..120) != (artifact.len() as u64).to_le_bytes() {
            return Err(ModuleCacheError::Checksum(path.to_owned()));
        }
        if Sha256::digest(artifact).as_slice() != field(80..112) {
            return Err(ModuleCacheError::Checksum(path.to_owned()));
        }
        // Least recently used goes first: a hit counts as a use.
        let _ = file.set_modified(SystemTime::now());
        // The header goes in place: no second buffer the size of the artifact.
        bytes.drain(..HEADER_LEN);
        Ok(Some(bytes))
    }

    /// Writes the entry for `module_sha256` atomically (temporary file, then rename), then trims
    /// the directory to its limits.
    pub(crate) fn store(
        &self,
        module_sha256: &str,
        kind: ArtifactKind,
        artifact: &[u8],
    ) -> Result<(), ModuleCacheError> {
        let path = self.entry_path(module_sha256);
        let module_digest = unhex_sha256(module_sha256).ok_or_else(|| ModuleCacheError::BadHeader {
            path: path.clone(),
            why: "the module's sha256 is not 64 hex digits",
        })?;
        let size = (HEADER_LEN + artifact.len()) as u64;
        if size > self.limits.max_entry_bytes {
            return Err(ModuleCacheError::TooLarge { path, size, limit: self.limits.max_entry_bytes });
        }
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&[kind.tag(), 0, 0, 0]);
        header.extend_from_slice(&module_digest);
        header.extend_from_slice(&self.fingerprint);
        header.extend_from_slice(&Sha256::digest(artifact));
        header.extend_from_slice(&(artifact.len() as u64).to_le_bytes());
        let (temp, mut file) = create_temp(&self.dir)?;
        let written = file.write_all(&header).and_then(|()| file.write_all(artifact));
        // No fsync: after a crash a torn entry fails its checksum and is compiled again, which
        // is cheaper than syncing on every compile.
        drop(file);
        let renamed = written.and_then(|()| std::fs::rename(&temp, &path));
        if let Err(e) = renamed {
            let _ = std::fs::remove_file(&temp);
            return Err(io("writing", &path)(e));
        }
        self.evict();
        Ok(())
    }

    /// Deletes the least recently used entries beyond the limits, and temporary files a dead
    /// writer left. Only files with this cache's names are touched.
    fn evict(&self) {
        let Ok(listing) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        let mut entries = Vec::new();
        for item in listing.flatten() {
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(meta) = item.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            // Only names this cache makes are ever touched: the directory may be one the
            // operator also keeps other files in.
            if is_temp_name(name) {
                if now.duration_since(modified).is_ok_and(|age| age > STALE_TEMP) {
                    let _ = std::fs::remove_file(item.path());
                }
            } else if is_entry_name(name) {
                entries.push((modified, meta.len(), item.path()));
            }
        }
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        let mut total = 0u64;
        for (kept, (_, size, path)) in entries.into_iter().enumerate() {
            total = total.saturating_add(size);
            if kept >= self.limits.max_entries || total > self.limits.max_total_bytes {
                tracing::debug!(path = %path.display(), "module cache: evicting the least recently used entry");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// `<64 hex: module sha256>-<32 hex: fingerprint>.cwasm`, the names of [`DiskCache::entry_path`].
fn is_entry_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(ENTRY_SUFFIX) else { return false };
    let Some((module, fingerprint)) = stem.split_once('-') else { return false };
    let lower_hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    lower_hex(module, 64) && lower_hex(fingerprint, 32)
}

/// `.tmp-<pid>-<nanos>-<counter>`, the names of [`create_temp`].
fn is_temp_name(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX).is_some_and(|rest| {
        let parts: Vec<&str> = rest.split('-').collect();
        parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// A new private (0600) temporary file in `dir`, never an existing one.
fn create_temp(dir: &Path) -> Result<(PathBuf, File), ModuleCacheError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let name = format!("{TEMP_PREFIX}{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let path = dir.join(name);
    let file =
        OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(io("creating", &path))?;
    Ok((path, file))
}

/// Owned by `uid`, and neither group- nor other-writable.
fn check_private(path: &Path, meta: &std::fs::Metadata, uid: u32) -> Result<(), ModuleCacheError> {
    let mode = meta.permissions().mode() & 0o7777;
    if meta.uid() != uid || mode & 0o022 != 0 {
        return Err(ModuleCacheError::NotPrivate { path: path.to_owned(), owner: meta.uid(), mode, uid });
    }
    Ok(())
}

/// Hands verified bytes to wasmtime.
#[allow(unsafe_code, reason = "wasmtime's deserialize is unsafe; the bytes are verified first (see SAFETY)")]
fn deserialize(engine: &Engine, path: &Path, kind: ArtifactKind, bytes: &[u8]) -> Result<Artifact, ModuleCacheError> {
    let refused =
        |e: wasmtime::Error| ModuleCacheError::Deserialize { path: path.to_owned(), detail: format!("{e:#}") };
    // SAFETY: `deserialize` requires bytes that wasmtime itself produced by `serialize` (it maps
    // them as code and trusts their metadata). These bytes are exactly what `store` wrote from
    // `Module::serialize` / `Component::serialize` of this process or an earlier one:
    // - only this user can have written them: the directory and the file are owned by us and
    //   writable by nobody else (checked in `open` and `read_verified`), the file is a regular
    //   file (not a link to one), and entries only ever appear by rename of a whole file;
    // - they are whole and unaltered: the sha256 over the artifact, recorded in the header when
    //   it was written, matches, as does the length (a torn, truncated or flipped file fails);
    // - they are for this module and an engine like this one: the header names the module's
    //   sha256 and the engine fingerprint, and wasmtime checks its own version and settings
    //   header in addition, returning an error (not undefined behaviour) on a mismatch.
    // The bytes are copied into wasmtime's own memory (`deserialize`, not `deserialize_file`),
    // so changing the file later cannot change the loaded code.
    let artifact = unsafe {
        match kind {
            ArtifactKind::Module => wasmtime::Module::deserialize(engine, bytes).map(Artifact::Module),
            ArtifactKind::Component => Component::deserialize(engine, bytes).map(Artifact::Component),
        }
    };
    artifact.map_err(refused)
}

/// Serializes a compiled artifact for [`DiskCache::store`].
pub(crate) fn serialize_module(module: &wasmtime::Module) -> Result<Vec<u8>, ModuleCacheError> {
    module.serialize().map_err(|e| ModuleCacheError::Serialize(format!("{e:#}")))
}

/// Serializes a compiled component for [`DiskCache::store`].
pub(crate) fn serialize_component(component: &Component) -> Result<Vec<u8>, ModuleCacheError> {
    component.serialize().map_err(|e| ModuleCacheError::Serialize(format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::{is_entry_name, is_temp_name};

    #[test]
    fn only_names_the_cache_makes_are_its_own() {
        let entry = format!("{}-{}.cwasm", "a".repeat(64), "0".repeat(32));
        assert!(is_entry_name(&entry));
        for other in ["app.cwasm", "x-y.cwasm", &format!("{}-{}.cwasm", "A".repeat(64), "0".repeat(32))] {
            assert!(!is_entry_name(other), "{other}");
        }
        assert!(is_temp_name(".tmp-123-456-7"));
        for other in [".tmp-notes", ".tmp-1-2", ".tmp-1-2-x", ".tmp--1-2"] {
            assert!(!is_temp_name(other), "{other}");
        }
    }
}
