//! Operator authority over HTTP: the operator token.
//!
//! Every state-changing request (enroll, unenroll, resolve, load, opening a
//! window) carries `Authorization: Bearer <token>`; reads may be required
//! to as well (`http_read_auth`). The token is 32 random bytes in a 0600
//! file beside the store (`operator.token`), made at the first start or by
//! `baton-gateway operator-token`, which shows it once; `--rotate` replaces
//! it, and a running gateway honours the new one at its next request (it
//! re-reads the file when the file changes). The gateway's chain records
//! each operator action with the token's fingerprint, never the token.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::Context;
use subtle::ConstantTimeEq;

const PREFIX: &str = "baton-op1.";

/// A token's fingerprint: the first 16 hex characters of its SHA-256, as
/// operator entries name the credential.
pub fn fingerprint(token: &str) -> String {
    baton_shared::crypto::sha256(token.as_bytes()).to_hex()[..16].to_owned()
}

/// Makes a new token and writes it to `path` (0600, atomically);
/// `replace` rotates an existing one. Returns the token.
pub fn create(path: &Path, replace: bool) -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("reading the OS random source: {e}"))?;
    let token = format!(
        "{PREFIX}{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    baton_runtime::keys::write_secret(path, format!("{token}\n").as_bytes(), replace)?;
    Ok(token)
}

/// The token a running gateway checks requests against.
#[derive(Debug)]
pub struct OperatorToken {
    path: PathBuf,
    /// The file's modification time when last read, and its token.
    cached: Mutex<Option<(SystemTime, String)>>,
}

/// Why a request's credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("this needs the operator token: Authorization: Bearer <token> (see README, Security)")]
    Missing,
    #[error("the operator token does not match")]
    Wrong,
    #[error("the operator token file cannot be read: {0}")]
    Unreadable(String),
}

impl OperatorToken {
    /// Uses the token in `path`, creating one if there is none (logged, not
    /// printed: `baton-gateway operator-token` shows it).
    pub fn open(path: &Path) -> anyhow::Result<OperatorToken> {
        if !path.exists() {
            create(path, false).with_context(|| format!("creating {}", path.display()))?;
            tracing::info!(path = %path.display(), "operator token created (show it with `baton-gateway operator-token`)");
        }
        let t = OperatorToken {
            path: path.to_owned(),
            cached: Mutex::new(None),
        };
        t.current().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(t)
    }

    /// The token now in the file (re-read when the file changed).
    fn current(&self) -> Result<String, TokenError> {
        let unreadable =
            |e: std::io::Error| TokenError::Unreadable(format!("{}: {e}", self.path.display()));
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .map_err(unreadable)?;
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, token)) = cached.as_ref()
            && *at == modified
        {
            return Ok(token.clone());
        }
        let text = std::fs::read_to_string(&self.path).map_err(unreadable)?;
        let token = text.trim().to_owned();
        if !token.starts_with(PREFIX) {
            return Err(TokenError::Unreadable(format!(
                "{}: not an operator token",
                self.path.display()
            )));
        }
        *cached = Some((modified, token.clone()));
        Ok(token)
    }

    /// Checks an `Authorization` header value; the fingerprint of the
    /// token it carried when it matches.
    pub fn check(&self, authorization: Option<&str>) -> Result<String, TokenError> {
        let presented = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(TokenError::Missing)?;
        let token = self.current()?;
        if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
            Ok(fingerprint(&token))
        } else {
            Err(TokenError::Wrong)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_in_the_file_is_the_one_accepted_and_rotation_takes_effect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operator.token");
        let t = OperatorToken::open(&path).unwrap();
        let token = std::fs::read_to_string(&path).unwrap().trim().to_owned();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let bearer = format!("Bearer {token}");
        assert_eq!(t.check(Some(&bearer)), Ok(fingerprint(&token)));
        assert_eq!(t.check(None), Err(TokenError::Missing));
        assert_eq!(t.check(Some(&token)), Err(TokenError::Missing));
        assert_eq!(t.check(Some("Bearer baton-op1.00")), Err(TokenError::Wrong));
        assert!(
            create(&path, false).is_err(),
            "never overwritten without --rotate"
        );
        // rotation: the old token stops working, the new one works
        std::thread::sleep(std::time::Duration::from_millis(20));
        let new = create(&path, true).unwrap();
        assert_ne!(new, token);
        assert_eq!(t.check(Some(&bearer)), Err(TokenError::Wrong));
        assert!(t.check(Some(&format!("Bearer {new}"))).is_ok());
    }
}
