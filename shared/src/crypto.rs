//! Hashes, keys, checkpoints and receipts (PROTOCOL §1, §3, §4).
//!
//! Verification is strict (ed25519-dalek's `verify_strict`): S must be below
//! ℓ, A and R must decode and must not be of small order, and the
//! cofactorless equation is compared by encoding. Small-order public keys are
//! refused wherever a key is trusted (keygen, enrollment, load).

use std::fmt;

use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::entry::Seq;
use crate::id::AgentId;

/// Why a hex string, key or key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("expected {expected} lowercase hex characters, got {got}")]
    HexLength { expected: usize, got: usize },
    #[error("{ch:?} at position {pos} is not a lowercase hex digit")]
    HexDigit { ch: char, pos: usize },
    #[error("public key is not a valid Ed25519 point")]
    NotAPoint,
    #[error("public key is of small order (it would accept forged signatures)")]
    SmallOrder,
    #[error("not a PKCS#8 Ed25519 private key: {0}")]
    Pkcs8(String),
}

/// Decodes exactly `N` bytes from lowercase hex (PROTOCOL §3: hex is
/// lowercase everywhere; uppercase is malformed).
pub fn decode_hex<const N: usize>(s: &str) -> Result<[u8; N], KeyError> {
    if s.len() != 2 * N {
        return Err(KeyError::HexLength {
            expected: 2 * N,
            got: s.chars().count(),
        });
    }
    if let Some((pos, ch)) = s
        .chars()
        .enumerate()
        .find(|(_, c)| !matches!(c, '0'..='9' | 'a'..='f'))
    {
        return Err(KeyError::HexDigit { ch, pos });
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| KeyError::HexLength {
        expected: 2 * N,
        got: s.len(),
    })?;
    Ok(out)
}

macro_rules! fixed_bytes {
    ($(#[$doc:meta])* $name:ident, $n:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $n]);

        impl $name {
            pub fn from_hex(s: &str) -> Result<Self, KeyError> {
                decode_hex::<$n>(s).map(Self)
            }

            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            pub fn as_bytes(&self) -> &[u8; $n] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        // On the wire these are raw bytes (postcard: a length byte, then the
        // bytes); decoding refuses any other length.
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "{} bytes", $n)
                    }
                    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<$name, E> {
                        let arr: [u8; $n] = v
                            .try_into()
                            .map_err(|_| E::invalid_length(v.len(), &self))?;
                        Ok($name(arr))
                    }
                }
                d.deserialize_bytes(V)
            }
        }
    };
}

fixed_bytes!(
    /// A SHA-256 chain hash. 64 lowercase hex characters in JSON.
    Hash,
    32
);
fixed_bytes!(
    /// An Ed25519 signature. 128 lowercase hex characters in JSON.
    Sig,
    64
);
fixed_bytes!(
    /// The 16-byte nonce of a `hello` (PROTOCOL §7 rule 3).
    Nonce,
    16
);

impl Default for Hash {
    fn default() -> Self {
        Hash::ZERO
    }
}

impl Hash {
    /// The `prev` of seq 1 and the hash of the "nothing stored" receipt.
    pub const ZERO: Hash = Hash([0; 32]);
}

/// `hash(n) = SHA-256(canonical(content(n)) ‖ ASCII(hex(prev(n))))`.
pub fn chain_hash(canonical_content: &[u8], prev: &Hash) -> Hash {
    let mut prev_hex = [0u8; 64];
    // Cannot fail: the buffer is exactly twice the input length.
    let _ = hex::encode_to_slice(prev.0, &mut prev_hex);
    let mut h = Sha256::new();
    h.update(canonical_content);
    h.update(prev_hex);
    Hash(h.finalize().into())
}

/// The SHA-256 of arbitrary bytes (used by the JCS vectors).
pub fn sha256(bytes: &[u8]) -> Hash {
    Hash(Sha256::digest(bytes).into())
}

/// `ASCII("baton.checkpoint.v1") ‖ 0 ‖ agent ‖ 0 ‖ seq (u64 BE) ‖ hash`.
pub fn checkpoint_message(agent: &AgentId, seq: Seq, hash: &Hash) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + agent.as_str().len() + 1 + 8 + 32);
    m.extend_from_slice(b"baton.checkpoint.v1\0");
    m.extend_from_slice(agent.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(&seq.0.to_be_bytes());
    m.extend_from_slice(&hash.0);
    m
}

