//! B2's failures and what offsite makes of them.
//!
//! B2 answers every failed API call with a JSON body `{status, code, message}`;
//! this module turns that (or a transport failure) into a [`B2Error`], decides
//! which of them the client handles in place (re-authorize, fetch a new upload
//! URL, back off), and maps the rest onto [`StorageError`] kinds. It must never
//! put a credential into a message: errors end up in logs and on terminals.

use backup_core::storage::{ErrorKind, StorageError};
use serde::Deserialize;

/// One failed B2 call.
#[derive(Debug, thiserror::Error)]
pub(crate) enum B2Error {
    /// B2 answered with an error status (and usually its JSON error body).
    #[error("B2 {op} returned HTTP {status} {code}: {message}")]
    Api {
        op: &'static str,
        status: u16,
        code: String,
        message: String,
    },
    /// The request never got a complete answer (connect, reset, timeout).
    #[error("B2 {op} request failed: {source}")]
    Http {
        op: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// B2 answered 2xx with something this client cannot read.
    #[error("B2 {op} returned an unreadable response: {message}")]
    Malformed { op: &'static str, message: String },
    /// An upload to an upload URL failed in a way that calls for a fresh URL;
    /// the account token is not at fault, so it must not be thrown away.
    #[error("upload URL failed, fetching another: {0}")]
    StaleUploadUrl(Box<B2Error>),
    /// The account or bucket itself is unusable (key rejected, key limited to
    /// another bucket, no such bucket).
    #[error("{message}")]
    Target { kind: ErrorKind, message: String },
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl B2Error {
    /// Builds the error for a non-2xx response from its status and body.
    pub(crate) fn from_response(op: &'static str, status: u16, body: &[u8]) -> Self {
        // HEAD answers and some proxies carry no JSON body; the status alone
        // still classifies the failure.
        let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
        let (code, message) = match parsed {
            Some(b) => (b.code, b.message),
            None => (
                String::new(),
                String::from_utf8_lossy(body).trim().to_string(),
            ),
        };
        B2Error::Api {
            op,
            status,
            code,
            message,
        }
    }

    pub(crate) fn http(op: &'static str, source: reqwest::Error) -> Self {
        B2Error::Http { op, source }
    }

    /// The account token this call used is no longer good: authorize again and
    /// repeat. B2 tokens live at most 24 hours, and B2 may revoke them earlier.
    /// A 401 without a code is an answer to a `HEAD`, which has no body to
    /// say why: worth one renewal too (a second 401 is then a refusal).
    pub(crate) fn is_expired_token(&self) -> bool {
        matches!(self, B2Error::Api { status: 401, code, .. }
            if code == "expired_auth_token" || code == "bad_auth_token" || code.is_empty())
    }

    /// An upload URL (or its token) has gone bad. B2's upload documentation
    /// asks clients to fetch a fresh upload URL after any of these rather than
    /// retry the same one: the pod behind it may be full or gone.
    pub(crate) fn needs_new_upload_url(&self) -> bool {
        match self {
            B2Error::Api { status, .. } => {
                matches!(status, 408 | 429 | 500..=599) || self.is_expired_token()
            }
            B2Error::Http { .. } => true,
            B2Error::Malformed { .. } | B2Error::StaleUploadUrl(_) | B2Error::Target { .. } => {
                false
            }
        }
    }

    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            B2Error::Api { status, code, .. } => match (*status, code.as_str()) {
                (401, "expired_auth_token" | "bad_auth_token") => ErrorKind::Transient,
                // The account's storage cap (Caps & Alerts) is reached.
                (403, "storage_cap_exceeded") => ErrorKind::Full,
                (401 | 403, _) => ErrorKind::PermissionDenied,
                (404, _) | (400, "file_not_present" | "no_such_file") => ErrorKind::NotFound,
                (408 | 429, _) | (500..=599, _) => ErrorKind::Transient,
                _ => ErrorKind::Other,
            },
            B2Error::Http { source, .. } if source.is_decode() => ErrorKind::Other,
            B2Error::Http { .. } => ErrorKind::Transient,
            B2Error::Malformed { .. } => ErrorKind::Other,
            B2Error::StaleUploadUrl(_) => ErrorKind::Transient,
            B2Error::Target { kind, .. } => *kind,
        }
    }

    /// Sorts a failed upload to an upload URL: either the URL is spent (drop
    /// it, retry with a new one) or the failure is the caller's to handle.
    pub(crate) fn into_upload_failure(self) -> Self {
        if self.needs_new_upload_url() {
            B2Error::StaleUploadUrl(Box::new(self))
        } else {
            self
        }
    }

    /// The [`StorageError`] for `key` in `bucket`. A refusal explains what to
    /// check, since it is almost always a key or capability mistake.
    pub(crate) fn into_storage(self, bucket: &str, key: &str) -> StorageError {
        let kind = self.kind();
        let message = match kind {
            ErrorKind::PermissionDenied => format!(
                "B2 refused access to bucket {bucket:?} ({self}); check the application key id \
                 and key (B2_APPLICATION_KEY_ID / B2_APPLICATION_KEY), that the key is allowed \
                 this bucket, and that it has the capabilities listBuckets, listFiles, readFiles \
                 and writeFiles (and deleteFiles, which only prune needs)"
            ),
            ErrorKind::Full => format!(
                "B2 refuses more data for bucket {bucket:?} ({self}): the account's storage cap \
                 is reached; raise it under Caps & Alerts in the B2 web console, or prune"
            ),
            _ => self.to_string(),
        };
        StorageError::new(kind, key, message).with_source(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> B2Error {
        let body = format!(r#"{{"status":{status},"code":"{code}","message":"m"}}"#);
        B2Error::from_response("op", status, body.as_bytes())
    }

    #[test]
    fn classification() {
        assert!(api(401, "expired_auth_token").is_expired_token());
        assert!(api(401, "bad_auth_token").is_expired_token());
        assert!(!api(401, "unauthorized").is_expired_token());
        assert_eq!(api(401, "unauthorized").kind(), ErrorKind::PermissionDenied);
        assert_eq!(
            api(403, "access_denied").kind(),
            ErrorKind::PermissionDenied
        );
        assert_eq!(api(404, "not_found").kind(), ErrorKind::NotFound);
        assert_eq!(api(400, "file_not_present").kind(), ErrorKind::NotFound);
        assert_eq!(api(503, "service_unavailable").kind(), ErrorKind::Transient);
        assert_eq!(api(429, "too_many_requests").kind(), ErrorKind::Transient);
        assert_eq!(api(400, "bad_request").kind(), ErrorKind::Other);
        assert_eq!(api(403, "storage_cap_exceeded").kind(), ErrorKind::Full);
        assert!(!api(403, "storage_cap_exceeded").needs_new_upload_url());
        assert!(api(503, "service_unavailable").needs_new_upload_url());
        assert!(!api(400, "bad_request").needs_new_upload_url());
    }

    #[test]
    fn bodiless_errors_classify_by_status() {
        let e = B2Error::from_response("head", 404, b"");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = B2Error::from_response("head", 401, b"");
        assert!(e.is_expired_token(), "a bodiless 401 is worth one renewal");
        assert_eq!(
            e.kind(),
            ErrorKind::PermissionDenied,
            "and a refusal after it"
        );
    }

    #[test]
    fn refusals_say_what_to_check() {
        let e = api(401, "unauthorized").into_storage("my-bucket", "k");
        assert!(e.message.contains("my-bucket"), "{e}");
        assert!(e.message.contains("writeFiles"), "{e}");
    }
}
