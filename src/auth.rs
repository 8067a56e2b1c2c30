//! Client credentials: HS256 JWTs with `sub`, `org`, `exp`, optional `rooms`
//! and `pub` claims. A `Principal` is what a handler knows about its caller.

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::HttpRequest;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The claims of a roomcast token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub org: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    #[serde(rename = "pub", default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<bool>,
    /// Shown to the other members of a room with presence (display name,
    /// avatar, role): a JSON object of at most 1 KiB serialized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// Largest `info` claim, serialized.
pub const MAX_INFO_BYTES: usize = 1024;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub sub: String,
    pub org: String,
    /// Unix seconds after which the credential is no longer valid.
    pub exp: u64,
    /// Room ids or prefixes ending in `*`; `None` means every room of the org.
    pub rooms: Option<Vec<String>>,
    pub can_publish: bool,
    /// The `info` claim (presence), if any.
    pub info: Option<std::sync::Arc<serde_json::Value>>,
}

impl Principal {
    /// Whether this caller may read (and, with `pub`, publish to) `room`.
    pub fn may_access(&self, room: &str) -> bool {
        match &self.rooms {
            None => true,
            Some(list) => list.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => room.starts_with(prefix),
                None => p == room,
            }),
        }
    }

    pub fn is_expired(&self) -> bool {
        now_secs() >= self.exp
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing token: send Authorization: Bearer <jwt> or ?token=<jwt>")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verified tokens kept (a publish or a connection need not verify the same
/// token again); past it the cache starts over.
const CACHE_MAX: usize = 4096;

/// Verifies tokens against `ROOMCAST_JWT_SECRET`.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    /// Tokens verified already, by signature (with a hash of what they sign,
    /// so a cached answer is only for that very token): a producer sending
    /// thousands of publishes with one token pays the HMAC and JSON parse
    /// once. `exp` is checked on every hit.
    cache: std::sync::Mutex<std::collections::HashMap<String, (u64, Principal)>>,
}

impl Authenticator {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Long connections are closed at `exp` exactly; no grace beyond clock skew.
        validation.leeway = 5;
        Authenticator {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            cache: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Verifies a token (from the cache when it was verified before and has
    /// not expired since).
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let Some((signed, signature)) = token.rsplit_once('.') else {
            return Err(AuthError::Invalid("not a JWT".into()));
        };
        let digest = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            signed.hash(&mut h);
            h.finish()
        };
        let now = now_secs();
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((d, p)) = cache.get(signature) {
                if *d == digest && now < p.exp + self.validation.leeway {
                    return Ok(p.clone());
                }
            }
        }
        let p = self.verify_uncached(token)?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(signature.to_owned(), (digest, p.clone()));
        Ok(p)
    }

    fn verify_uncached(&self, token: &str) -> Result<Principal, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let c = data.claims;
        if c.sub.is_empty() || c.org.is_empty() {
            return Err(AuthError::Invalid("sub and org must not be empty".into()));
        }
        if let Some(info) = &c.info {
            let size = serde_json::to_vec(info).map_or(usize::MAX, |v| v.len());
            if !info.is_object() || size > MAX_INFO_BYTES {
                return Err(AuthError::Invalid(format!(
                    "info must be a JSON object of at most {MAX_INFO_BYTES} bytes"
                )));
            }
        }
        Ok(Principal {
            sub: c.sub,
            org: c.org,
            exp: c.exp,
            rooms: c.rooms,
            can_publish: c.publish.unwrap_or(false),
            info: c.info.map(std::sync::Arc::new),
        })
    }

    /// Reads the token from `Authorization: Bearer` or the `token` query parameter.
    pub fn from_request(&self, req: &HttpRequest) -> Result<Principal, AuthError> {
        let token = bearer(req)
            .or_else(|| query_token(req))
            .ok_or(AuthError::Missing)?;
        self.verify(&token)
    }
}

fn bearer(req: &HttpRequest) -> Option<String> {
    let h = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = h.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn query_token(req: &HttpRequest) -> Option<String> {
    req.query_string().split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "token").then(|| v.to_owned())
    })
}

/// Signs a token; used by `roomcast demo`, `roomcast token` and the tests.
pub fn mint(secret: &str, claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(rooms: Option<Vec<&str>>) -> Claims {
        Claims {
            sub: "u".into(),
            org: "o".into(),
            exp: now_secs() + 60,
            rooms: rooms.map(|r| r.into_iter().map(String::from).collect()),
            publish: Some(true),
            info: None,
        }
    }

    #[test]
    fn verify_and_scope() {
        let a = Authenticator::new("s3cret");
        let p = a
            .verify(&mint("s3cret", &claims(Some(vec!["call-*", "m1"]))))
            .unwrap();
        assert!(p.can_publish);
        assert!(p.may_access("call-7"));
        assert!(p.may_access("m1"));
        assert!(!p.may_access("m12"));
        assert!(a.verify(&mint("other", &claims(None))).is_err());
        let mut expired = claims(None);
        expired.exp = now_secs() - 100;
        assert!(a.verify(&mint("s3cret", &expired)).is_err());
        assert!(a.verify("garbage").is_err());
    }

    #[test]
    fn the_cache_answers_only_for_the_same_unexpired_token() {
        let a = Authenticator::new("s3cret");
        let t = mint("s3cret", &claims(None));
        assert!(a.verify(&t).is_ok());
        assert!(a.verify(&t).is_ok(), "from the cache");
        // Another payload with the cached signature is not the cached token.
        let (_, sig) = t.rsplit_once('.').unwrap();
        let mut other = claims(Some(vec!["x"]));
        other.sub = "mallory".into();
        let forged = mint("s3cret", &other);
        let (signed, _) = forged.rsplit_once('.').unwrap();
        assert!(a.verify(&format!("{signed}.{sig}")).is_err());
        // A token cached inside the clock-skew leeway is refused once past
        // it, as an uncached one would be.
        let mut short = claims(None);
        short.exp = now_secs() - 4;
        let t = mint("s3cret", &short);
        assert!(a.verify(&t).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert!(a.verify(&t).is_err());
    }
}
