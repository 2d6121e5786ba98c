//! S3 backend (aws-sdk-s3). Small objects go up in one PUT; streamed ones as a
//! multipart upload with a bounded number of parts in flight, aborted on any failure.
//! The SDK's standard retry mode retries transient errors with backoff, boundedly.
//! Credentials come from the SDK's own chain (aws-config): environment, profiles,
//! web identity, ECS and EC2 instance metadata.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, DefaultRetention, Delete,
    ObjectIdentifier, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockRetentionMode, ObjectLockRule,
    VersioningConfiguration,
};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{
    BodyReceiver, LockMode, ObjectKey, ObjectLock, ObjectMeta, ObjectVersion, PutMode, Refused, Result, Storage,
    StorageError, Versioning,
};
use crate::config::RepositoryConfig;

/// The credential chain, primed with what it answered at start-up: the first ask
/// gets those, later ones (after the SDK's cache saw them expire) go to the chain.
#[derive(Debug)]
struct Primed {
    first: std::sync::Mutex<Option<aws_credential_types::Credentials>>,
    chain: aws_credential_types::provider::SharedCredentialsProvider,
}

impl aws_credential_types::provider::ProvideCredentials for Primed {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let first = self.first.lock().ok().and_then(|mut f| f.take());
        match first {
            Some(c) => aws_credential_types::provider::future::ProvideCredentials::ready(Ok(c)),
            None => self.chain.provide_credentials(),
        }
    }
}

/// S3 allows at most 10 000 parts of at least 5 MiB (but the last).
const MIN_PART_SIZE: usize = 5 << 20;
const DEFAULT_PART_SIZE: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 2;
/// 1000 parts of 8 MiB, then 1000 of 16 MiB, …: about 8 TiB within 10 000 parts.
const PARTS_PER_SIZE: usize = 1000;
const DELETE_BATCH: usize = 1000;

#[derive(Debug, Clone)]
pub struct S3Storage {
    client: Client,
    bucket: String,
    prefix: String,
    endpoint: String,
    part_size: usize,
    /// Attempts per request (`s3_max_attempts`): the SDK's for a request, ours for a
    /// body that breaks off while it is read (the SDK does not retry those).
    attempts: u32,
}

