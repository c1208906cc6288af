//! Small file-system helpers shared by the stages: sibling paths (`FILE.duckdb.wal`), removal
//! that tolerates absence, and listing a folder's files of one kind in a stable order.

use std::path::{Path, PathBuf};

/// `path` with `.suffix` appended: `x.duckdb` → `x.duckdb.wal`.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

/// Removes a file; a file that is not there is not an error.
pub fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The files (not folders) directly in `dir` whose name ends in `.ext`, sorted by name.
pub fn with_extension(dir: &Path, ext: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == ext) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// (file name, contents) of every `.ext` file directly in `dir`, sorted by name; an error
/// names the folder or file that could not be read.
pub fn read_with_extension(
    dir: &Path,
    ext: &str,
) -> Result<Vec<(String, String)>, (PathBuf, std::io::Error)> {
    with_extension(dir, ext)
        .map_err(|e| (dir.to_owned(), e))?
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|e| (path.clone(), e))?;
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            Ok((name, text))
        })
        .collect()
}

/// Writes `bytes` to `path` and flushes them to disk before returning.
pub fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes renames and new entries in `dir` durable (a no-op where folders cannot be opened,
/// as on Windows).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
