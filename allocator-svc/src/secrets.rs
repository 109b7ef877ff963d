//! Secrets at rest: BGP passwords are stored sealed with AES-256-GCM under the allocator's
//! secrets key, bound to the object they belong to (a sealed password moved to another row does
//! not open). The key is a file of 32 random bytes that every replica of one database shares.

use std::path::Path;

use ferrolb_common::Secret;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::Error;

const KEY_LEN: usize = 32;
/// Sealed values start with their format.
const PREFIX: &str = "v1:";

/// Seals and opens secrets with one key.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key redacted>)")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Sealer {
    fn from_bytes(bytes: &[u8]) -> Result<Sealer, String> {
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| format!("a secrets key is {KEY_LEN} bytes"))?;
        Ok(Sealer {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// A key of its own, for tests and stores nobody reopens.
    pub fn ephemeral() -> Sealer {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system's random source works");
        Sealer::from_bytes(&bytes).expect("a 32-byte key")
    }

    /// Reads the key file, or creates it (mode 0600) when `create` and it does not exist.
    pub fn from_file(path: &Path, create: bool) -> Result<Sealer, String> {
        let shown = path.display();
        match std::fs::read(path) {
            Ok(bytes) => Sealer::from_bytes(&bytes).map_err(|e| format!("{shown}: {e}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let mut bytes = [0u8; KEY_LEN];
                SystemRandom::new()
                    .fill(&mut bytes)
                    .map_err(|_| "the system's random source failed".to_string())?;
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| format!("{shown}: {e}"))?;
                f.write_all(&bytes).map_err(|e| format!("{shown}: {e}"))?;
                tracing::info!(key = %shown, "created the secrets key that BGP passwords are sealed with");
                Sealer::from_bytes(&bytes)
            }
            Err(e) => Err(format!("{shown}: {e}")),
        }
    }

    /// Seals `secret` for the object `context` names.
    pub fn seal(&self, secret: &Secret, context: &str) -> Result<String, Error> {
        if secret.expose().is_empty() {
            return Ok(String::new());
        }
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| Error::Internal("the system's random source failed".into()))?;
        let mut data = secret.expose().as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| Error::Internal("sealing a secret failed".into()))?;
        Ok(format!("{PREFIX}{}{}", hex(&nonce), hex(&data)))
    }

    /// Opens what [`Sealer::seal`] made for the same `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Secret, Error> {
        if sealed.is_empty() {
            return Ok(Secret::default());
        }
        let fail = || {
            Error::Internal(format!(
                "the stored secret of {context} does not open with this allocator's secrets key (--secrets-key-file must be the same on every replica)"
            ))
        };
        let bytes = sealed
            .strip_prefix(PREFIX)
            .and_then(unhex)
            .filter(|b| b.len() > NONCE_LEN)
            .ok_or_else(fail)?;
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail())?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| fail())?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| fail())?;
        Ok(Secret::new(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open() {
        let s = Sealer::ephemeral();
        let pw = Secret::new("s3cret");
        let sealed = s.seal(&pw, "home/peer-a").expect("seals");
        assert!(sealed.starts_with("v1:") && !sealed.contains("s3cret"));
        assert_ne!(
            sealed,
            s.seal(&pw, "home/peer-a").expect("seals"),
            "fresh nonce"
        );
        assert_eq!(s.open(&sealed, "home/peer-a").expect("opens"), pw);
        // Bound to its object, and to its key.
        assert!(s.open(&sealed, "home/peer-b").is_err());
        assert!(Sealer::ephemeral().open(&sealed, "home/peer-a").is_err());
        assert!(s.open("v1:zz", "home/peer-a").is_err());
        assert_eq!(s.seal(&Secret::default(), "x").expect("empty"), "");
        assert_eq!(format!("{s:?}"), "Sealer(<key redacted>)");
    }
}
