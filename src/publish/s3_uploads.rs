//! S3's ListMultipartUploads, which `object_store` does not offer: the multipart uploads still
//! open under a prefix, so that a sync can abort the ones a killed run left, including one
//! killed between S3 creating an upload and the journal recording its id.

use std::sync::Arc;

use object_store::ClientOptions;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};

/// What it takes to send the request ourselves, signed like object_store's own.
#[derive(Clone, Debug)]
pub struct S3Uploads {
    s3: Arc<AmazonS3>,
    /// `https://s3.REGION.amazonaws.com/BUCKET`, or the configured endpoint's equivalent.
    bucket_endpoint: String,
    region: String,
    client: HttpClient,
}

/// RFC 3986 encoding of a query value, as SigV4 signs it.
fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The text of every `<tag>…</tag>` in `xml`, XML entities decoded.
fn elements(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(open.as_str())
        .skip(1)
        .filter_map(|s| s.split(close.as_str()).next())
        .map(|s| {
            s.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&")
        })
        .collect()
}

impl S3Uploads {
    /// From the builder the store was made with.
    pub fn new(s3: Arc<AmazonS3>, builder: &AmazonS3Builder, bucket: &str) -> Option<Self> {
        let get = |k: AmazonS3ConfigKey| builder.get_config_value(&k).filter(|v| !v.is_empty());
        let region = get(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
        let virtual_hosted =
            get(AmazonS3ConfigKey::VirtualHostedStyleRequest).is_some_and(|v| v == "true");
        let bucket_endpoint = match (get(AmazonS3ConfigKey::Endpoint), virtual_hosted) {
            (Some(endpoint), true) => endpoint,
            (Some(endpoint), false) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
            (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        let options = ClientOptions::new().with_allow_http(bucket_endpoint.starts_with("http://"));
        let client = ReqwestConnector::default().connect(&options).ok()?;
        Some(S3Uploads {
            s3,
            bucket_endpoint,
            region,
            client,
        })
    }

    /// (key, upload id) of every open multipart upload whose key starts with `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, String)>, String> {
        let credential = self
            .s3
            .credentials()
            .get_credential()
            .await
            .map_err(|e| e.to_string())?;
        let mut found = Vec::new();
        let mut marker: Option<(String, String)> = None;
        // 1,000 uploads a page; a bound, not a loop forever on a misbehaving server.
        for _ in 0..100 {
            let mut url = format!(
                "{}?prefix={}&uploads=",
                self.bucket_endpoint,
                encode(prefix)
            );
            if let Some((key, id)) = &marker {
                url.push_str(&format!(
                    "&key-marker={}&upload-id-marker={}",
                    encode(key),
                    encode(id)
                ));
            }
            let mut request = http::Request::builder()
                .method("GET")
                .uri(&url)
                .body(HttpRequestBody::empty())
                .map_err(|e| e.to_string())?;
            AwsAuthorizer::new(&credential, "s3", &self.region)
                .try_authorize(&mut request, None)
                .map_err(|e| e.to_string())?;
            let response = self
                .client
                .execute(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response
                .into_body()
                .bytes()
                .await
                .map_err(|e| e.to_string())?;
            let xml = String::from_utf8_lossy(&body);
            if !status.is_success() {
                return Err(format!("listing open uploads answered {status}: {xml}"));
            }
            for upload in xml.split("<Upload>").skip(1) {
                let (keys, ids) = (elements(upload, "Key"), elements(upload, "UploadId"));
                if let (Some(key), Some(id)) = (keys.first(), ids.first()) {
                    found.push((key.clone(), id.clone()));
                }
            }
            let truncated = elements(&xml, "IsTruncated")
                .first()
                .is_some_and(|t| t == "true");
            let next = (
                elements(&xml, "NextKeyMarker").pop(),
                elements(&xml, "NextUploadIdMarker").pop(),
            );
            match (truncated, next) {
                (true, (Some(key), Some(id))) => marker = Some((key, id)),
                _ => break,
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded_as_sigv4_signs_them() {
        assert_eq!(encode("acme/data/x y"), "acme%2Fdata%2Fx%20y");
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
    }

    #[test]
    fn upload_listing_is_read_from_the_xml() {
        let xml = "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated><Upload><Key>p/a&amp;b</Key><UploadId>id1</UploadId></Upload><Upload><Key>p/c</Key><UploadId>id2</UploadId></Upload></ListMultipartUploadsResult>";
        let keys: Vec<_> = xml
            .split("<Upload>")
            .skip(1)
            .map(|u| elements(u, "Key"))
            .collect();
        assert_eq!(keys, [vec!["p/a&b".to_owned()], vec!["p/c".to_owned()]]);
        assert_eq!(elements(xml, "IsTruncated"), ["false"]);
    }
}
