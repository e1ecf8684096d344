//! Reading module files named in a configuration or an admin call: they are hostile until
//! checked. Only a regular file on a real file system is read (a FIFO would block the reader, a
//! device would never end, `/proc` and `/sys` files lie about their size), the size cap holds
//! for the bytes actually read, and only the WebAssembly binary format is accepted — the text
//! format's parse errors quote the source, and no error here ever shows a file's contents.

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Largest module accepted, from a file or inline.
pub const MAX_MODULE_BYTES: u64 = 64 << 20;

/// The first bytes of every WebAssembly binary (module or component).
const WASM_MAGIC: &[u8; 4] = b"\0asm";

/// File systems whose files are not module files, whatever `stat` says.
const PSEUDO_FILE_SYSTEMS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Why a module file was not read. Messages name the path and the reason, never the contents.
#[derive(Debug, Error)]
pub enum ModuleFileError {
    /// It could not be found or opened.
    #[error("cannot open the module {path}")]
    Open {
        /// The path as given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// It is a FIFO, a device, a socket or a directory.
    #[error("the module {path} is not a regular file (FIFOs, devices, sockets and directories are refused)")]
    NotRegular {
        /// The path as given.
        path: PathBuf,
    },
    /// It lives under `/proc`, `/sys` or `/dev`.
    #[error("the module {path} is under /proc, /sys or /dev; module files must be regular files on disk")]
    PseudoFileSystem {
        /// The path as given.
        path: PathBuf,
    },
    /// More bytes than [`MAX_MODULE_BYTES`].
    #[error("{origin} is larger than {MAX_MODULE_BYTES} bytes, the most a module may be")]
    TooLarge {
        /// The path, or "the module sent".
        origin: String,
    },
    /// Not the WebAssembly binary format.
    #[error(
        "{origin} is not a WebAssembly binary (it does not start with \\0asm); build the filter to .wasm — \
         the text format is not accepted here"
    )]
    NotWasm {
        /// The path, or "the module sent".
        origin: String,
    },
    /// Reading failed part way.
    #[error("cannot read the module {path}")]
    Read {
        /// The path as given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Checks that `bytes` (from `origin`, a path or "the module sent") can be a module: the size
/// cap and the binary preamble.
pub fn check_module_bytes(bytes: &[u8], origin: &str) -> Result<(), ModuleFileError> {
    if bytes.len() as u64 > MAX_MODULE_BYTES {
        return Err(ModuleFileError::TooLarge { origin: origin.to_owned() });
    }
    if !bytes.starts_with(WASM_MAGIC) {
        return Err(ModuleFileError::NotWasm { origin: origin.to_owned() });
    }
    Ok(())
}

/// Reads the module file at `path`: a regular file, at most [`MAX_MODULE_BYTES`], in the binary
/// format. Blocking (call it off the async threads); it never waits for a writer.
pub fn read_module_file(path: &Path) -> Result<Vec<u8>, ModuleFileError> {
    let open_error = |source| ModuleFileError::Open { path: path.to_owned(), source };
    let resolved = std::fs::canonicalize(path).map_err(open_error)?;
    if PSEUDO_FILE_SYSTEMS.iter().any(|root| resolved.starts_with(root)) {
        return Err(ModuleFileError::PseudoFileSystem { path: path.to_owned() });
    }
    // Non-blocking open: opening a FIFO for reading would otherwise wait for a writer. The
    // resolved path has no links left; refusing one at open closes the race with a swap of the
    // file for a link after `canonicalize`.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOFOLLOW).bits() as i32)
        .open(&resolved)
        .map_err(open_error)?;
    let metadata = file.metadata().map_err(open_error)?;
    if !metadata.file_type().is_file() {
        return Err(ModuleFileError::NotRegular { path: path.to_owned() });
    }
    let origin = path.display().to_string();
    if metadata.len() > MAX_MODULE_BYTES {
        return Err(ModuleFileError::TooLarge { origin });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    // The cap holds for what is read, not for what the metadata said.
    file.take(MAX_MODULE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ModuleFileError::Read { path: path.to_owned(), source })?;
    check_module_bytes(&bytes, &origin)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wasmtrace-module-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn a_binary_module_is_read() {
        let dir = scratch("binary");
        let path = dir.join("m.wasm");
        std::fs::write(&path, b"\0asm\x01\0\0\0").expect("write");
        assert_eq!(read_module_file(&path).expect("read"), b"\0asm\x01\0\0\0");
    }

    #[test]
    fn text_is_refused_without_quoting_it() {
        let dir = scratch("text");
        let path = dir.join("secret.txt");
        std::fs::write(&path, "root:x:0:0:SECRET-LINE\n").expect("write");
        let error = read_module_file(&path).expect_err("text refused").to_string();
        assert!(error.contains("not a WebAssembly binary"), "{error}");
        assert!(!error.contains("SECRET"), "{error}");
    }

    #[test]
    fn fifos_devices_directories_and_proc_are_refused() {
        let dir = scratch("special");
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
        assert!(made.success());
        assert!(matches!(read_module_file(&fifo), Err(ModuleFileError::NotRegular { .. })));
        assert!(matches!(read_module_file(&dir), Err(ModuleFileError::NotRegular { .. })));
        assert!(matches!(read_module_file(Path::new("/dev/zero")), Err(ModuleFileError::PseudoFileSystem { .. })));
        assert!(matches!(
            read_module_file(Path::new("/proc/self/environ")),
            Err(ModuleFileError::PseudoFileSystem { .. })
        ));
    }
}
