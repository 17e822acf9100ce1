//! Bearer-token authentication of `offsite serve`: the token's SHA-256
//! compared in constant time with each configured hash, the scope the
//! request's method needs checked (a handler may then require a narrower
//! one from the [`Caller`]), and failed attempts rate-limited per client IP.
//! `GET /api/v1/token` tells a client its token's name and scopes.
//!
//! Never: log, store or echo a presented token; tell apart in timing which
//! configured hash came close.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Extension, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::ops_config::{Scope, ServeToken};

/// Failed attempts a client may make in a burst before it gets 429.
const BURST: f64 = 5.0;
/// One more attempt allowed per this long.
const REFILL: Duration = Duration::from_secs(10);
/// Clients remembered at most; full buckets are forgotten first.
const MAX_CLIENTS: usize = 4096;

/// The configured tokens, as digests.
pub struct Auth {
    tokens: Vec<(String, Vec<Scope>, [u8; 32])>,
    limiter: Mutex<HashMap<IpAddr, Bucket>>,
}

/// The token a request presented: its `[[serve.tokens]]` name and scopes,
/// for the handlers that need a narrower scope than the method's (a
/// restore job needs `restore`) and for `GET /api/v1/token`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Caller {
    pub name: String,
    pub scopes: Vec<Scope>,
}

/// `GET /api/v1/token`: the name and scopes of the token presented, so a
/// client (the dashboard) can tell what it may do before it tries.
pub async fn token(Extension(caller): Extension<Caller>) -> axum::Json<Caller> {
    axum::Json(caller)
}

/// A token bucket of failed attempts for one client.
#[derive(Clone, Copy)]
struct Bucket {
    left: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, now: Instant) -> Bucket {
        let gained = now.duration_since(self.at).as_secs_f64() / REFILL.as_secs_f64();
        Bucket {
            left: (self.left + gained).min(BURST),
            at: now,
        }
    }
}

/// The scopes of which a request needs one: the GET endpoints read; the
/// others (starting a job) operate or restore, and the job's kind then
/// says which ([`Caller::require`]).
fn needed(method: &Method) -> &'static [Scope] {
    if method == Method::GET || method == Method::HEAD {
        &[Scope::Read]
    } else {
        &[Scope::Operate, Scope::Restore]
    }
}

impl Caller {
    /// 403 naming the scope unless the token has it.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            return Ok(());
        }
        tracing::warn!(token = %self.name, "token lacks the {} scope", scope.name());
        Err(lacks(&self.name, &[scope]))
    }
}

/// 403: the token `name` has none of `scopes`.
fn lacks(name: &str, scopes: &[Scope]) -> ApiError {
    let names: Vec<String> = scopes.iter().map(|s| format!("{:?}", s.name())).collect();
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "token {name:?} lacks the {} scope this request needs",
            names.join(" or ")
        ),
    )
}

/// The SHA-256 of a token, as `[[serve.tokens]] sha256` holds it.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    /// The tokens of the config (their hashes were checked at load).
    pub fn new(tokens: &[ServeToken]) -> anyhow::Result<Auth> {
        let mut parsed = Vec::with_capacity(tokens.len());
        for t in tokens {
            let mut d = [0u8; 32];
            hex::decode_to_slice(&t.sha256, &mut d)?;
            parsed.push((t.name.clone(), t.scopes.clone(), d));
        }
        Ok(Auth {
            tokens: parsed,
            limiter: Mutex::default(),
        })
    }

    /// The name and scopes of the token whose hash is `d`. Every
    /// configured hash is compared, each in constant time.
    fn find(&self, d: &[u8; 32]) -> Option<(&str, &[Scope])> {
        let mut found = None;
        for (name, scopes, hash) in &self.tokens {
            if bool::from(hash.ct_eq(d)) && found.is_none() {
                found = Some((name.as_str(), scopes.as_slice()));
            }
        }
        found
    }

    /// Whether `ip` has attempts left (it has none after a burst of failures).
    fn allowed(&self, ip: IpAddr) -> bool {
        let limiter = self.limiter.lock().expect("limiter");
        limiter
            .get(&ip)
            .is_none_or(|b| b.refilled(Instant::now()).left >= 1.0)
    }

    /// Counts a failed attempt of `ip`.
    fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut limiter = self.limiter.lock().expect("limiter");
        if limiter.len() >= MAX_CLIENTS {
            limiter.retain(|_, b| b.refilled(now).left < BURST);
        }
        let b = limiter.entry(ip).or_insert(Bucket {
            left: BURST,
            at: now,
        });
        *b = b.refilled(now);
        b.left -= 1.0;
    }
}

/// The middleware in front of every endpoint but `/healthz`.
pub async fn require_token(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let auth = &state.auth;
    let ip = peer.ip();
    let Some(token) = bearer(&request) else {
        return unauthorized("missing bearer token: send the header Authorization: Bearer <token>");
    };
    if !auth.allowed(ip) {
        tracing::warn!(client = %ip, "too many failed token attempts: request refused");
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed token attempts from this address; try again later",
        )
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, REFILL.as_secs().into());
        return r;
    }
    let Some((name, scopes)) = auth.find(&digest(token)) else {
        auth.failed(ip);
        tracing::warn!(client = %ip, path = %request.uri().path(), "rejected a bearer token that matches no [[serve.tokens]] entry");
        return unauthorized("the bearer token matches no [[serve.tokens]] entry");
    };
    let need = needed(request.method());
    if !need.iter().any(|n| scopes.contains(n)) {
        tracing::warn!(client = %ip, token = name, "token lacks the {} scope", need[0].name());
        return lacks(name, need).into_response();
    }
    tracing::debug!(client = %ip, token = name, method = %request.method(), path = %request.uri().path(), "request");
    let caller = Caller {
        name: name.to_string(),
        scopes: scopes.to_vec(),
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The token of an `Authorization: Bearer` header.
fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn unauthorized(message: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("header"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        let token = |name: &str, scopes: Vec<Scope>, secret: &str| ServeToken {
            name: name.into(),
            scopes,
            sha256: hex::encode(digest(secret)),
        };
        Auth::new(&[
            token("ro", vec![Scope::Read], "read-secret"),
            token("ops", vec![Scope::Read, Scope::Operate], "ops-secret"),
        ])
        .unwrap()
    }

    #[test]
    fn tokens_are_found_by_their_hash_only() {
        let a = auth();
        assert_eq!(a.find(&digest("ops-secret")).unwrap().0, "ops");
        assert_eq!(a.find(&digest("read-secret")).unwrap().1, &[Scope::Read]);
        assert!(a.find(&digest("ops-secre")).is_none());
        assert!(a.find(&digest("")).is_none());
    }

    #[test]
    fn a_burst_of_failures_blocks_the_client_only() {
        let a = auth();
        let (bad, good): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..BURST as usize {
            assert!(a.allowed(bad));
            a.failed(bad);
        }
        assert!(!a.allowed(bad));
        assert!(a.allowed(good));
        let mut limiter = a.limiter.lock().unwrap();
        let b = limiter.get_mut(&bad).unwrap();
        b.at -= REFILL;
        assert!(b.refilled(Instant::now()).left >= 1.0);
    }
}
