//! Media storage behind `object_store`: a local directory (embedded) or an S3-compatible
//! bucket (production). Keys are `jobs/{job_id}/{index}.{ext}`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

use crate::jobs::job::StoredOutput;

#[derive(Debug, Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("unsupported storage URL {0:?}: use file:///path or s3://bucket")]
    BadUrl(String),
    #[error("unknown storage option {0:?} (see object_store's AmazonS3ConfigKey)")]
    BadOption(String),
    #[error("cannot create media directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] object_store::Error),
}

impl Storage {
    /// `file:///abs/dir` (or `file://relative/dir`) or `s3://bucket` with the usual `AWS_*`
    /// variables (endpoint, region, keys) for MinIO and friends. `options` override those
    /// variables with object_store's S3 keys (`aws_endpoint`, `aws_region`, …), so a config
    /// file can say everything.
    pub fn open(url: &str, options: &BTreeMap<String, String>) -> Result<Storage, StorageError> {
        let store: Arc<dyn ObjectStore> = if let Some(dir) = url.strip_prefix("file://") {
            std::fs::create_dir_all(dir).map_err(|source| StorageError::Dir {
                path: dir.to_owned(),
                source,
            })?;
            Arc::new(LocalFileSystem::new_with_prefix(dir)?)
        } else if let Some(bucket) = url.strip_prefix("s3://") {
            let bucket = bucket.trim_end_matches('/');
            // Endpoint, region, keys and AWS_ALLOW_HTTP (for a local MinIO) come from the
            // usual AWS_* variables, then from `options`.
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            for (key, value) in options {
                let key: AmazonS3ConfigKey = key
                    .parse()
                    .map_err(|_| StorageError::BadOption(key.clone()))?;
                builder = builder.with_config(key, value);
            }
            Arc::new(builder.build()?)
        } else {
            return Err(StorageError::BadUrl(url.to_owned()));
        };
        Ok(Storage { store })
    }

    pub fn key(job_id: &str, index: u32, extension: &str) -> String {
        format!("jobs/{job_id}/{index}.{extension}")
    }

    /// Stores one output and describes it.
    pub async fn put(
        &self,
        job_id: &str,
        index: u32,
        content_type: &str,
        extension: &str,
        bytes: Bytes,
    ) -> Result<StoredOutput, StorageError> {
        let key = Self::key(job_id, index, extension);
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let len = bytes.len() as u64;
        self.store
            .put(&Path::from(key.as_str()), PutPayload::from_bytes(bytes))
            .await?;
        Ok(StoredOutput {
            index,
            content_type: content_type.to_owned(),
            bytes: len,
            sha256,
            key,
        })
    }

    /// Streams the object, or the byte range of it, without holding it in memory.
    pub async fn stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, StorageError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let got = self.store.get_opts(&Path::from(key), options).await?;
        Ok(got.into_stream())
    }

    /// Stores `bytes` under `key` as they are (a derived file such as a thumbnail, or an
    /// upload), replacing what was there.
    pub async fn put_at(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.store
            .put(&Path::from(key), PutPayload::from_bytes(bytes))
            .await?;
        Ok(())
    }

    /// The whole object, or `None` if there is none under `key`. For small files only
    /// (thumbnails); media is streamed with [`Storage::stream`].
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        match self.store.get(&Path::from(key)).await {
            Ok(got) => Ok(Some(got.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.store.delete(&Path::from(key)).await?;
        Ok(())
    }
}
