//! A store URL opened as an `object_store` backend, and its errors sorted into "try again
//! later" and "fix this first".

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::multipart::MultipartStore;
use object_store::path::Path as Key;
use object_store::signer::Signer;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

use super::PublishError;

/// How to reach a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `file:///folder`, `s3://bucket/prefix` (AWS settings from the usual `AWS_*`
    /// environment variables), or `gs://`, `az://` with those cargo features.
    pub url: String,
    /// How long to keep retrying a transient failure (timeouts, 5xx, connection refused)
    /// before giving up and leaving the snapshot in the outbox.
    pub retry_timeout: Duration,
    /// Files at least this big are uploaded in parts.
    pub multipart_threshold: u64,
    /// Backend settings by `object_store`'s names (`aws_endpoint`, `aws_region`, …), applied
    /// over those from the environment.
    pub options: Vec<(String, String)>,
}

impl StoreConfig {
    /// A store at `url` with the default retry and multipart settings.
    pub fn new(url: impl Into<String>) -> Self {
        StoreConfig {
            url: url.into(),
            retry_timeout: Duration::from_secs(60),
            multipart_threshold: 16 * 1024 * 1024,
            options: Vec::new(),
        }
    }
}

/// Which kind of backend, for the few things that differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A local folder (its path): writes are a temporary file renamed into place.
    Local(PathBuf),
    /// An object store over HTTP (S3 and friends).
    Remote,
}

/// A backend, its multipart API if any, the key prefix, its kind, and S3's upload listing.
type Opened = (
    Arc<dyn ObjectStore>,
    Option<Arc<dyn MultipartStore>>,
    String,
    Backend,
    Option<super::s3_uploads::S3Uploads>,
    Option<Arc<dyn Signer>>,
);

/// An opened store: every key is under `prefix`.
#[derive(Clone)]
pub struct Store {
    /// The backend.
    pub(super) inner: Arc<dyn ObjectStore>,
    /// The same backend's multipart API, where it has one.
    pub(super) multipart: Option<Arc<dyn MultipartStore>>,
    prefix: Key,
    /// The URL as given (store URLs hold no secrets: credentials come from the environment).
    pub url: String,
    /// Its kind.
    pub backend: Backend,
    /// Files at least this big go in parts.
    pub multipart_threshold: u64,
    /// S3's list of open multipart uploads, for S3 stores.
    pub(super) s3_uploads: Option<super::s3_uploads::S3Uploads>,
    /// Pre-signs URLs, for stores that can (S3): the server hands them to connectors.
    pub signer: Option<Arc<dyn Signer>>,
    /// How long a transient failure is retried.
    retry_timeout: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

fn retry(timeout: Duration) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        // The timeout decides when to stop, not a count.
        max_retries: 1_000,
        retry_timeout: timeout,
    }
}

