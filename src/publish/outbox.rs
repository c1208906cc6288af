//! The outbox: finished snapshots waiting to be published, oldest first.
//!
//! A folder per company, `STATE/COMPANY/outbox/`, holding whole snapshot folders (see
//! [`crate::snapshot`]; a `.partial` folder is an interrupted export and is removed) and
//! `uploads.json`, the multipart uploads started and not yet completed or aborted. A snapshot
//! leaves the outbox only once `latest` in the store names it (or a newer one). At most
//! [`Outbox::limit`] snapshots wait: each is a full copy of the company, so when the limit is
//! passed the oldest waiting one is dropped, and nothing is lost.

use std::path::{Path, PathBuf};

use object_store::MultipartId;

use super::PublishError;
use crate::files;
use crate::snapshot::{SnapshotDir, manifest};

/// Journal of open multipart uploads.
const UPLOADS_FILE: &str = "uploads.json";

/// A company's outbox folder.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
    /// Snapshots kept waiting at most.
    pub limit: usize,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Journal {
    /// (object path, multipart upload id).
    uploads: Vec<(String, String)>,
}

fn local(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PublishError {
    let path = path.to_owned();
    move |source| PublishError::Local {
        doing,
        path,
        source,
    }
}

impl Outbox {
    /// The outbox in `dir` (created if missing), keeping at most `limit` snapshots.
    pub fn open(dir: &Path, limit: usize) -> Result<Self, PublishError> {
        std::fs::create_dir_all(dir).map_err(local("creating the outbox", dir))?;
        Ok(Outbox {
            dir: dir.to_owned(),
            limit: limit.max(1),
        })
    }

    /// The folder new snapshots are written into.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes interrupted exports (`SNAPSHOT_ID.partial` folders).
    pub fn remove_partial(&self) -> Result<(), PublishError> {
        for entry in std::fs::read_dir(&self.dir)
            .map_err(local("listing the outbox", &self.dir))?
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() && path.extension().is_some_and(|e| e == "partial") {
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {
                        tracing::info!(folder = %path.display(), "Removed a snapshot folder an interrupted sync left behind.")
                    }
                    Err(e) => {
                        tracing::warn!(folder = %path.display(), error = %e, "Could not remove a left-over snapshot folder yet.")
                    }
                }
            }
        }
        Ok(())
    }

    /// Whole snapshots waiting, oldest first.
    pub fn pending(&self) -> Result<Vec<SnapshotDir>, PublishError> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.dir)
            .map_err(local("listing the outbox", &self.dir))?
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| manifest::is_snapshot_id(name))
            .collect();
        ids.sort();
        let mut pending = Vec::new();
        for id in ids {
            match SnapshotDir::open(&self.dir.join(&id)) {
                Ok(snap) => pending.push(snap),
                // Not something this connector can publish (damaged by hand, or from another
                // version): set aside, never in the way of newer snapshots.
                Err(e) => {
                    tracing::warn!(snapshot = %id, error = %e, "Set aside a waiting snapshot that cannot be read.");
                    self.set_aside(&self.dir.join(&id))?;
                }
            }
        }
        Ok(pending)
    }

    /// Renames a snapshot folder to `ID.partial` (atomic), for removal now or by the next
    /// [`Outbox::remove_partial`]: a folder keeps its snapshot id only while it is whole.
    fn set_aside(&self, path: &Path) -> Result<PathBuf, PublishError> {
        let aside = files::sibling(path, "partial");
        std::fs::rename(path, &aside).map_err(local("setting aside", path))?;
        Ok(aside)
    }

    /// Drops the oldest waiting snapshots beyond [`Outbox::limit`]; returns their ids.
    pub fn trim(&self) -> Result<Vec<String>, PublishError> {
        let pending = self.pending()?;
        let excess = pending.len().saturating_sub(self.limit);
        let mut dropped = Vec::new();
        for snap in pending.into_iter().take(excess) {
            tracing::warn!(
                snapshot = %snap.manifest.snapshot_id,
                limit = self.limit,
                "Dropped an unpublished snapshot: the outbox is full, and newer snapshots hold all of its data."
            );
            self.remove(&snap)?;
            dropped.push(snap.manifest.snapshot_id);
        }
        Ok(dropped)
    }

    /// Removes a published (or dropped) snapshot: renamed first, so that a removal cut short
    /// leaves a `.partial` folder, cleaned up later, never a half snapshot under its id.
    pub fn remove(&self, snap: &SnapshotDir) -> Result<(), PublishError> {
        let aside = self.set_aside(&snap.path)?;
        if let Err(e) = std::fs::remove_dir_all(&aside) {
            // Windows: a file held open by a scanner; the next sync removes it.
            tracing::warn!(folder = %aside.display(), error = %e, "Could not remove a published snapshot's folder yet.");
        }
        Ok(())
    }

    /// The newest snapshot id waiting, if any.
    pub fn newest_id(&self) -> Result<Option<String>, PublishError> {
        Ok(self.pending()?.pop().map(|s| s.manifest.snapshot_id))
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join(UPLOADS_FILE)
    }

    fn read_journal(&self) -> Result<Journal, PublishError> {
        let path = self.journal_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| PublishError::Local {
                doing: "parsing",
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
            Err(source) => Err(PublishError::Local {
                doing: "reading",
                path,
                source,
            }),
        }
    }

    fn write_journal(&self, journal: &Journal) -> Result<(), PublishError> {
        let path = self.journal_path();
        let tmp = files::sibling(&path, "tmp");
        let bytes = serde_json::to_vec(journal).expect("a journal serialises");
        files::write_synced(&tmp, &bytes).map_err(local("writing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(local("writing", &path))
    }

    /// Records a multipart upload before its first part is sent.
    pub fn journal_upload(&self, path: &str, id: &MultipartId) -> Result<(), PublishError> {
        // Uploads run concurrently: one writer at a time.
        let _guard = JOURNAL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut journal = self.read_journal()?;
        journal.uploads.push((path.to_owned(), id.clone()));
        self.write_journal(&journal)
    }

    /// Forgets a completed or aborted multipart upload.
    pub fn forget_upload(&self, id: &MultipartId) -> Result<(), PublishError> {
        let _guard = JOURNAL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut journal = self.read_journal()?;
        journal.uploads.retain(|(_, i)| i != id);
        self.write_journal(&journal)
    }

    /// Multipart uploads started and never completed nor aborted.
    pub fn journalled_uploads(&self) -> Result<Vec<(String, MultipartId)>, PublishError> {
        Ok(self.read_journal()?.uploads)
    }
}

static JOURNAL_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
