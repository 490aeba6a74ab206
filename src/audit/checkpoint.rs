//! Signed checkpoints and the broker's audit key.
//!
//! A checkpoint states "chain C had record S with hash H at time T", signed with the broker's
//! audit key (ECDSA P-256 / ES256, the curve the embedded issuer already uses). It is one line:
//!
//! ```text
//! {"checkpoint":{"v":2,"chain":…,"seq":…,"head":…,"time":…,"kid":…},"sig":"<base64url r‖s>"}
//! ```
//!
//! The signature covers the exact bytes of the `checkpoint` object (as stored and exported), so an
//! auditor can check it with any ES256 implementation. `kid` is the RFC 7638 thumbprint of the
//! public key. A chain whose records end at a checkpoint cannot lose its tail unnoticed, and a
//! rewritten chain no longer matches the signed hash.
//!
//! The key is created on first start and kept in the key store (`audit/es256`, PKCS#8 PEM). It
//! lives beside the log, so it proves the log to anyone who holds only an export and the public
//! key; it does not stop someone who holds the store itself (an external anchor for checkpoints
//! is planned). Signing and verification are pure; only [`AuditKey::load_or_create`] and
//! [`AuditKey::load`] touch the key store.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::chain::VERSION;
use crate::store::{KeyStore, StorageError};

/// Name of the audit signing key in the key store.
pub const AUDIT_KEY: &str = "audit/es256";

/// The body of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub v: u32,
    pub chain: String,
    pub seq: u64,
    /// Hash of record `seq`.
    pub head: String,
    pub time: String,
    /// Thumbprint of the signing key.
    pub kid: String,
}

/// The broker's audit signing key.
pub struct AuditKey {
    signing: SigningKey,
    public: PublicKey,
}

impl AuditKey {
    /// Loads the key, creating it on first use.
    pub fn load_or_create(keys: &dyn KeyStore) -> Result<Self, StorageError> {
        let pem = match keys.get(AUDIT_KEY)? {
            Some(pem) => pem,
            None => {
                let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
                let pem = secret
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(StorageError::new)?;
                keys.put_if_absent(AUDIT_KEY, pem.as_bytes())?
            }
        };
        Self::from_pem(&pem)
    }

    /// Loads the key if there is one (read-only callers).
    pub fn load(keys: &dyn KeyStore) -> Result<Option<Self>, StorageError> {
        keys.get(AUDIT_KEY)?
            .map(|pem| Self::from_pem(&pem))
            .transpose()
    }

    fn from_pem(pem: &[u8]) -> Result<Self, StorageError> {
        let text = std::str::from_utf8(pem).map_err(StorageError::new)?;
        let signing = SigningKey::from_pkcs8_pem(text).map_err(|e| {
            StorageError(format!(
                "the audit key `{AUDIT_KEY}` in the key store is unreadable: {e}"
            ))
        })?;
        let public = PublicKey::new(*signing.verifying_key());
        Ok(Self { signing, public })
    }

