//! Broker logins by signature: the MQTT password of a device (or a child
//! gateway's forwarder) is a fresh signature by its own enrolled key over
//! its client id and a login counter, so the broker authenticates it with
//! the key enrollment already gave the gateway — no second secret to
//! provision.
//!
//! ```text
//! login_message(client_id, counter) =
//!     ASCII("baton.login.v1") ‖ 0x00 ‖ UTF-8(client_id) ‖ 0x00 ‖ counter (8-byte big-endian)
//! password = "baton1." ‖ counter (decimal) ‖ "." ‖ hex(sig) [ ‖ "." ‖ hex(public key) ]
//! ```
//!
//! The counter is the client's wall clock in ms, or one more than the last
//! one it used when its clock went back (a device without a real-time
//! clock boots in 1970): it only has to grow. The broker refuses a login
//! whose counter is not above the last one it accepted for that id, so a
//! password is good once. The counter is deliberately not held to the
//! broker's clock: a device whose clock is years off must still connect,
//! sync its clock and deliver (PROTOCOL §7).
//!
//! The public key rides along only while the device may not be enrolled yet
//! (trust on first use); a broker verifies an enrolled id under its
//! enrolled key and ignores the one offered. This is Baton's deployment of
//! MQTT, not part of PROTOCOL.md: a Mosquitto broker uses per-device
//! passwords instead.

use crate::crypto::{PublicKey, SecretKey, Sig, decode_hex};

const PREFIX: &str = "baton1.";

/// `ASCII("baton.login.v1") ‖ 0 ‖ client_id ‖ 0 ‖ counter`.
pub fn login_message(client_id: &str, counter: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + client_id.len() + 8);
    m.extend_from_slice(b"baton.login.v1\0");
    m.extend_from_slice(client_id.as_bytes());
    m.push(0);
    m.extend_from_slice(&counter.to_be_bytes());
    m
}

/// The password for `client_id` with `counter`, with the public key when
/// `offer_key` (a device that may be enrolled on first use).
pub fn password(key: &SecretKey, client_id: &str, counter: i64, offer_key: bool) -> String {
    let sig = key.sign(&login_message(client_id, counter));
    let mut p = format!("{PREFIX}{counter}.{}", sig.to_hex());
    if offer_key {
        p.push('.');
        p.push_str(&key.public().to_hex());
    }
    p
}

/// A signature login taken apart (not yet verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub counter: i64,
    pub sig: Sig,
    pub offered_key: Option<[u8; 32]>,
}

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("not a Baton signature login")]
    Malformed,
    #[error(
        "login counter {counter} is not above {last}, the last accepted for this id (a replay)"
    )]
    Replayed { counter: i64, last: i64 },
    #[error("no key to verify the login: not enrolled, and no window open")]
    Unknown,
    #[error("the login's signature does not verify under the enrolled key")]
    BadSignature,
}

impl Login {
    /// Parses a password; `None` unless it is a signature login.
    pub fn parse(password: &str) -> Result<Login, LoginError> {
        let rest = password.strip_prefix(PREFIX).ok_or(LoginError::Malformed)?;
        let mut parts = rest.split('.');
        let ms = parts.next().ok_or(LoginError::Malformed)?;
        let sig = parts.next().ok_or(LoginError::Malformed)?;
        let key = parts.next();
        if parts.next().is_some() || ms.is_empty() || ms.len() > 19 {
            return Err(LoginError::Malformed);
        }
        let counter = ms.parse::<i64>().map_err(|_| LoginError::Malformed)?;
        let sig = Sig::from_hex(sig).map_err(|_| LoginError::Malformed)?;
        let offered_key = key
            .map(decode_hex::<32>)
            .transpose()
            .map_err(|_| LoginError::Malformed)?;
        Ok(Login {
            counter,
            sig,
            offered_key,
        })
    }

    /// Checks that the counter is above `last` (the last accepted for the
    /// id, if any), then the signature under `key`.
    pub fn verify(
        &self,
        client_id: &str,
        key: &PublicKey,
        last: Option<i64>,
    ) -> Result<(), LoginError> {
        if let Some(last) = last
            && self.counter <= last
        {
            return Err(LoginError::Replayed {
                counter: self.counter,
                last,
            });
        }
        if !key.verify(&login_message(client_id, self.counter), &self.sig) {
            return Err(LoginError::BadSignature);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_logs_in_once_and_nothing_else_does() {
        let key = SecretKey::from_seed(&[3; 32]);
        let pk = key.public();
        let now = 1_800_000_000_000;
        let p = password(&key, "pi-1", now, false);
        let login = Login::parse(&p).unwrap();
        assert_eq!(login.offered_key, None);
        assert_eq!(login.verify("pi-1", &pk, None), Ok(()));
        assert_eq!(login.verify("pi-1", &pk, Some(now - 1)), Ok(()));
        // another id, another key, a replay
        assert_eq!(
            login.verify("pi-2", &pk, None),
            Err(LoginError::BadSignature)
        );
        let other = SecretKey::from_seed(&[4; 32]).public();
        assert_eq!(
            login.verify("pi-1", &other, None),
            Err(LoginError::BadSignature)
        );
        assert_eq!(
            login.verify("pi-1", &pk, Some(now)),
            Err(LoginError::Replayed {
                counter: now,
                last: now
            })
        );
        // a clock years behind still logs in: only growth counts
        let old = Login::parse(&password(&key, "pi-1", 5, false)).unwrap();
        assert_eq!(old.verify("pi-1", &pk, None), Ok(()));
        // with the key offered, for trust on first use
        let offered = Login::parse(&password(&key, "pi-1", now, true)).unwrap();
        assert_eq!(offered.offered_key, Some(pk.to_bytes()));
    }

    #[test]
    fn malformed_passwords_are_refused_without_panicking() {
        let key = SecretKey::from_seed(&[3; 32]);
        let good = password(&key, "pi-1", 5, true);
        for bad in [
            "",
            "secret",
            "baton1.",
            "baton1.5",
            "baton1.x.00",
            "baton1.99999999999999999999.00",
            &good.replace("baton1.", "baton2."),
            &format!("{good}.00"),
            &good[..good.len() - 1],
            &good.to_uppercase(),
        ] {
            assert_eq!(Login::parse(bad), Err(LoginError::Malformed), "{bad:?}");
        }
    }
}
