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

/// Creates `dir` (and its parents) and makes it readable by its owner only (0700 on Unix;
/// elsewhere the folder keeps the permissions it inherits, a user's own profile).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Creates `path` if it is not there, readable and writable by its owner only (0600 on
/// Unix), and makes an existing one so.
pub fn private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    drop(options.open(path)?);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
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
