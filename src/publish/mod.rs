//! The publish stage: a finished snapshot folder into object storage, where the server reads it.
//!
//! Takes a [`SnapshotDir`] from the [`Outbox`] and a [`Store`]; produces, in the store:
//!
//! ```text
//! COMPANY/data/DATATYPE/SHA256.parquet        data files, content-addressed, never rewritten
//! COMPANY/snapshots/SNAPSHOT_ID/manifest.json one per snapshot, never rewritten
//! COMPANY/latest.json                         {snapshotId, manifestKey, manifestSha256}
//! ```
//!
//! The protocol, in this order, so that a reader following `latest.json` only ever finds a
//! whole snapshot, whatever point a publisher is stopped at:
//! 1. Abandoned uploads of an earlier, killed run are aborted (multipart ids are journalled
//!    in the outbox before the first part is sent; a local folder's half-written `…#N` files are
//!    removed).
//! 2. Each data file is uploaded under its SHA-256 unless that key already exists: an
//!    unchanged file (a data type's part) costs one HEAD request. Files of at least the multipart threshold go
//!    in parts: their uploads are started one after another, each id journalled before the
//!    next request, then all files are sent a few at a time; a failed multipart upload is
//!    aborted. Writes use "create if absent", so two publishers never overwrite each other's
//!    bytes (the bytes are the same anyway). The one window left: a process killed between
//!    S3 creating an upload and the journal recording its id leaves that upload open; an S3
//!    lifecycle rule (AbortIncompleteMultipartUpload) on the bucket removes such leftovers.
//! 3. Every data key is checked to be present with its size; only then is the manifest put.
//! 4. `latest.json` is replaced with a conditional write (S3 `If-Match` on the ETag read, or
//!    `If-None-Match: *` for the first one); on a lost race it is read again, and it is never
//!    moved back to an older snapshot id. A local folder has no conditional replace: there the
//!    pointer is a temporary file renamed over the old one (atomic), and one sync at a time
//!    holds the company's lock.
//! 5. Only then is the snapshot removed from the outbox.
//!
//! Errors: transient ones (network, timeouts, 5xx, throttling) are retried with exponential
//! backoff by the store client for [`StoreConfig::retry_timeout`], then reported as
//! [`PublishError::Unreachable`]: the snapshot stays in the outbox for the next attempt.
//! Permanent ones (credentials, a missing bucket) fail at once with what to fix.

mod outbox;
mod s3_uploads;
mod store;
mod verify;
mod via_server;