/// `ASCII("baton.nack.v1") ‖ 0 ‖ gateway ‖ 0 ‖ agent ‖ 0 ‖ nonce ‖ reason ‖ 0 ‖ seq`:
/// what a gateway signs when it refuses a hello (PROTOCOL §7 rule 3d).
pub fn nack_message(
    gateway: &AgentId,
    agent: &AgentId,
    nonce: &Nonce,
    reason: &str,
    seq: Seq,
) -> Vec<u8> {
    let mut m =
        Vec::with_capacity(14 + gateway.as_str().len() + agent.as_str().len() + reason.len() + 28);
    m.extend_from_slice(b"baton.nack.v1\0");
    m.extend_from_slice(gateway.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(agent.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(&nonce.0);
    m.extend_from_slice(reason.as_bytes());
    m.push(0);
    m.extend_from_slice(&seq.0.to_be_bytes());
    m
}

/// `ASCII("baton.time.v1") ‖ 0 ‖ gateway ‖ 0 ‖ agent ‖ 0 ‖ id ‖ t0 ‖ t1 ‖ t2`
/// (each time 8-byte big-endian two's complement): what a gateway signs
/// in a clock reply (PROTOCOL §7, clock exchange).
pub fn time_message(
    gateway: &AgentId,
    agent: &AgentId,
    id: &[u8; 8],
    t0: i64,
    t1: i64,
    t2: i64,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(14 + gateway.as_str().len() + agent.as_str().len() + 34);
    m.extend_from_slice(b"baton.time.v1\0");
    m.extend_from_slice(gateway.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(agent.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(id);
    for t in [t0, t1, t2] {
        m.extend_from_slice(&t.to_be_bytes());
    }
    m
}

/// `ASCII("baton.receipt.v1") ‖ 0 ‖ gateway ‖ 0 ‖ agent ‖ 0 ‖ seq ‖ hash`.
pub fn receipt_message(gateway: &AgentId, agent: &AgentId, seq: Seq, hash: &Hash) -> Vec<u8> {
    let mut m = Vec::with_capacity(17 + gateway.as_str().len() + agent.as_str().len() + 42);
    m.extend_from_slice(b"baton.receipt.v1\0");
    m.extend_from_slice(gateway.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(agent.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(&seq.0.to_be_bytes());
    m.extend_from_slice(&hash.0);
    m
}

/// An Ed25519 public key: 32 bytes, 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Decodes a point without judging it. Use [`PublicKey::trusted`] for a
    /// key that is about to be trusted; this form exists so that a verifier
    /// can be handed any key and still reject every signature strictly.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        VerifyingKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| KeyError::NotAPoint)
    }

    /// Decodes a key that is to be trusted: small-order keys are refused.
    pub fn trusted(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let key = Self::from_bytes(bytes)?;
        if key.is_small_order() {
            return Err(KeyError::SmallOrder);
        }
        Ok(key)
    }

    /// [`PublicKey::trusted`] from 64 lowercase hex characters.
    pub fn trusted_hex(s: &str) -> Result<Self, KeyError> {
        Self::trusted(&decode_hex::<32>(s)?)
    }

    /// Reads a SubjectPublicKeyInfo PEM (`openssl pkey -pubout`) of a key
    /// that is to be trusted: small-order keys are refused.
    pub fn from_spki_pem(pem: &str) -> Result<Self, KeyError> {
        let key =
            VerifyingKey::from_public_key_pem(pem).map_err(|e| KeyError::Pkcs8(e.to_string()))?;
        Self::trusted(&key.to_bytes())
    }

    /// Writes SubjectPublicKeyInfo PEM.
    pub fn to_spki_pem(&self) -> String {
        // Encoding 32 bytes into a fixed DER template cannot fail.
        self.0
            .to_public_key_pem(Default::default())
            .unwrap_or_default()
    }

    pub fn is_small_order(&self) -> bool {
        self.0.is_weak()
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    /// Strict Ed25519 verification (PROTOCOL §4).
    pub fn verify(&self, message: &[u8], sig: &Sig) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        self.0.verify_strict(message, &sig).is_ok()
    }

    pub fn verify_checkpoint(&self, agent: &AgentId, seq: Seq, hash: &Hash, sig: &Sig) -> bool {
        self.verify(&checkpoint_message(agent, seq, hash), sig)
    }

    pub fn verify_receipt(
        &self,
        gateway: &AgentId,
        agent: &AgentId,
        seq: Seq,
        hash: &Hash,
        sig: &Sig,
    ) -> bool {
        self.verify(&receipt_message(gateway, agent, seq, hash), sig)
    }

    pub fn verify_nack(
        &self,
        gateway: &AgentId,
        agent: &AgentId,
        nonce: &Nonce,
        reason: &str,
        seq: Seq,
        sig: &Sig,
    ) -> bool {
        self.verify(&nack_message(gateway, agent, nonce, reason, seq), sig)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// An Ed25519 secret key. Its `Debug` never prints the key.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// The key for a 32-byte seed. Callers generate the seed from the OS's
    /// random source; this crate reads no entropy itself.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    /// A key generated from `seed`, refused if its public key would be of
    /// small order (possible only for a deliberately chosen seed).
    pub fn generate(seed: &[u8; 32]) -> Result<Self, KeyError> {
        let key = Self::from_seed(seed);
        if key.public().is_small_order() {
            return Err(KeyError::SmallOrder);
        }
        Ok(key)
    }

    /// Reads PKCS#8 PEM: v1 (what `openssl genpkey -algorithm ed25519`
    /// writes) or v2, whose embedded public key must match the seed.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Pkcs8(e.to_string()))?;
        Ok(Self(key))
    }

    /// Writes PKCS#8 v1 PEM (RFC 8410), as `openssl genpkey` does.
    pub fn to_pkcs8_pem(&self) -> String {
        let bytes = KeypairBytes {
            secret_key: self.0.to_bytes(),
            public_key: None,
        };
        // Encoding 32 bytes into a fixed DER template cannot fail.
        bytes
            .to_pkcs8_pem(Default::default())
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    /// Reads a seed written as 64 lowercase hex characters.
    pub fn from_seed_hex(s: &str) -> Result<Self, KeyError> {
        Ok(Self::from_seed(&decode_hex::<32>(s)?))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> Sig {
        Sig(self.0.sign(message).to_bytes())
    }

    pub fn sign_checkpoint(&self, agent: &AgentId, seq: Seq, hash: &Hash) -> Sig {
        self.sign(&checkpoint_message(agent, seq, hash))
    }

    pub fn sign_receipt(&self, gateway: &AgentId, agent: &AgentId, seq: Seq, hash: &Hash) -> Sig {
        self.sign(&receipt_message(gateway, agent, seq, hash))
    }

    pub fn sign_nack(
        &self,
        gateway: &AgentId,
        agent: &AgentId,
        nonce: &Nonce,
        reason: &str,
        seq: Seq,
    ) -> Sig {
        self.sign(&nack_message(gateway, agent, nonce, reason, seq))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public().to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_exact() {
        assert!(Hash::from_hex(&"ab".repeat(32)).is_ok());
        assert_eq!(
            Hash::from_hex(&"AB".repeat(32)).unwrap_err(),
            KeyError::HexDigit { ch: 'A', pos: 0 }
        );
        assert_eq!(
            Hash::from_hex("abc").unwrap_err(),
            KeyError::HexLength {
                expected: 64,
                got: 3
            }
        );
    }

    #[test]
    fn small_order_keys_are_not_trusted() {
        let identity = Hash::from_hex(&format!("01{}", "00".repeat(31))).unwrap();
        assert!(PublicKey::from_bytes(&identity.0).is_ok());
        assert_eq!(
            PublicKey::trusted(&identity.0).unwrap_err(),
            KeyError::SmallOrder
        );
    }

    #[test]
    fn secret_key_debug_hides_the_secret() {
        let key = SecretKey::from_seed(&[7; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains(&hex::encode([7u8; 32])));
        assert!(shown.contains(&key.public().to_hex()));
    }

    #[test]
    fn pem_round_trips() {
        let key = SecretKey::from_seed(&[9; 32]);
        let again = SecretKey::from_pkcs8_pem(&key.to_pkcs8_pem()).unwrap();
        assert_eq!(again.public(), key.public());
        assert!(SecretKey::from_pkcs8_pem("not a key").is_err());
    }
}