impl Store {
    /// Opens the store a URL names. Fails at once, naming the setting, on a URL it cannot use.
    pub fn open(config: &StoreConfig) -> Result<Self, PublishError> {
        let url = config.url.trim();
        let bad = |why: String| PublishError::BadUrl {
            url: url.to_owned(),
            why,
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            bad("it has no scheme: use file:///folder or s3://bucket/prefix".into())
        })?;
        let (store, multipart, prefix, backend, s3_uploads, signer): Opened = match scheme {
            "file" => {
                let folder = file_url_path(rest).map_err(bad)?;
                std::fs::create_dir_all(&folder).map_err(|e| {
                    bad(format!(
                        "cannot create the folder {}: {e}",
                        folder.display()
                    ))
                })?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(&folder)
                    .map_err(|e| bad(e.to_string()))?
                    .with_fsync(true);
                (
                    Arc::new(local),
                    None,
                    String::new(),
                    Backend::Local(folder),
                    None,
                    None,
                )
            }
            "s3" | "s3a" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("it names no bucket: s3://BUCKET/prefix".into()));
                }
                let mut builder = object_store::aws::AmazonS3Builder::from_env();
                for (key, value) in &config.options {
                    let key = key
                        .parse()
                        .map_err(|_| bad(format!("{key} is not an S3 setting")))?;
                    builder = builder.with_config(key, value);
                }
                use object_store::aws::AmazonS3ConfigKey as K;
                let has = |k: K| builder.get_config_value(&k).is_some_and(|v| !v.is_empty());
                // A flag reads back as "false" when unset: only a true one counts.
                let on = |k: K| {
                    builder.get_config_value(&k).is_some_and(|v| {
                        matches!(
                            v.to_ascii_lowercase().as_str(),
                            "1" | "true" | "on" | "yes" | "y"
                        )
                    })
                };
                // A role's credentials: web identity, a container's, or (on EC2, asked for
                // by naming the endpoint) the instance's; never the metadata endpoint by
                // default, which off EC2 is a long wait for nothing.
                let role = [
                    "AWS_WEB_IDENTITY_TOKEN_FILE",
                    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    "AWS_METADATA_ENDPOINT",
                ]
                .iter()
                .any(|v| std::env::var_os(v).is_some());
                let keys = has(K::AccessKeyId) && has(K::SecretAccessKey);
                if !(keys || on(K::SkipSignature) || role) {
                    return Err(bad(
                        "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_REGION), or on EC2 with an instance role AWS_METADATA_ENDPOINT=http://169.254.169.254".into(),
                    ));
                }
                let builder = builder
                    .with_bucket_name(bucket)
                    .with_retry(retry(config.retry_timeout))
                    .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
                let s3 = builder
                    .clone()
                    .build()
                    .map_err(|e| bad(format!("{e} (check the AWS_* settings)")))?;
                let s3 = Arc::new(s3);
                let listing = super::s3_uploads::S3Uploads::new(s3.clone(), &builder, bucket);
                (
                    s3.clone(),
                    Some(s3.clone()),
                    prefix.to_owned(),
                    Backend::Remote,
                    listing,
                    Some(s3),
                )
            }
            #[cfg(feature = "gcp")]
            "gs" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let gcs = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry(config.retry_timeout))
                    .build()
                    .map_err(|e| bad(format!("{e} (check the GOOGLE_* settings)")))?;
                let gcs = Arc::new(gcs);
                (
                    gcs.clone(),
                    Some(gcs.clone()),
                    prefix.to_owned(),
                    Backend::Remote,
                    None,
                    Some(gcs),
                )
            }
            #[cfg(feature = "azure")]
            "az" | "azure" | "abfs" => {
                let az = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry(config.retry_timeout))
                    .build()
                    .map_err(|e| bad(format!("{e} (check the AZURE_* settings)")))?;
                let prefix = rest.split_once('/').map(|(_, p)| p).unwrap_or("");
                let az = Arc::new(az);
                (
                    az.clone(),
                    Some(az.clone()),
                    prefix.to_owned(),
                    Backend::Remote,
                    None,
                    Some(az),
                )
            }
            other => {
                return Err(bad(format!(
                    "scheme {other}:// is not supported by this build: use file:// or s3:// \
                     (gs:// and az:// need the gcp and azure cargo features)"
                )));
            }
        };
        let prefix = Key::parse(prefix.trim_matches('/'))
            .map_err(|e| bad(format!("the prefix is not a valid object path: {e}")))?;
        Ok(Store {
            inner: store,
            multipart,
            prefix,
            url: url.to_owned(),
            backend,
            multipart_threshold: config.multipart_threshold,
            s3_uploads,
            signer,
            retry_timeout: config.retry_timeout,
        })
    }

    /// Writes an object that is written once and never changes (a content-addressed data
    /// file, a manifest): one already there is the same object. The store client does not
    /// retry such a write when its connection breaks (it cannot tell whether the write took),
    /// but an object written once is safe to send again: a transient failure is retried here,
    /// with backoff, for the store's retry time.
    pub(super) async fn create_once(
        &self,
        path: &object_store::path::Path,
        bytes: bytes::Bytes,
    ) -> Result<(), object_store::Error> {
        let started = std::time::Instant::now();
        let mut wait = Duration::from_millis(200);
        loop {
            let sent = self
                .inner
                .put_opts(
                    path,
                    object_store::PutPayload::from(bytes.clone()),
                    object_store::PutOptions::from(object_store::PutMode::Create),
                )
                .await;
            match sent {
                Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => return Ok(()),
                Err(e)
                    if is_transient(&self.backend, &e)
                        && started.elapsed() + wait < self.retry_timeout =>
                {
                    tracing::info!(key = %path, error = %e, wait_ms = wait.as_millis() as u64, "A write to the store failed; sending it again.");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(15));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The full object path of `key` (a `/`-separated key below the store's prefix).
    pub fn path(&self, key: &str) -> Key {
        if self.prefix.as_ref().is_empty() {
            Key::from(key)
        } else {
            Key::from(format!("{}/{key}", self.prefix))
        }
    }

    /// The raw backend, for readers (verification, the server).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.inner.clone()
    }
}

/// The folder of a `file://` URL's remainder (after `file://`).
fn file_url_path(rest: &str) -> Result<PathBuf, String> {
    file_url_to_path(rest, cfg!(windows)).map(PathBuf::from)
}

/// `file://` URL remainder → path, the Windows way (`/C:/x` → `C:\x`, `server/share` →
/// `\\server\share`) or the Unix way; `%XX` escapes decoded.
fn file_url_to_path(rest: &str, windows: bool) -> Result<String, String> {
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    if rest.is_empty() || rest == "/" {
        return Err("it names no folder: file:///absolute/folder".into());
    }
    let decoded = percent_decode(rest)?;
    if windows {
        let unc = decoded.trim_start_matches('/');
        let drive = unc.as_bytes();
        if drive.len() >= 2 && drive[0].is_ascii_alphabetic() && drive[1] == b':' {
            return Ok(unc.replace('/', "\\"));
        }
        // file://server/share/… or file:////server/share/…: a network share.
        if !decoded.starts_with('/') || decoded.starts_with("//") {
            return Ok(format!("\\\\{}", unc.replace('/', "\\")));
        }
        return Err(format!(
            "{decoded} is not a Windows folder: file:///C:/folder or file://server/share/folder"
        ));
    }
    if !decoded.starts_with('/') {
        return Err(format!(
            "the folder {decoded} is not absolute (or names a remote host): file:///absolute/folder"
        ));
    }
    Ok(decoded)
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{text} has a % that is not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text} decodes to invalid UTF-8"))
}

/// The `file://` URL of a local folder.
pub fn file_url(folder: &std::path::Path) -> String {
    path_to_file_url(&folder.to_string_lossy(), cfg!(windows))
}

fn path_to_file_url(path: &str, windows: bool) -> String {
    let encode = |p: &str| {
        p.replace('%', "%25")
            .replace(' ', "%20")
            .replace('#', "%23")
            .replace('?', "%3F")
    };
    if !windows {
        return format!("file://{}", encode(path));
    }
    let path = path
        .strip_prefix(r"\\?\UNC\")
        .map(|unc| format!(r"\\{unc}"))
        .unwrap_or_else(|| path.strip_prefix(r"\\?\").unwrap_or(path).to_owned());
    match path.strip_prefix(r"\\") {
        Some(unc) => format!("file://{}", encode(&unc.replace('\\', "/"))),
        None => format!("file:///{}", encode(&path.replace('\\', "/"))),
    }
}

/// Whether an error from the store is worth retrying later (the network, the server being
/// down or slow), as opposed to one a person must fix (credentials, a missing bucket, a bad
/// setting), which fails the sync at once.
pub fn is_transient(backend: &Backend, error: &object_store::Error) -> bool {
    // A local folder does not come and go like a network: permission denied, a full disk or a
    // file system without hard links need a person.
    if let Backend::Local(_) = backend {
        return false;
    }
    use object_store::Error as E;
    match error {
        E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::UnknownConfigurationKey { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. } => false,
        // Writing: the bucket (or container) is missing.
        E::NotFound { .. } => false,
        E::Generic { source, .. } => {
            // A 4xx answer other than a timeout or throttling is a request the store will
            // never accept (object_store names the status only in its message).
            // A redirect means the region or endpoint is wrong.
            let text = source.to_string();
            let client_error = (text.contains("status code: 4") || text.contains("status code: 3"))
                && !text.contains("status code: 408")
                && !text.contains("status code: 429");
            !client_error && !text.contains("redirect")
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_go_under_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::new(file_url(dir.path()))).unwrap();
        assert_eq!(store.path("acme/latest.json").as_ref(), "acme/latest.json");
        assert_eq!(store.backend, Backend::Local(dir.path().to_owned()));
    }

    #[test]
    fn file_urls_round_trip_on_both_platforms() {
        for (path, url, windows) in [
            ("/home/ann/My Data", "file:///home/ann/My%20Data", false),
            (
                r"C:\Users\Ann\My Data",
                "file:///C:/Users/Ann/My%20Data",
                true,
            ),
            (r"\\server\share\sage", "file://server/share/sage", true),
        ] {
            assert_eq!(path_to_file_url(path, windows), url);
            let rest = url.strip_prefix("file://").unwrap();
            assert_eq!(file_url_to_path(rest, windows).unwrap(), path, "{url}");
        }
        // Verbatim Windows paths, and the four-slash form of a share.
        assert_eq!(path_to_file_url(r"\\?\C:\x", true), "file:///C:/x");
        assert_eq!(
            path_to_file_url(r"\\?\UNC\srv\sh\x", true),
            "file://srv/sh/x"
        );
        assert_eq!(file_url_to_path("//srv/sh/x", true).unwrap(), r"\\srv\sh\x");
        assert!(file_url_to_path("host/x", false).is_err());
        assert!(file_url_to_path("/a%2", false).is_err());
    }

    #[test]
    fn bad_urls_say_what_to_write() {
        for (url, says) in [
            ("/tmp/x", "no scheme"),
            ("file://relative/x", "not absolute"),
            ("s3:///prefix", "no bucket"),
            ("ftp://host/x", "ftp:// is not supported"),
        ] {
            let e = Store::open(&StoreConfig::new(url)).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(url), "{url}: {e}");
        }
    }
}