use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::StreamExt;
use object_store::path::Path as Key;
use object_store::{
    MultipartId, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use sha2::{Digest, Sha256};

pub use outbox::Outbox;
pub use store::{Backend, Store, StoreConfig, file_url, is_transient};
pub use verify::{Problem, Verified, check_data, check_manifest, verify};
pub use via_server::{CredentialSource, ServerPublisher};

use crate::snapshot::manifest::{FileEntry, Latest};
use crate::snapshot::{self, SnapshotDir};

/// Part size of multipart uploads (S3 wants at least 5 MiB for all parts but the last).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Data files uploaded at the same time.
const CONCURRENT_UPLOADS: usize = 4;

/// What [`Store::fetch_to_file`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// No such object.
    Missing,
    /// The object is not the size it should be (the size the store gave, or the bytes that
    /// arrived).
    WrongSize(u64),
    /// Written whole; its SHA-256, lowercase hex.
    Written {
        /// The SHA-256 of what was written.
        sha256: String,
    },
}

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The store URL cannot be used.
    #[error("store URL {url}: {why}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong and what to write instead.
        why: String,
    },
    /// The store could not be reached in time; the snapshot waits in the outbox.
    #[error(
        "the store {url} could not be reached ({detail}); the snapshot waits in the outbox and is published at the next sync"
    )]
    Unreachable {
        /// The store.
        url: String,
        /// The last error.
        detail: String,
    },
    /// The store refused: a person must fix a setting.
    #[error("the store {url} refused {doing} {key}: {detail} ({hint})")]
    Refused {
        /// The store.
        url: String,
        /// What was being done.
        doing: &'static str,
        /// The key.
        key: String,
        /// The store's message.
        detail: String,
        /// What to check.
        hint: &'static str,
    },
    /// Something in the store is not what the protocol wrote.
    #[error("the store {url} holds a damaged {key}: {detail}")]
    Damaged {
        /// The store.
        url: String,
        /// The key.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// A waiting snapshot's file changed on disk after it was written.
    #[error(
        "the waiting snapshot file {path} is damaged: its SHA-256 is {actual}, not {expected}; the snapshot is set aside and the next sync makes a new one"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The hash it was written with.
        expected: String,
        /// The hash it has now.
        actual: String,
    },
    /// The server refused a call of the publication (see [`crate::protocol`]).
    #[error("the server {url} refused the snapshot (HTTP {status}): {detail}")]
    Server {
        /// The server.
        url: String,
        /// Its HTTP status.
        status: u16,
        /// Its reason code, if it gave one.
        reason: Option<crate::protocol::Reason>,
        /// What it said.
        detail: String,
    },
    /// A local file (outbox, journal) could not be read or written.
    #[error("{doing} {path}: {source}")]
    Local {
        /// What was being done.
        doing: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl PublishError {
    /// Whether the snapshot should simply wait for the next attempt.
    pub fn is_transient(&self) -> bool {
        matches!(self, PublishError::Unreachable { .. })
    }
}

/// What publishing one snapshot did.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// The snapshot.
    pub snapshot_id: String,
    /// Data files uploaded, and their bytes.
    pub files_uploaded: usize,
    /// Bytes of data files uploaded.
    pub bytes_uploaded: u64,
    /// Data files already in the store (unchanged parts).
    pub files_skipped: usize,
    /// Bytes of data files not uploaded because they were already there.
    pub bytes_skipped: u64,
    /// Bytes of the manifest and the pointer.
    pub bytes_metadata: u64,
    /// Data types whose file was uploaded.
    pub changed: Vec<String>,
    /// Whether `latest` now names this snapshot (false when a newer one was already there).
    pub is_latest: bool,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl Published {
    /// All bytes sent to the store.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_uploaded + self.bytes_metadata
    }
}