impl S3Storage {
    /// Build a client from the repository settings and the AWS credential chain
    /// (aws-config): the `AWS_*` variables, the shared config and credentials files
    /// with the repository's `profile` (or `AWS_PROFILE`), web identity (EKS IRSA),
    /// ECS and EC2 instance metadata, with assume-role where a profile says so.
    /// Credentials are refreshed by the SDK while a long backup runs. They are resolved
    /// once here, so a missing one is a configuration error before any work starts.
    pub async fn connect(repo: &RepositoryConfig, bucket: &str, prefix: &str) -> anyhow::Result<Self> {
        use aws_config::meta::region::RegionProviderChain;
        use aws_credential_types::provider::ProvideCredentials;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        // The region never comes from instance metadata: pgdr asks nothing of the
        // network but the endpoint it is given.
        let profile_region = {
            let mut b = aws_config::profile::ProfileFileRegionProvider::builder();
            if let Some(p) = &repo.profile {
                b = b.profile_name(p);
            }
            b.build()
        };
        let region = RegionProviderChain::first_try(repo.region.clone().map(Region::new))
            .or_else(aws_config::environment::EnvironmentVariableRegionProvider::new())
            .or_else(profile_region)
            .or_else(Region::new("us-east-1"))
            .region()
            .await
            .unwrap_or_else(|| Region::new("us-east-1"));
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(region.clone());
        if let Some(p) = &repo.profile {
            loader = loader.profile_name(p);
        }
        let sdk = loader.load().await;
        let chain = sdk
            .credentials_provider()
            .ok_or_else(|| crate::usage!("S3 credentials are missing: no AWS credential provider could be set up"))?;
        let first = match chain.provide_credentials().await {
            Ok(c) => c,
            Err(e) => {
                // Only the error's own line: a credential_process helper's output
                // (carried in its source chain) is not repeated.
                tracing::debug!("credential chain: {}", DisplayErrorContext(&e));
                return Err(crate::usage!(
                    "S3 credentials are missing: none in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, {}, web identity or instance metadata ({e}) — set them, or name a profile with [repository] profile",
                    match &repo.profile {
                        Some(p) => format!("profile {p:?}"),
                        None => "the default profile".to_string(),
                    }
                ));
            }
        };
        // The client starts with the credentials just resolved instead of asking the
        // chain again (an instance-metadata or STS round trip per wal-push); it asks
        // the chain when they expire, and refreshes them from then on.
        let primed = aws_credential_types::provider::SharedCredentialsProvider::new(Primed {
            first: std::sync::Mutex::new(Some(first)),
            chain,
        });
        let endpoint = repo.endpoint.clone().or_else(|| env("AWS_ENDPOINT_URL"));
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk)
            .credentials_provider(primed)
            .force_path_style(repo.force_path_style)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(repo.s3_max_attempts)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(10)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(repo.s3_timeout_seconds))
                    .build(),
            );
        if let Some(endpoint) = &endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        if let Some(ca_file) = &repo.ca_file {
            builder = builder.http_client(private_ca_client(ca_file)?);
        }
        let part_size = repo
            .s3_part_size
            .map(|s| s as usize)
            .unwrap_or(DEFAULT_PART_SIZE)
            .max(MIN_PART_SIZE);
        Ok(S3Storage {
            client: Client::from_conf(builder.build()),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: endpoint.unwrap_or_else(|| format!("AWS {region}")),
            part_size,
            attempts: repo.s3_max_attempts.max(1),
        })
    }

    fn get_request(&self, key: &ObjectKey) -> aws_sdk_s3::operation::get_object::builders::GetObjectFluentBuilder {
        self.client.get_object().bucket(&self.bucket).key(self.full_key(key))
    }

    fn full_key(&self, key: &ObjectKey) -> String {
        format!("{}/{}", self.prefix, key.as_str())
    }

    fn relative(&self, full: &str) -> Option<String> {
        full.strip_prefix(&self.prefix)?.strip_prefix('/').map(str::to_string)
    }

    /// Turn an SDK error into the storage contract's variants, with a message that
    /// names the endpoint and bucket and says what to check.
    fn map_err<E>(&self, op: &str, key: &str, err: SdkError<E>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let place = format!("s3://{}/{} at {}", self.bucket, self.prefix, self.endpoint);
        match &err {
            SdkError::DispatchFailure(_) if untrusted_certificate(&err) => {
                return StorageError::Unreachable(format!(
                    "the S3 endpoint for {place} presented a certificate pgdr does not trust ({}) — if a private CA signed it, set [repository] ca_file to that CA's PEM file",
                    DisplayErrorContext(&err)
                ));
            }
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                return StorageError::Unreachable(format!(
                    "cannot reach the S3 endpoint for {place}: {} — check that the server is up and [repository] endpoint",
                    DisplayErrorContext(&err)
                ));
            }
            SdkError::ResponseError(_) => {
                return StorageError::Transient(format!(
                    "{op} {key}: unreadable reply from {place}: {}",
                    DisplayErrorContext(&err)
                ));
            }
            _ => {}
        }
        let status = err.raw_response().map(|r| r.status().as_u16());
        // A reply without a body (HEAD) has no S3 error code: name the HTTP status.
        let code = err
            .code()
            .map(str::to_string)
            .or_else(|| status.map(|s| format!("HTTP {s}")))
            .unwrap_or_default();
        let message = err.message().unwrap_or("").to_string();
        match (code.as_str(), status) {
            ("NoSuchBucket", _) => StorageError::Unreachable(format!(
                "the bucket {} does not exist at {} — create it or fix [repository] url",
                self.bucket, self.endpoint
            )),
            ("NoSuchKey" | "NotFound", _) | (_, Some(404)) => StorageError::NotFound(key.to_string()),
            ("PreconditionFailed" | "ConditionalRequestConflict", _) | (_, Some(412)) => {
                StorageError::AlreadyExists(key.to_string())
            }
            ("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch", _) | (_, Some(403)) => {
                StorageError::Unreachable(format!(
                    "access to {place} was denied ({code}) — check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy"
                ))
            }
            ("SlowDown" | "RequestTimeout" | "InternalError", _) | (_, Some(500 | 502 | 503 | 504)) => {
                StorageError::Transient(format!("{op} {key} on {place}: {code} {message} (retries exhausted)"))
            }
            // A service error says what it is in its code and message; the rest (the
            // raw response) is for debugging, not for the DBA's one line.
            (c, _) if !c.is_empty() => StorageError::Permanent(format!("{op} {key} on {place}: {c}: {message}")),
            _ => StorageError::Permanent(format!("{op} {key} on {place}: {}", DisplayErrorContext(&err))),
        }
    }

    async fn put_once(&self, key: &ObjectKey, data: Bytes, mode: PutMode) -> Result<()> {
        let full = self.full_key(key);
        let md5 = md5_hex(&data);
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .body(ByteStream::from(data));
        if mode == PutMode::CreateNew {
            req = req.if_none_match("*");
        }
        let out = req.send().await.map_err(|e| self.map_err("PUT", key.as_str(), e))?;
        // Damaged on the way to a store that does not check what it was sent: say so
        // (the caller's object is not what it sent; wal-push replaces it, a backup fails).
        if let Some(held) = etag_differs(
            out.e_tag(),
            out.server_side_encryption(),
            out.sse_customer_algorithm(),
            &md5,
        ) {
            return Err(StorageError::Transient(format!(
                "PUT {key}: the store holds other bytes than were sent (ETag {held}, MD5 {md5}) — damaged on the way"
            )));
        }
        Ok(())
    }

    async fn multipart(&self, key: &ObjectKey, parts: PartReader<'_>, mode: PutMode) -> Result<u64> {
        let full = self.full_key(key);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .send()
            .await
            .map_err(|e| self.map_err("CreateMultipartUpload", key.as_str(), e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StorageError::Permanent("S3 returned no upload id".into()))?
            .to_string();
        let result = self.upload_parts(key, &full, &upload_id, parts, mode).await;
        if result.is_err() {
            // Best effort: the upload is invisible either way; this frees its storage.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &ObjectKey,
        full: &str,
        upload_id: &str,
        mut reader: PartReader<'_>,
        mode: PutMode,
    ) -> Result<u64> {
        let mut in_flight: JoinSet<Result<CompletedPart>> = JoinSet::new();
        let mut parts = Vec::new();
        let mut total = 0u64;
        let mut number = 0i32;
        loop {
            // A slot first, then the next part: an upload holds at most
            // PARTS_IN_FLIGHT parts, not one more being filled beside them (a backup
            // with two jobs peaked at 66 MiB on S3 that way).
            while in_flight.len() >= PARTS_IN_FLIGHT {
                parts.push(join_part(in_flight.join_next().await)?);
            }
            let Some(part) = reader.next_part(number).await? else {
                break;
            };
            number += 1;
            total += part.len() as u64;
            let this = self.clone();
            let key = key.clone();
            let full = full.to_string();
            let upload_id = upload_id.to_string();
            in_flight.spawn(async move {
                let sent = part.clone();
                let md5 = tokio::task::spawn_blocking(move || md5_hex(&sent))
                .await
                .map_err(|e| StorageError::Permanent(format!("hashing a part failed: {e}")))?;
                // A part damaged on the way to a store that does not check the
                // checksum it was sent (moto, some S3-compatible servers) is sent again
                // once, then the upload fails: never a complete object with a bad part.
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let out = this
                        .client
                        .upload_part()
                        .bucket(&this.bucket)
                        .key(&full)
                        .upload_id(&upload_id)
                        .part_number(number)
                        .checksum_algorithm(ChecksumAlgorithm::Crc32)
                        .body(ByteStream::from(part.clone()))
                        .send()
                        .await
                        .map_err(|e| this.map_err("UploadPart", key.as_str(), e))?;
                    if let Some(held) = part_differs(&out, &md5) {
                        let why = format!(
                            "UploadPart {key} part {number}: the store holds other bytes than were sent (ETag {held}, MD5 of the part {md5}) — damaged on the way"
                        );
                        if attempt < 2 {
                            tracing::warn!("{why}; sending it again");
                            continue;
                        }
                        return Err(StorageError::Transient(why));
                    }
                    return Ok(CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                        .build());
                }
            });
        }
        while let Some(done) = in_flight.join_next().await {
            parts.push(join_part(Some(done))?);
        }
        parts.sort_by_key(|p| p.part_number());
        let mut req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
        if mode == PutMode::CreateNew {
            req = req.if_none_match("*");
        }
        req.send()
            .await
            .map_err(|e| self.map_err("CompleteMultipartUpload", key.as_str(), e))?;
        Ok(total)
    }
}

