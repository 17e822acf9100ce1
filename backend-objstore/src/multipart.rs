//! The parts of one multipart upload: cut from the body at the part size, at
//! most `concurrency` of them in flight, and an abort that is the upload's last
//! request.
//!
//! Why not `object_store::WriteMultipart`: its abort cancels the part tasks
//! still in flight and sends the abort at once, but cancelling a task does not
//! recall a request the service already has. S3 documents that parts still
//! uploading during an abort "might or might not succeed" (so the abort may
//! have to be repeated), and moto answers such an abort with a 500 and keeps
//! the upload open. Here every part has finished or failed before the abort
//! is sent, so one abort ends the upload. This module must never complete an
//! upload unless every part it sent was confirmed.

use bytes::Bytes;
use object_store::{MultipartUpload, PutPayloadMut, PutResult, Result};
use tokio::task::JoinSet;

/// One multipart upload in progress (see the module doc).
pub struct Parts {
    upload: Box<dyn MultipartUpload>,
    buffer: PutPayloadMut,
    part_size: usize,
    concurrency: usize,
    /// Spawned, so parts keep uploading while the caller awaits its body.
    in_flight: JoinSet<Result<()>>,
}

impl Parts {
    pub fn new(upload: Box<dyn MultipartUpload>, part_size: usize, concurrency: usize) -> Self {
        Parts {
            upload,
            buffer: PutPayloadMut::new(),
            part_size,
            concurrency: concurrency.max(1),
            in_flight: JoinSet::new(),
        }
    }

    /// Adds `bytes`, sending every part that fills up. Waits first while
    /// `concurrency` parts are in flight: memory stays bounded however fast
    /// the body produces. An error is a part that failed; abort then.
    pub async fn push(&mut self, mut bytes: Bytes) -> Result<()> {
        self.wait_below(self.concurrency).await?;
        while !bytes.is_empty() {
            let room = self.part_size - self.buffer.content_length();
            if bytes.len() < room {
                self.buffer.push(bytes);
                break;
            }
            self.buffer.push(bytes.split_to(room));
            self.send_buffer();
        }
        Ok(())
    }

    /// Sends the last part, waits for every part and completes the upload;
    /// if a part or the completion fails, the upload is aborted.
    pub async fn finish(mut self, key: &str) -> Result<PutResult> {
        if !self.buffer.is_empty() {
            self.send_buffer();
        }
        if let Err(e) = self.wait_below(0).await {
            self.abort(key).await;
            return Err(e);
        }
        match self.upload.complete().await {
            Ok(done) => Ok(done),
            Err(e) => {
                self.abort(key).await;
                Err(e)
            }
        }
    }

    /// Waits until every part in flight has finished or failed, then aborts
    /// the upload. Best effort: if the abort fails too, the incomplete upload
    /// stays invisible and the bucket's lifecycle rule removes its parts.
    pub async fn abort(mut self, key: &str) {
        while self.in_flight.join_next().await.is_some() {}
        if let Err(e) = self.upload.abort().await {
            tracing::warn!(key, error = %e, "could not abort a multipart upload");
        }
    }

    fn send_buffer(&mut self) {
        let part = std::mem::take(&mut self.buffer);
        self.in_flight.spawn(self.upload.put_part(part.into()));
    }

    /// Waits until fewer than `limit` parts are in flight (none for 0); the
    /// first failed part is returned at once, the others stay in flight.
    async fn wait_below(&mut self, limit: usize) -> Result<()> {
        while !self.in_flight.is_empty() && self.in_flight.len() >= limit {
            if let Some(done) = self.in_flight.join_next().await {
                done??;
            }
        }
        Ok(())
    }
}