impl Store {
    fn error(&self, doing: &'static str, key: &Key, e: object_store::Error) -> PublishError {
        if store::is_transient(&self.backend, &e) {
            return PublishError::Unreachable {
                url: self.url.clone(),
                detail: format!("{doing} {key}: {e}"),
            };
        }
        // The store's message, on one line (S3 answers with an XML document).
        let detail = e
            .to_string()
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ");
        let hint = match &e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
                if detail.contains("<Code>SignatureDoesNotMatch</Code>") =>
            {
                "the secret does not match the access key: check AWS_SECRET_ACCESS_KEY"
            }
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
                if detail.contains("<Code>InvalidAccessKeyId</Code>") =>
            {
                "the store does not know the access key: check AWS_ACCESS_KEY_ID (and that AWS_ENDPOINT is the store it belongs to)"
            }
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                "check the access key, secret and the bucket policy (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
            }
            object_store::Error::NotFound { .. } => {
                "check that the bucket in the store URL exists (and AWS_REGION / AWS_ENDPOINT)"
            }
            _ => "check the store URL and its settings",
        };
        PublishError::Refused {
            url: self.url.clone(),
            doing,
            key: key.to_string(),
            detail,
            hint,
        }
    }

    /// Reads an object whole.
    pub async fn get_bytes(&self, key: &str) -> Result<Option<bytes::Bytes>, PublishError> {
        let path = self.path(key);
        match self.inner.get(&path).await {
            Ok(r) => Ok(Some(
                r.bytes()
                    .await
                    .map_err(|e| self.error("reading", &path, e))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("reading", &path, e)),
        }
    }

    /// Streams object `key` into the file `to`, hashing as it goes, never holding the object
    /// in memory: refused before a byte is read when the store says it is not `expected`
    /// bytes long, and cut off as soon as more than that arrives. A file that was not
    /// written whole is removed.
    pub async fn fetch_to_file(
        &self,
        key: &str,
        to: &Path,
        expected: u64,
    ) -> Result<Fetched, PublishError> {
        use tokio::io::AsyncWriteExt;
        let path = self.path(key);
        let result = match self.inner.get(&path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(Fetched::Missing),
            Err(e) => return Err(self.error("reading", &path, e)),
        };
        if result.meta.size != expected {
            return Ok(Fetched::WrongSize(result.meta.size));
        }
        let local = |e: std::io::Error| PublishError::Local {
            doing: "writing",
            path: to.to_owned(),
            source: e,
        };
        let written = async {
            let mut file = tokio::fs::File::create(to).await.map_err(local)?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut stream = result.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.error("reading", &path, e))?;
                size += chunk.len() as u64;
                if size > expected {
                    return Ok(Fetched::WrongSize(size));
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(local)?;
            }
            if size != expected {
                return Ok(Fetched::WrongSize(size));
            }
            file.sync_all().await.map_err(local)?;
            Ok(Fetched::Written {
                sha256: snapshot::hex(&hasher.finalize()),
            })
        }
        .await;
        if !matches!(written, Ok(Fetched::Written { .. })) {
            let _ = std::fs::remove_file(to);
        }
        written
    }

    /// The company's `latest` pointer and the version to replace it conditionally.
    pub async fn latest(
        &self,
        company_id: &str,
    ) -> Result<Option<(Latest, UpdateVersion)>, PublishError> {
        let path = self.path(&snapshot::latest_key(company_id));
        let result = match self.inner.get(&path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error("reading", &path, e)),
        };
        let version = UpdateVersion {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        };
        let bytes = result
            .bytes()
            .await
            .map_err(|e| self.error("reading", &path, e))?;
        let latest: Latest = serde_json::from_slice(&bytes).map_err(|e| PublishError::Damaged {
            url: self.url.clone(),
            key: path.to_string(),
            detail: e.to_string(),
        })?;
        Ok(Some((latest, version)))
    }

    /// Points `latest` at `new` unless it already names a newer snapshot (a conditional
    /// write; see the module header). Returns whether it now names `new`. The server calls it
    /// when a connector commits a snapshot.
    pub async fn advance_latest(
        &self,
        company_id: &str,
        new: &Latest,
    ) -> Result<bool, PublishError> {
        let path = self.path(&snapshot::latest_key(company_id));
        let payload = serde_json::to_vec_pretty(new).expect("a pointer serialises");
        let mut lost_race = false;
        for _ in 0..10 {
            let current = self.latest(company_id).await?;
            let mode = match &current {
                Some((cur, _)) if cur.snapshot_id.as_str() >= new.snapshot_id.as_str() => {
                    if cur.snapshot_id != new.snapshot_id {
                        let (latest, this) = (&cur.snapshot_id, &new.snapshot_id);
                        if lost_race {
                            tracing::warn!(key = %path, "Another publisher moved latest.json to snapshot {latest}, newer than {this}, between our read and our conditional write; it stays latest ({this} is in the store, not latest).");
                        } else {
                            tracing::warn!(key = %path, "latest.json already names snapshot {latest}, newer than {this}; it stays latest ({this} is in the store, not latest).");
                        }
                    }
                    return Ok(cur.snapshot_id == new.snapshot_id);
                }
                Some((_, version)) => match self.backend {
                    Backend::Local(_) => PutMode::Overwrite,
                    Backend::Remote => PutMode::Update(version.clone()),
                },
                None => PutMode::Create,
            };
            crate::failpoint::hit("pointer-before");
            let put = self
                .inner
                .put_opts(
                    &path,
                    PutPayload::from(payload.clone()),
                    PutOptions::from(mode),
                )
                .await;
            match put {
                Ok(_) => {
                    crate::failpoint::hit("pointer-after");
                    return Ok(true);
                }
                Err(
                    object_store::Error::Precondition { .. }
                    | object_store::Error::AlreadyExists { .. },
                ) => {
                    lost_race = true;
                    tracing::info!(key = %path, "Another publisher moved the latest pointer first; reading it again.");
                }
                Err(e) => return Err(self.error("updating", &path, e)),
            }
        }
        Err(PublishError::Unreachable {
            url: self.url.clone(),
            detail: format!("{path} kept changing under ten conditional writes in a row"),
        })
    }

    /// Whether `key` is in the store with `size` bytes (`Some(true)`), missing (`None`), or
    /// there with another size (`Some(false)`: damaged, to be replaced by the right bytes).
    async fn present(&self, key: &str, size: u64) -> Result<Option<bool>, PublishError> {
        let path = self.path(key);
        match self.inner.head(&path).await {
            Ok(meta) if meta.size == size => Ok(Some(true)),
            Ok(meta) => {
                tracing::warn!(key = %path, bytes = meta.size, expected = size, "A data file in the store has the wrong size; uploading it again.");
                Ok(Some(false))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("checking", &path, e)),
        }
    }

    /// Whether a file of `size` bytes goes in parts.
    fn in_parts(&self, size: u64) -> bool {
        self.multipart.is_some() && size >= self.multipart_threshold
    }

    /// Starts a multipart upload and journals its id before anything else happens.
    async fn start_parts(&self, key: &str, outbox: &Outbox) -> Result<MultipartId, PublishError> {
        let mp = self
            .multipart
            .as_ref()
            .expect("only called for multipart stores");
        let path = self.path(key);
        crate::failpoint::hit("upload");
        let id = mp
            .create_multipart(&path)
            .await
            .map_err(|e| self.error("starting an upload of", &path, e))?;
        outbox.journal_upload(path.as_ref(), &id)?;
        Ok(id)
    }

    /// Uploads a whole file in one request: "create if absent", or replacing a damaged object.
    async fn put_whole(
        &self,
        local: &Path,
        entry: &FileEntry,
        replace: bool,
    ) -> Result<(), PublishError> {
        let path = self.path(&entry.key);
        crate::failpoint::hit("upload");
        let bytes = tokio::fs::read(local)
            .await
            .map_err(|source| PublishError::Local {
                doing: "reading",
                path: local.to_owned(),
                source,
            })?;
        check_hash(local, entry, &Sha256::digest(&bytes))?;
        if !replace {
            return self
                .create_once(&path, bytes.into())
                .await
                .map_err(|e| self.error("uploading", &path, e));
        }
        match self
            .inner
            .put_opts(
                &path,
                PutPayload::from(bytes),
                PutOptions::from(PutMode::Overwrite),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(self.error("uploading", &path, e)),
        }
    }

    /// Streams a large file to a store without a multipart API of its own (a local folder:
    /// written to a `…#N` file, renamed into place when complete).
    async fn put_streamed(&self, local: &Path, entry: &FileEntry) -> Result<(), PublishError> {
        let path = self.path(&entry.key);
        crate::failpoint::hit("upload");
        let mut upload = self
            .inner
            .put_multipart(&path)
            .await
            .map_err(|e| self.error("starting an upload of", &path, e))?;
        let sent = async {
            let mut hasher = Sha256::new();
            let mut chunks = read_chunks(local).await?;
            while let Some(buf) = chunks.next_chunk().await? {
                hasher.update(&buf);
                upload
                    .put_part(PutPayload::from(buf))
                    .await
                    .map_err(|e| self.error("uploading a part of", &path, e))?;
                crate::failpoint::hit("upload-part");
            }
            check_hash(local, entry, &hasher.finalize())
        }
        .await;
        match sent {
            Ok(()) => upload
                .complete()
                .await
                .map(|_| ())
                .map_err(|e| self.error("completing the upload of", &path, e)),
            Err(e) => {
                let _ = upload.abort().await;
                Err(e)
            }
        }
    }

    /// Sends a started multipart upload's parts and completes it; aborts it on failure.
    async fn send_parts(
        &self,
        local: &Path,
        entry: &FileEntry,
        id: &MultipartId,
        outbox: &Outbox,
    ) -> Result<(), PublishError> {
        let mp = self
            .multipart
            .as_ref()
            .expect("only called for multipart stores");
        let path = self.path(&entry.key);
        let sent = async {
            let mut hasher = Sha256::new();
            let mut chunks = read_chunks(local).await?;
            let mut parts = Vec::new();
            while let Some(buf) = chunks.next_chunk().await? {
                hasher.update(&buf);
                let part = mp
                    .put_part(&path, id, parts.len(), PutPayload::from(buf))
                    .await
                    .map_err(|e| self.error("uploading a part of", &path, e))?;
                parts.push(part);
                crate::failpoint::hit("upload-part");
            }
            check_hash(local, entry, &hasher.finalize())?;
            mp.complete_multipart(&path, id, parts)
                .await
                .map_err(|e| self.error("completing the upload of", &path, e))
        }
        .await;
        match sent {
            Ok(_) => outbox.forget_upload(id),
            Err(e) => {
                self.abort(&path, id, outbox).await;
                Err(e)
            }
        }
    }

    /// Aborts a multipart upload (best effort: a failure leaves it journalled for next time).
    async fn abort(&self, path: &Key, id: &MultipartId, outbox: &Outbox) {
        let Some(mp) = &self.multipart else { return };
        match mp.abort_multipart(path, id).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                if let Err(e) = outbox.forget_upload(id) {
                    tracing::warn!(error = %e, "Could not update the upload journal.");
                }
            }
            Err(e) => {
                tracing::warn!(key = %path, error = %e, "Could not abort a multipart upload; the next sync tries again.");
            }
        }
    }

    /// Aborts the multipart uploads a killed run journalled, and removes a local folder's
    /// half-written files under `company_id`.
    async fn clean_abandoned(&self, company_id: &str, outbox: &Outbox) -> Result<(), PublishError> {
        // S3: every upload still open under the company was left by a stopped run (one sync
        // per company at a time), journalled or not. Elsewhere: the journal.
        let mut abandoned = Vec::new();
        if let Some(listing) = &self.s3_uploads {
            match listing.list(&format!("{}/", self.path(company_id))).await {
                Ok(open) => abandoned.extend(open),
                Err(e) => {
                    tracing::warn!(error = %e, "Could not list the open multipart uploads; relying on the journal.");
                }
            }
        }
        abandoned.extend(outbox.journalled_uploads()?);
        abandoned.sort();
        abandoned.dedup();
        for (key, id) in abandoned {
            let Some(mp) = &self.multipart else {
                outbox.forget_upload(&id)?;
                continue;
            };
            let path = Key::from(key.as_str());
            match mp.abort_multipart(&path, &id).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    tracing::info!(key = %path, "Aborted a multipart upload left by an interrupted sync.");
                    outbox.forget_upload(&id)?;
                }
                Err(e) => return Err(self.error("aborting an upload of", &path, e)),
            }
        }
        if let Backend::Local(root) = &self.backend {
            remove_staged_files(&root.join(self.path(company_id).as_ref()))?;
        }
        Ok(())
    }

    /// Publishes one snapshot (the module header says how).
    pub async fn publish(
        &self,
        snap: &SnapshotDir,
        outbox: &Outbox,
        progress: &indicatif::ProgressBar,
    ) -> Result<Published, PublishError> {
        let started = Instant::now();
        let m = &snap.manifest;
        self.clean_abandoned(&m.company_id, outbox).await?;
        let mut report = Published {
            snapshot_id: m.snapshot_id.clone(),
            ..Published::default()
        };
        // 1. Which files the store lacks (an unchanged part's file is there already).
        let checked = futures::stream::iter(m.files().map(|(name, entry)| async move {
            Ok::<_, PublishError>((name, entry, self.present(&entry.key, entry.bytes).await?))
        }))
        .buffer_unordered(CONCURRENT_UPLOADS)
        .collect::<Vec<_>>()
        .await;
        let mut to_send = Vec::new();
        for result in checked {
            let (name, entry, present) = result?;
            if present != Some(true) {
                // `Some(false)`: there, but damaged; replaced.
                to_send.push((name, entry, present.is_some()));
            } else {
                report.files_skipped += 1;
                report.bytes_skipped += entry.bytes;
                progress.inc(entry.bytes);
            }
        }
        to_send.sort_by_key(|(name, entry, _)| (*name, entry.part.as_str()));
        // 2. Multipart uploads are started one after another, each id journalled before the
        //    next request: a stop at any later point leaves every open upload in the journal.
        let mut ids = std::collections::BTreeMap::new();
        for (_, entry, _) in to_send.iter().filter(|(_, e, _)| self.in_parts(e.bytes)) {
            match self.start_parts(&entry.key, outbox).await {
                Ok(id) => {
                    ids.insert(entry.key.as_str(), id);
                }
                Err(e) => {
                    for (key, id) in &ids {
                        self.abort(&self.path(key), id, outbox).await;
                    }
                    return Err(e);
                }
            }
        }
        // 3. Then every missing file is sent, several at a time.
        let ids = &ids;
        let sent = futures::stream::iter(to_send.iter().map(|(name, entry, replace)| async move {
            let local = snap.file(name, &entry.part);
            match ids.get(entry.key.as_str()) {
                Some(id) => self.send_parts(&local, entry, id, outbox).await?,
                None if matches!(self.backend, Backend::Local(_))
                    && entry.bytes >= self.multipart_threshold =>
                {
                    self.put_streamed(&local, entry).await?
                }
                None => self.put_whole(&local, entry, *replace).await?,
            }
            progress.inc(entry.bytes);
            Ok::<_, PublishError>(())
        }))
        .buffer_unordered(CONCURRENT_UPLOADS)
        .collect::<Vec<_>>()
        .await;
        sent.into_iter().collect::<Result<Vec<()>, _>>()?;
        for (name, entry, _) in &to_send {
            report.files_uploaded += 1;
            report.bytes_uploaded += entry.bytes;
            report.changed.push(name.to_string());
        }
        report.changed.sort();
        report.changed.dedup();
        // Every file the manifest names must be in the store before the manifest is.
        for (_, entry) in m.files() {
            let path = self.path(&entry.key);
            let meta = self
                .inner
                .head(&path)
                .await
                .map_err(|e| self.error("checking", &path, e))?;
            if meta.size != entry.bytes {
                return Err(PublishError::Damaged {
                    url: self.url.clone(),
                    key: path.to_string(),
                    detail: format!("{} bytes in the store, {} expected", meta.size, entry.bytes),
                });
            }
        }
        let manifest_bytes = m.to_json();
        let manifest_key = snapshot::manifest_key(&m.company_id, &m.snapshot_id);
        let path = self.path(&manifest_key);
        crate::failpoint::hit("manifest-before");
        self.create_once(&path, manifest_bytes.clone().into())
            .await
            .map_err(|e| self.error("writing", &path, e))?;
        crate::failpoint::hit("manifest-after");
        let latest = Latest {
            snapshot_id: m.snapshot_id.clone(),
            manifest_key,
            manifest_sha256: snapshot::hex(&Sha256::digest(&manifest_bytes)),
        };
        report.is_latest = self.advance_latest(&m.company_id, &latest).await?;
        report.bytes_metadata = manifest_bytes.len() as u64
            + serde_json::to_vec_pretty(&latest).map_or(0, |v| v.len() as u64);
        report.seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            snapshot = %m.snapshot_id,
            uploaded_files = report.files_uploaded,
            uploaded_bytes = report.bytes_uploaded,
            unchanged_files = report.files_skipped,
            is_latest = report.is_latest,
            seconds = report.seconds,
            "Published the snapshot."
        );
        Ok(report)
    }
}