/// The ETag a store answered for a part, when it shows the store holds other bytes
/// than those whose MD5 is `md5`. A plain S3 ETag is the MD5 of what was received;
/// with SSE-KMS or SSE-C it is not (then nothing can be told from it, as rclone also
/// reasons), nor when it is not 32 hex digits.
fn part_differs(out: &aws_sdk_s3::operation::upload_part::UploadPartOutput, md5: &str) -> Option<String> {
    etag_differs(
        out.e_tag(),
        out.server_side_encryption(),
        out.sse_customer_algorithm(),
        md5,
    )
}

fn etag_differs(
    etag: Option<&str>,
    sse: Option<&aws_sdk_s3::types::ServerSideEncryption>,
    sse_c: Option<&str>,
    md5: &str,
) -> Option<String> {
    let etag = etag?.trim_matches('"').to_ascii_lowercase();
    let kms = sse.is_some_and(|s| s.as_str().starts_with("aws:kms"));
    let plain_md5 = etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit());
    (plain_md5 && !kms && sse_c.is_none() && etag != md5).then_some(etag)
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

/// Cuts a body into parts of `part_size` bytes (the last may be shorter).
struct PartReader<'a> {
    body: &'a mut BodyReceiver,
    buf: BytesMut,
    part_size: usize,
    ended: bool,
}

