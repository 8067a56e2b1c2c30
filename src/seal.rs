//! Sealed messages between instances (issue 24): everything one instance
//! tells the others (bus messages; presence and ephemeral NOTIFYs) is
//! encrypted and authenticated with the cluster key, and bound to where it
//! was sent (the bus subject, the NOTIFY channel). Other broker users and
//! other database roles can neither read it nor forge it: a message that
//! does not open is dropped and counted, never delivered.
//!
//! XChaCha20-Poly1305 with a random 192-bit nonce per message (no counter to
//! keep between instances). The key is derived from the cluster secret
//! (`ROOMCAST_CLUSTER_SECRET`, required with a bus; without one, else the
//! one the database generated, readable only by roomcast's own role). Several secrets may be given at once
//! while they rotate: the first seals, any of them opens (roll out
//! `old,new`, then `new,old`, then `new`).
//!
//! Layout: `0xC5, key id u8, nonce [24], ciphertext and tag`; the key id is
//! the first byte of the key's fingerprint (a quick pick, not a secret).
//! Replays are not refused here: a replayed frame or hint is a seq already
//! routed (dropped as a duplicate) or a read, a replayed presence
//! announcement is older than what its instance wrote (ignored).

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

const MAGIC: u8 = 0xC5;
const NONCE: usize = 24;
/// What sealing adds to a message: magic, key id, nonce, tag.
pub const OVERHEAD: usize = 2 + NONCE + 16;

struct Key {
    id: u8,
    aead: XChaCha20Poly1305,
}

/// The cluster's keys: the first seals, every one opens.
pub struct Seal {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        write!(f, "Seal({} keys)", self.keys.len())
    }
}

impl Seal {
    /// The keys of `secrets` (at least one; empty ones are skipped).
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Option<Seal> {
        let keys: Vec<Key> = secrets
            .iter()
            .map(|s| s.as_ref().trim())
            .filter(|s| !s.is_empty())
            .map(|s| {
                let key = derive(s, b"roomcast cluster key v1");
                let id = derive(s, b"roomcast cluster key id v1")[0];
                Key {
                    id,
                    aead: XChaCha20Poly1305::new((&key).into()),
                }
            })
            .collect();
        (!keys.is_empty()).then_some(Seal { keys })
    }

    /// Seals `plain` for `context` (where it is sent).
    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Vec<u8> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = key
            .aead
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: context,
                },
            )
            .expect("XChaCha20-Poly1305 seals any length a message has");
        let mut out = Vec::with_capacity(OVERHEAD + plain.len());
        out.push(MAGIC);
        out.push(key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what one of the cluster's keys sealed for `context`; `None`
    /// for anything else (forged, altered, sent elsewhere, another key).
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < OVERHEAD || sealed[0] != MAGIC {
            return None;
        }
        let (id, body) = (sealed[1], &sealed[2 + NONCE..]);
        let nonce = XNonce::from(<[u8; NONCE]>::try_from(&sealed[2..2 + NONCE]).ok()?);
        self.keys.iter().filter(|k| k.id == id).find_map(|k| {
            k.aead
                .decrypt(
                    &nonce,
                    Payload {
                        msg: body,
                        aad: context,
                    },
                )
                .ok()
        })
    }

    /// [`Seal::seal`] as text (a NOTIFY payload is text).
    pub fn seal_text(&self, context: &str, plain: &str) -> String {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(self.seal(context.as_bytes(), plain.as_bytes()))
    }

    /// [`Seal::open`] of what [`Seal::seal_text`] made.
    pub fn open_text(&self, context: &str, text: &str) -> Option<String> {
        let sealed = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text)
            .ok()?;
        String::from_utf8(self.open(context.as_bytes(), &sealed)?).ok()
    }
}

/// The length of `n` bytes sealed as text.
pub fn text_len(n: usize) -> usize {
    ((n + OVERHEAD) * 4).div_ceil(3)
}

fn derive(secret: &str, label: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(label);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_sealed_opens_only_with_its_key_and_context() {
        let seal = Seal::new(&["s3cret"]).unwrap();
        let sealed = seal.seal(b"roomcast.room.acme.r", b"hello");
        assert_eq!(sealed.len(), 5 + OVERHEAD);
        assert!(
            !sealed.windows(5).any(|w| w == b"hello"),
            "sealed is not encrypted"
        );
        assert_eq!(
            seal.open(b"roomcast.room.acme.r", &sealed).unwrap(),
            b"hello"
        );
        // Another context (subject, channel), another key, a changed byte.
        assert!(seal.open(b"roomcast.room.acme.x", &sealed).is_none());
        assert!(Seal::new(&["other"])
            .unwrap()
            .open(b"roomcast.room.acme.r", &sealed)
            .is_none());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(
                seal.open(b"roomcast.room.acme.r", &bad).is_none(),
                "byte {i}"
            );
        }
        assert!(seal
            .open(b"roomcast.room.acme.r", &sealed[..OVERHEAD - 1])
            .is_none());
        assert!(seal.open(b"roomcast.room.acme.r", b"plain text").is_none());
        // Two seals of one message differ (random nonces).
        assert_ne!(sealed, seal.seal(b"roomcast.room.acme.r", b"hello"));
    }

    #[test]
    fn secrets_rotate_with_two_accepted_at_once() {
        let old = Seal::new(&["old"]).unwrap();
        let both = Seal::new(&["new", "old"]).unwrap();
        let new = Seal::new(&["new"]).unwrap();
        let from_old = old.seal_text("c", "a");
        let from_both = both.seal_text("c", "b");
        assert_eq!(both.open_text("c", &from_old).as_deref(), Some("a"));
        assert_eq!(new.open_text("c", &from_both).as_deref(), Some("b"));
        assert_eq!(old.open_text("c", &from_both), None);
        assert_eq!(from_both.len(), text_len(1));
        assert!(Seal::new::<&str>(&[]).is_none());
        assert!(Seal::new(&[" "]).is_none());
        assert_eq!(format!("{:?}", both), "Seal(2 keys)");
    }
}