/// A local file read in parts of [`PART_SIZE`] (at least one part, possibly empty).
struct Chunks {
    file: tokio::fs::File,
    path: PathBuf,
    sent_one: bool,
}

async fn read_chunks(path: &Path) -> Result<Chunks, PublishError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|source| PublishError::Local {
            doing: "reading",
            path: path.to_owned(),
            source,
        })?;
    Ok(Chunks {
        file,
        path: path.to_owned(),
        sent_one: false,
    })
}

impl Chunks {
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, PublishError> {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::with_capacity(PART_SIZE);
        (&mut self.file)
            .take(PART_SIZE as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|source| PublishError::Local {
                doing: "reading",
                path: self.path.clone(),
                source,
            })?;
        if buf.is_empty() && self.sent_one {
            return Ok(None);
        }
        self.sent_one = true;
        Ok(Some(buf))
    }
}

/// Fails when a local file's bytes no longer hash to the SHA-256 its key is named after.
fn check_hash(local: &Path, entry: &FileEntry, digest: &[u8]) -> Result<(), PublishError> {
    let actual = snapshot::hex(digest);
    if actual == entry.sha256 {
        Ok(())
    } else {
        Err(PublishError::Corrupt {
            path: local.to_owned(),
            expected: entry.sha256.clone(),
            actual,
        })
    }
}

/// Removes `…#N` files (a local store's unfinished writes) under `dir`.
fn remove_staged_files(dir: &Path) -> Result<(), PublishError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(PublishError::Local {
                doing: "listing",
                path: dir.to_owned(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            remove_staged_files(&path)?;
        } else if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            n.rsplit_once('#')
                .is_some_and(|(_, s)| s.parse::<u64>().is_ok())
        }) {
            tracing::info!(file = %path.display(), "Removed a file left half-written by an interrupted sync.");
            crate::files::remove_if_exists(&path).map_err(|source| PublishError::Local {
                doing: "removing",
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// A runtime for the store client (two workers: these machines have two cores).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime can be built")
}
