//! Key files: PKCS#8 v1 PEM, mode 0600, beside the store and never inside it.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use baton_shared::SecretKey;

/// Creates a new key at `path`; refuses to overwrite an existing one.
pub fn generate(path: &Path) -> anyhow::Result<SecretKey> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let key = loop {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| anyhow::anyhow!("reading the OS random source: {e}"))?;
        // A small-order public key is refused (astronomically unlikely).
        if let Ok(k) = SecretKey::generate(&seed) {
            break k;
        }
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "creating key file {} (an existing key is never overwritten)",
                path.display()
            )
        })?;
    f.write_all(key.to_pkcs8_pem().as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing key file {}", path.display()))?;
    Ok(key)
}

/// Reads a key file.
pub fn load(path: &Path) -> anyhow::Result<SecretKey> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "reading key file {} (create it with `keygen`)",
            path.display()
        )
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "key file is readable by group or others; chmod 600 it");
    }
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("reading key file {}", path.display()))?;
    match SecretKey::from_pkcs8_pem(&pem) {
        Ok(k) => Ok(k),
        Err(e) => bail!("key file {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_writes_0600_pem_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/gateway.key");
        let key = generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).unwrap().public(), key.public());
        let again = generate(&path).unwrap_err().to_string();
        assert!(again.contains("never overwritten"), "{again}");
        std::fs::write(dir.path().join("bad.key"), "nonsense").unwrap();
        let e = load(&dir.path().join("bad.key")).unwrap_err().to_string();
        assert!(e.contains("bad.key"), "{e}");
    }
}
