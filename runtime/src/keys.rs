//! Key files: PKCS#8 v1 PEM, mode 0600, beside the store and never inside it.
//!
//! Creation is atomic: the key is written to a temporary file in the same
//! directory, synced, linked into place (which fails if a key is already
//! there: an existing key is never overwritten) and the directory synced.
//! A power cut at any point leaves either no key file or a whole one —
//! never the empty or half-written `agent.key` that kept a device from
//! finishing first boot without a person.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use baton_shared::SecretKey;

/// Creates a new key at `path`; refuses to overwrite an existing one.
pub fn generate(path: &Path) -> anyhow::Result<SecretKey> {
    if path.exists() {
        bail!(
            "creating key file {}: it exists (an existing key is never overwritten)",
            path.display()
        );
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
    write_secret(path, key.to_pkcs8_pem().as_bytes(), false)?;
    Ok(key)
}

/// Writes `bytes` to `path` as a whole file of mode 0600, atomically: a
/// power cut leaves the old file or the new one, never a part. Without
/// `replace` an existing file is never overwritten (the call fails).
pub fn write_secret(path: &Path, bytes: &[u8], replace: bool) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = Temp::create(&dir, path)?;
    let mut f = &tmp.file;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.path.display()))?;
    if replace {
        std::fs::rename(&tmp.path, path)
            .with_context(|| format!("replacing {}", path.display()))?;
    } else {
        // A hard link, not a rename: it fails if `path` appeared meanwhile.
        std::fs::hard_link(&tmp.path, path).with_context(|| {
            format!(
                "creating {} (an existing file is never overwritten)",
                path.display()
            )
        })?;
    }
    drop(tmp);
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))?;
    Ok(())
}

/// A temporary file beside the key, removed when dropped.
struct Temp {
    path: PathBuf,
    file: std::fs::File,
}

impl Temp {
    fn create(dir: &Path, target: &Path) -> anyhow::Result<Temp> {
        let name = target
            .file_name()
            .map_or_else(|| "key".into(), |n| n.to_string_lossy().into_owned());
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix)
            .map_err(|e| anyhow::anyhow!("reading the OS random source: {e}"))?;
        let path = dir.join(format!(".{name}.tmp-{}", u64::from_le_bytes(suffix)));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Temp { path, file })
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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
        assert_eq!(load(&path).unwrap().public(), key.public());
        std::fs::write(dir.path().join("bad.key"), "nonsense").unwrap();
        let e = load(&dir.path().join("bad.key")).unwrap_err().to_string();
        assert!(e.contains("bad.key"), "{e}");
        // nothing but the key is left in its directory
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["gateway.key"]);
    }

    #[test]
    fn a_truncated_key_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        generate(&path).unwrap();
        let pem = std::fs::read(&path).unwrap();
        for len in [0, pem.len() / 2] {
            std::fs::write(&path, &pem[..len]).unwrap();
            let e = load(&path).unwrap_err().to_string();
            assert!(e.contains("agent.key"), "{e}");
        }
    }
}