impl PartReader<'_> {
    /// The next part, `done` parts having been cut already. Parts double in size
    /// every `PARTS_PER_SIZE` parts, so small objects use little memory and huge ones
    /// stay within S3's 10 000 parts.
    async fn next_part(&mut self, done: i32) -> Result<Option<Bytes>> {
        let part_size = self.part_size << (done as usize / PARTS_PER_SIZE).min(10);
        while !self.ended && self.buf.len() < part_size {
            match self.body.next().await? {
                Some(data) => self.buf.extend_from_slice(&data),
                None => self.ended = true,
            }
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let take = self.buf.len().min(part_size);
        Ok(Some(self.buf.split_to(take).freeze()))
    }
}

fn join_part(
    joined: Option<std::result::Result<Result<CompletedPart>, tokio::task::JoinError>>,
) -> Result<CompletedPart> {
    match joined {
        Some(Ok(part)) => part,
        Some(Err(e)) => Err(StorageError::Permanent(format!("upload task failed: {e}"))),
        None => Err(StorageError::Permanent("upload task vanished".into())),
    }
}

fn to_utc(t: Option<&aws_smithy_types::DateTime>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos()))
}

/// Does a `Content-Range: bytes START-END/TOTAL` reply start at `offset`?
fn starts_at(range: &str, offset: u64) -> bool {
    range
        .strip_prefix("bytes ")
        .and_then(|r| r.split_once('-'))
        .and_then(|(start, _)| start.trim().parse::<u64>().ok())
        == Some(offset)
}

#[async_trait]
impl Storage for S3Storage {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    async fn put(&self, key: &ObjectKey, data: Bytes, mode: PutMode) -> Result<()> {
        self.put_once(key, data, mode).await
    }

