//! Signed webhooks: `Roomcast-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256
//! of "<t>.<raw body>">`, checked against every active secret (so a secret can
//! be rotated without downtime: run with both, move producers to the new one,
//! drop the old), with a constant-time compare and a 300 s window.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Largest distance between `t` and the server clock, in seconds.
pub const WINDOW_SECS: u64 = 300;
/// The header carrying the signature.
pub const HEADER: &str = "roomcast-signature";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("webhooks are not configured on this server (ROOMCAST_WEBHOOK_SECRET)")]
    NotConfigured,
    #[error("missing Roomcast-Signature header")]
    Missing,
    #[error("malformed Roomcast-Signature header: expected t=<unix seconds>,v1=<hex HMAC-SHA256>")]
    Malformed,
    #[error("the signature's timestamp is more than {WINDOW_SECS} s from the server clock")]
    OutsideWindow,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// The active webhook secrets.
#[derive(Clone, Default)]
pub struct Secrets(Vec<Vec<u8>>);

impl Secrets {
    /// Secrets from a comma-separated list (`ROOMCAST_WEBHOOK_SECRET=new,old`);
    /// empty entries are ignored.
    pub fn parse(list: Option<&str>) -> Self {
        Secrets(
            list.unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec())
                .collect(),
        )
    }

    /// Checks `header` for `body` at time `now` (unix seconds).
    pub fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Result<(), SignatureError> {
        if self.0.is_empty() {
            return Err(SignatureError::NotConfigured);
        }
        let header = header.ok_or(SignatureError::Missing)?;
        let mut t = None;
        let mut sigs = Vec::new();
        for part in header.split(',') {
            let (k, v) = part
                .trim()
                .split_once('=')
                .ok_or(SignatureError::Malformed)?;
            match k.trim() {
                "t" => {
                    t = Some(
                        v.trim()
                            .parse::<u64>()
                            .map_err(|_| SignatureError::Malformed)?,
                    )
                }
                "v1" => {
                    let sig = hex::decode(v.trim()).map_err(|_| SignatureError::Malformed)?;
                    if sig.len() != 32 {
                        return Err(SignatureError::Malformed);
                    }
                    sigs.push(sig);
                }
                _ => {} // other schemes, for the future
            }
        }
        let t = t.ok_or(SignatureError::Malformed)?;
        if sigs.is_empty() {
            return Err(SignatureError::Malformed);
        }
        if t.abs_diff(now) > WINDOW_SECS {
            return Err(SignatureError::OutsideWindow);
        }
        let stamp = t.to_string();
        for secret in &self.0 {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
            mac.update(stamp.as_bytes());
            mac.update(b".");
            mac.update(body);
            for sig in &sigs {
                // `verify_slice` compares in constant time.
                if mac.clone().verify_slice(sig).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(SignatureError::Mismatch)
    }
}

/// The header value for `body` signed with `secret` at `t` (for producers'
/// examples, `roomcast sign`, and the tests).
pub fn sign(secret: &str, t: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let secrets = Secrets::parse(Some("new-secret, old-secret"));
        let body = br#"{"type":"x"}"#;
        let now = 1_800_000_000;
        assert_eq!(
            secrets.verify(Some(&sign("new-secret", now, body)), body, now),
            Ok(())
        );
        assert_eq!(
            secrets.verify(Some(&sign("old-secret", now - 299, body)), body, now),
            Ok(())
        );
        assert_eq!(
            secrets.verify(Some(&sign("other", now, body)), body, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            secrets.verify(Some(&sign("new-secret", now, body)), b"{}", now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            secrets.verify(Some(&sign("new-secret", now - 301, body)), body, now),
            Err(SignatureError::OutsideWindow)
        );
        assert_eq!(
            secrets.verify(Some(&sign("new-secret", now + 301, body)), body, now),
            Err(SignatureError::OutsideWindow)
        );
        // Two signatures (a signer mid-rotation): either may match.
        let both = format!(
            "{},v1={}",
            sign("retired", now, body),
            sign("new-secret", now, body).split("v1=").nth(1).unwrap()
        );
        assert_eq!(secrets.verify(Some(&both), body, now), Ok(()));
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "garbage"] {
            assert!(secrets.verify(Some(bad), body, now).is_err(), "{bad}");
        }
        assert_eq!(
            secrets.verify(None, body, now),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            Secrets::parse(None).verify(Some("t=1,v1=00"), body, now),
            Err(SignatureError::NotConfigured)
        );
    }
}