    /// A fresh key that is not stored (tests).
    pub fn ephemeral() -> Self {
        let signing = SigningKey::random(&mut rand::rngs::OsRng);
        let public = PublicKey::new(*signing.verifying_key());
        Self { signing, public }
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// `{"<tag>":<body>,"sig":"…"}` with the signature over the exact body bytes.
    pub fn signed_line(&self, tag: &str, body: &[u8]) -> Vec<u8> {
        let signature: Signature = self.signing.sign(body);
        let sig = B64.encode(signature.to_bytes());
        let mut line = Vec::with_capacity(body.len() + tag.len() + sig.len() + 16);
        line.extend_from_slice(b"{\"");
        line.extend_from_slice(tag.as_bytes());
        line.extend_from_slice(b"\":");
        line.extend_from_slice(body);
        line.extend_from_slice(br#","sig":""#);
        line.extend_from_slice(sig.as_bytes());
        line.extend_from_slice(br#""}"#);
        line
    }

    /// A signed checkpoint line.
    pub fn checkpoint(
        &self,
        chain: &str,
        seq: u64,
        head: &str,
        time: &str,
    ) -> Result<Vec<u8>, serde_json::Error> {
        let body = serde_json::to_vec(&Checkpoint {
            v: VERSION,
            chain: chain.to_owned(),
            seq,
            head: head.to_owned(),
            time: time.to_owned(),
            kid: self.public.kid.clone(),
        })?;
        Ok(self.signed_line(CHECKPOINT_TAG, &body))
    }
}

/// Tag of checkpoint lines.
pub const CHECKPOINT_TAG: &str = "checkpoint";

/// A public audit key (what `mandate audit export` publishes).
#[derive(Debug, Clone)]
pub struct PublicKey {
    key: VerifyingKey,
    pub kid: String,
}

impl PublicKey {
    fn new(key: VerifyingKey) -> Self {
        let (x, y) = coordinates(&key);
        // RFC 7638: the required members in lexicographic order, no whitespace.
        let thumbprint = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = B64.encode(<sha2::Sha256 as sha2::Digest>::digest(
            thumbprint.as_bytes(),
        ));
        Self { key, kid }
    }

    /// The key as a JWK.
    pub fn jwk(&self) -> serde_json::Value {
        let (x, y) = coordinates(&self.key);
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
            "kid": self.kid, "x": x, "y": y,
        })
    }

    /// Reads a JWK (`kty` EC, `crv` P-256).
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<Self, String> {
        let field = |name: &str| {
            jwk.get(name)
                .and_then(|v| v.as_str())
                .ok_or_else(|| format!("the public key has no `{name}`: give an EC P-256 JWK"))
        };
        if field("kty")? != "EC" || field("crv")? != "P-256" {
            return Err("the public key is not an EC P-256 JWK".into());
        }
        let coordinate = |name: &str| -> Result<p256::FieldBytes, String> {
            let bytes = B64
                .decode(field(name)?)
                .map_err(|e| format!("the public key's `{name}` is not base64url: {e}"))?;
            <[u8; 32]>::try_from(bytes)
                .map(p256::FieldBytes::from)
                .map_err(|_| format!("the public key's `{name}` is not 32 bytes"))
        };
        let (x, y) = (coordinate("x")?, coordinate("y")?);
        let point = p256::EncodedPoint::from_affine_coordinates(&x, &y, false);
        let key = VerifyingKey::from_encoded_point(&point)
            .map_err(|_| "the public key is not a point on P-256".to_owned())?;
        Ok(Self::new(key))
    }

    /// Whether `sig` (base64url r‖s) signs `body` with this key.
    pub fn verifies(&self, body: &[u8], sig: &str) -> bool {
        let Ok(bytes) = B64.decode(sig) else {
            return false;
        };
        let Ok(signature) = Signature::from_slice(&bytes) else {
            return false;
        };
        self.key.verify(body, &signature).is_ok()
    }
}

fn coordinates(key: &VerifyingKey) -> (String, String) {
    let point = key.to_encoded_point(false);
    let encode = |c: Option<&p256::FieldBytes>| c.map(|c| B64.encode(c)).unwrap_or_default();
    (encode(point.x()), encode(point.y()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedCheckpoint<'a> {
    #[serde(borrow)]
    checkpoint: &'a RawValue,
    sig: String,
}

/// Reads a checkpoint line and checks its signature; the error says what is wrong.
pub fn open_checkpoint(line: &[u8], key: &PublicKey) -> Result<Checkpoint, CheckpointFault> {
    let signed: SignedCheckpoint<'_> = serde_json::from_slice(line)
        .map_err(|e| CheckpointFault::Unreadable(format!("not a checkpoint: {e}")))?;
    let body = signed.checkpoint.get();
    let checkpoint: Checkpoint = serde_json::from_str(body)
        .map_err(|e| CheckpointFault::Unreadable(format!("checkpoint is malformed: {e}")))?;
    if checkpoint.kid != key.kid {
        let reason = format!(
            "it is signed by key `{}`, not by the given key `{}`",
            checkpoint.kid, key.kid
        );
        return Err(CheckpointFault::signature(checkpoint, reason));
    }
    if !key.verifies(body.as_bytes(), &signed.sig) {
        let reason = "its signature does not verify (checkpoint forged or altered)".into();
        return Err(CheckpointFault::signature(checkpoint, reason));
    }
    Ok(checkpoint)
}

/// Why a checkpoint line was refused.
#[derive(Debug)]
pub enum CheckpointFault {
    Unreadable(String),
    Signature {
        chain: String,
        seq: u64,
        reason: String,
    },
}

impl CheckpointFault {
    fn signature(checkpoint: Checkpoint, reason: String) -> Self {
        Self::Signature {
            chain: checkpoint.chain,
            seq: checkpoint.seq,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_with_the_published_jwk_and_not_when_forged() {
        let key = AuditKey::ephemeral();
        let jwk = key.public().jwk();
        let public = PublicKey::from_jwk(&jwk).unwrap();
        assert_eq!(public.kid, key.public().kid);
        let line = key
            .checkpoint("broker", 7, "ab", "2026-01-01T00:00:00Z")
            .unwrap();
        let cp = open_checkpoint(&line, &public).unwrap();
        assert_eq!((cp.chain.as_str(), cp.seq), ("broker", 7));
        // Moving the checkpoint to another seq breaks the signature.
        let text = String::from_utf8(line)
            .unwrap()
            .replace("\"seq\":7", "\"seq\":8");
        assert!(matches!(
            open_checkpoint(text.as_bytes(), &public),
            Err(CheckpointFault::Signature { .. })
        ));
        // Another key's checkpoint is refused.
        let other = AuditKey::ephemeral();
        let line = other
            .checkpoint("broker", 7, "ab", "2026-01-01T00:00:00Z")
            .unwrap();
        assert!(matches!(
            open_checkpoint(&line, &public),
            Err(CheckpointFault::Signature { .. })
        ));
    }
}
