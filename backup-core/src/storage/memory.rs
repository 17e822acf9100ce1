//! An in-memory target for the engine's own tests. It obeys the full storage
//! contract (it passes the conformance suite), so tests of the layers above
//! can use it, or wrap it in [`super::testing::FaultyStorage`].

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

use super::{bytes_stream, validate_key, ByteStream, ObjectMeta, PutMode, Storage, StorageError};

#[derive(Debug, Default)]
pub struct MemoryStorage {
    objects: Mutex<BTreeMap<String, Bytes>>,
}

impl MemoryStorage {
    /// Replaces an object's bytes behind the trait's back, to simulate damage.
    pub fn tamper(&self, key: &str, f: impl FnOnce(&mut Vec<u8>)) {
        let mut objects = self.objects.lock().unwrap();
        let mut data = objects.get(key).expect("tampered object exists").to_vec();
        f(&mut data);
        objects.insert(key.to_string(), Bytes::from(data));
    }

    pub fn keys(&self) -> Vec<String> {
        self.objects.lock().unwrap().keys().cloned().collect()
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn put(
        &self,
        key: &str,
        mut body: ByteStream,
        mode: PutMode,
    ) -> Result<ObjectMeta, StorageError> {
        validate_key(key)?;
        let mut data = Vec::new();
        while let Some(part) = body.next().await {
            data.extend_from_slice(&part?);
        }
        let mut objects = self.objects.lock().unwrap();
        if mode == PutMode::Create && objects.contains_key(key) {
            return Err(StorageError::already_exists(key));
        }
        let size = data.len() as u64;
        objects.insert(key.to_string(), Bytes::from(data));
        Ok(ObjectMeta {
            key: key.to_string(),
            size,
        })
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        let data = self.objects.lock().unwrap().get(key).cloned();
        data.map(bytes_stream)
            .ok_or_else(|| StorageError::not_found(key))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        let objects = self.objects.lock().unwrap();
        let data = objects
            .get(key)
            .ok_or_else(|| StorageError::not_found(key))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: data.len() as u64,
        })
    }

    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, StorageError>> {
        let items: Vec<_> = self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| {
                Ok(ObjectMeta {
                    key: k.clone(),
                    size: v.len() as u64,
                })
            })
            .collect();
        stream::iter(items).boxed()
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}