    async fn put_stream(&self, key: &ObjectKey, mut body: BodyReceiver, mode: PutMode) -> Result<u64> {
        // Buffer up to one part: a small object goes up as a single PUT.
        let mut buf = BytesMut::new();
        while buf.len() <= self.part_size {
            match body.next().await? {
                Some(data) => buf.extend_from_slice(&data),
                None => {
                    let size = buf.len() as u64;
                    self.put_once(key, buf.freeze(), mode).await?;
                    return Ok(size);
                }
            }
        }
        let reader = PartReader {
            body: &mut body,
            buf,
            part_size: self.part_size,
            ended: false,
        };
        self.multipart(key, reader, mode).await
    }

    /// One read. A body that breaks off or fails its checksum on the way is
    /// `Interrupted`: `storage::retry` (which `storage::open` wraps this in) reads it
    /// again.
    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        let out = self
            .get_request(key)
            .send()
            .await
            .map_err(|e| self.map_err("GET", key.as_str(), e))?;
        let total = out.content_length().map(|n| n.max(0) as usize);
        let mut body = out.body;
        let mut data = bytes::BytesMut::with_capacity(total.unwrap_or(0).min(64 << 20));
        loop {
            match body.next().await {
                None => return Ok(data.freeze()),
                Some(Ok(piece)) => data.extend_from_slice(&piece),
                // All of it arrived and still failed: the checksum, not the connection.
                Some(Err(e)) => {
                    return Err(StorageError::Interrupted {
                        why: e.to_string(),
                        whole: total == Some(data.len()),
                    });
                }
            }
        }
    }

    async fn get_stream(&self, key: &ObjectKey) -> Result<mpsc::Receiver<Result<Bytes>>> {
        let out = self
            .get_request(key)
            .send()
            .await
            .map_err(|e| self.map_err("GET", key.as_str(), e))?;
        let (tx, rx) = mpsc::channel(8);
        let total = out.content_length().map(|n| n.max(0) as u64);
        let etag = out.e_tag().map(str::to_string);
        let mut body = out.body;
        let what = format!("reading {key} from {}", self.describe());
        let this = self.clone();
        let key = key.clone();
        tokio::spawn(async move {
            // A body that breaks off is read on from where it stopped (a range of the
            // same version: If-Match on its ETag), up to `attempts` times.
            let (mut offset, mut attempt) = (0u64, 1);
            loop {
                match body.next().await {
                    None => return,
                    Some(Ok(data)) => {
                        offset += data.len() as u64;
                        if tx.send(Ok(data)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) if attempt < this.attempts && total.is_some_and(|t| offset < t) => {
                        tracing::warn!("{what} broke off at byte {offset} ({e}); reading on from there");
                        tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
                        attempt += 1;
                        let mut req = this.get_request(&key).range(format!("bytes={offset}-"));
                        if let Some(etag) = &etag {
                            req = req.if_match(etag);
                        }
                        // Only the rest of the same object will do: a 206 from `offset`.
                        // Anything else — gone (404), replaced (412), a server that
                        // ignored the range — is a read that failed, never "absent".
                        let resumed = match req.send().await {
                            Ok(out) if out.content_range().is_some_and(|r| starts_at(r, offset)) => Ok(out.body),
                            Ok(_) => Err(format!("{what}: the server did not resume at byte {offset}")),
                            Err(e) => Err(format!(
                                "{what}: resuming at byte {offset}: {}",
                                this.map_err("GET", key.as_str(), e)
                            )),
                        };
                        match resumed {
                            Ok(rest) => body = rest,
                            Err(why) => {
                                let _ = tx.send(Err(StorageError::Transient(why))).await;
                                return;
                            }
                        }
                    }
                    // Every byte was handed on and the checksum failed: the stored
                    // object (a flip on the way is caught by the reader's
                    // authentication first, or by this, and either way is damage to
                    // what was read — the caller may read it again).
                    Some(Err(e)) if total.is_some_and(|t| offset >= t) => {
                        let _ = tx
                            .send(Err(StorageError::Corrupt(format!(
                                "{what}: all {offset} bytes arrived but fail the store's checksum ({e})"
                            ))))
                            .await;
                        return;
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(Err(StorageError::Transient(format!("{what}: {e}")))).await;
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.clone(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                modified: to_utc(out.last_modified()),
            })),
            Err(e) => match self.map_err("HEAD", key.as_str(), e) {
                StorageError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let full_prefix = format!("{}/{}", self.prefix, prefix);
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.map_err("LIST", prefix, e))?;
            for object in page.contents() {
                let Some(rel) = object.key().and_then(|k| self.relative(k)) else {
                    continue;
                };
                let Ok(key) = ObjectKey::new(rel) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key,
                    size: object.size().unwrap_or(0).max(0) as u64,
                    modified: to_utc(object.last_modified()),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn versioning(&self) -> Result<Option<Versioning>> {
        let versioning = self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| self.map_err("GetBucketVersioning", &self.bucket, e))?;
        if versioning.status() != Some(&BucketVersioningStatus::Enabled) {
            return Ok(None);
        }
        let lock = match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => out
                .object_lock_configuration()
                .filter(|c| c.object_lock_enabled() == Some(&ObjectLockEnabled::Enabled))
                .and_then(|c| c.rule())
                .and_then(|r| r.default_retention())
                .and_then(|d| {
                    let days = match (d.days(), d.years()) {
                        (Some(days), _) => days,
                        (None, Some(years)) => years.saturating_mul(365),
                        _ => return None,
                    };
                    Some(ObjectLock {
                        mode: match d.mode() {
                            Some(ObjectLockRetentionMode::Governance) => LockMode::Governance,
                            _ => LockMode::Compliance,
                        },
                        days: days.max(0) as u32,
                    })
                }),
            // No lock configuration on this bucket.
            Err(e) if e.code() == Some("ObjectLockConfigurationNotFoundError") => None,
            Err(e) => return Err(self.map_err("GetObjectLockConfiguration", &self.bucket, e)),
        };
        Ok(Some(Versioning { lock }))
    }

    async fn versions(&self, prefix: &str) -> Result<Vec<ObjectVersion>> {
        let full_prefix = format!("{}/{}", self.prefix, prefix);
        let mut out = Vec::new();
        let (mut key_marker, mut version_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| self.map_err("ListObjectVersions", prefix, e))?;
            let mut add = |key: Option<&str>, version: Option<&str>, latest: Option<bool>, marker: bool| {
                let (Some(key), Some(version)) = (key.and_then(|k| self.relative(k)), version) else {
                    return;
                };
                if let Ok(key) = ObjectKey::new(key) {
                    out.push(ObjectVersion {
                        key,
                        version_id: version.to_string(),
                        is_latest: latest.unwrap_or(false),
                        delete_marker: marker,
                    });
                }
            };
            for v in page.versions() {
                add(v.key(), v.version_id(), v.is_latest(), false);
            }
            for m in page.delete_markers() {
                add(m.key(), m.version_id(), m.is_latest(), true);
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() {
                break;
            }
        }
        Ok(out)
    }

    async fn delete_version(&self, key: &ObjectKey, version: &str) -> Result<Option<String>> {
        let full = self.full_key(key);
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .version_id(version)
            .send()
            .await
        {
            Ok(_) => Ok(None),
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(403) => Ok(Some(format!(
                "{} {}",
                e.code().unwrap_or("AccessDenied"),
                e.message().unwrap_or("locked")
            ))),
            Err(e) => match self.map_err("DeleteObject", key.as_str(), e) {
                StorageError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn enable_object_lock(&self, lock: &ObjectLock) -> Result<()> {
        let days = i32::try_from(lock.days)
            .ok()
            .filter(|d| *d > 0)
            .ok_or_else(|| StorageError::Permanent(format!("an Object Lock of {} days is not possible", lock.days)))?;
        self.client
            .put_bucket_versioning()
            .bucket(&self.bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.map_err("PutBucketVersioning", &self.bucket, e))?;
        let retention = DefaultRetention::builder()
            .mode(match lock.mode {
                LockMode::Compliance => ObjectLockRetentionMode::Compliance,
                LockMode::Governance => ObjectLockRetentionMode::Governance,
            })
            .days(days)
            .build();
        let config = ObjectLockConfiguration::builder()
            .object_lock_enabled(ObjectLockEnabled::Enabled)
            .rule(ObjectLockRule::builder().default_retention(retention).build())
            .build();
        self.client
            .put_object_lock_configuration()
            .bucket(&self.bucket)
            .object_lock_configuration(config)
            .send()
            .await
            .map_err(|e| match self.map_err("PutObjectLockConfiguration", &self.bucket, e) {
                StorageError::Permanent(why) => StorageError::Permanent(format!(
                    "the bucket {} refused Object Lock ({why}) — a bucket must be created with Object Lock, or be versioned and empty, for it to be turned on",
                    self.bucket
                )),
                other => other,
            })?;
        Ok(())
    }

    async fn delete(&self, keys: &[ObjectKey]) -> Result<Vec<Refused>> {
        let mut refused = Vec::new();
        for batch in keys.chunks(DELETE_BATCH) {
            let objects = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(self.full_key(k)).build())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| StorageError::Permanent(format!("bad delete request: {e}")))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| StorageError::Permanent(format!("bad delete request: {e}")))?;
            // Throttling (SlowDown) is retried by the SDK; keep going after a pause if
            // it persists (pgbackrest#2040), boundedly.
            let mut pause = Duration::from_secs(1);
            let out = loop {
                match self
                    .client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(delete.clone())
                    .send()
                    .await
                {
                    Ok(out) => break out,
                    Err(e) => match self.map_err("DeleteObjects", "batch", e) {
                        StorageError::Transient(_) if pause <= Duration::from_secs(30) => {
                            tokio::time::sleep(pause).await;
                            pause *= 2;
                        }
                        other => return Err(other),
                    },
                }
            };
            for err in out.errors() {
                let Some(key) = err
                    .key()
                    .and_then(|k| self.relative(k))
                    .and_then(|k| ObjectKey::new(k).ok())
                else {
                    continue;
                };
                if err.code() == Some("NoSuchKey") {
                    continue;
                }
                refused.push(Refused {
                    key,
                    reason: format!("{} {}", err.code().unwrap_or(""), err.message().unwrap_or(""))
                        .trim()
                        .to_string(),
                });
            }
        }
        Ok(refused)
    }
}

/// An HTTPS client that trusts the certificate authority in `ca_file` alone, for an
/// S3 endpoint behind a private CA (pgBackRest's `repo-storage-ca-file`). Every pgdr
/// process reads the same file from the configuration: the pusher, a restored
/// server's `wal-fetch`, verify and the drills trust what the DBA's commands trust.
fn private_ca_client(ca_file: &std::path::Path) -> anyhow::Result<aws_sdk_s3::config::SharedHttpClient> {
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
    let pem = std::fs::read(ca_file)
        .map_err(|e| crate::usage!("cannot read [repository] ca_file {}: {e}", ca_file.display()))?;
    let certificates = pem_certificates(&pem);
    if certificates == 0 {
        return Err(crate::usage!(
            "[repository] ca_file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            ca_file.display()
        ));
    }
    let trust = TrustStore::empty().with_native_roots(false).with_pem_certificate(pem);
    let context = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| crate::usage!("[repository] ca_file {}: {e}", ca_file.display()))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(context)
        .build_https())
}

/// How many PEM certificates `pem` holds.
fn pem_certificates(pem: &[u8]) -> usize {
    String::from_utf8_lossy(pem)
        .matches("-----BEGIN CERTIFICATE-----")
        .count()
}

/// The request failed because the endpoint's certificate is not trusted (an unknown
/// issuer, a name it does not cover, expired).
fn untrusted_certificate<E, R>(err: &SdkError<E, R>) -> bool
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let text = format!("{}", DisplayErrorContext(err));
    text.contains("certificate") || text.contains("UnknownIssuer") || text.contains("NotValidForName")
}

#[cfg(test)]
mod tests {
    use super::starts_at;

    #[test]
    fn a_resumed_read_must_start_where_the_first_stopped() {
        assert!(starts_at("bytes 100-199/200", 100));
        assert!(!starts_at("bytes 0-199/200", 100));
        assert!(!starts_at("bytes */200", 100));
        assert!(!starts_at("", 0));
        assert!(!starts_at("items 100-199/200", 100));
    }
}
