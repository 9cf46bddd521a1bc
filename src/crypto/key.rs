//! The relay's RSA key: generation, PKCS#8 PEM load/save (0600, atomic), fingerprint, OAEP.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{PrivateKey, PublicKey};
use sha2::{Digest, Sha256};

/// Why a key could not be generated, loaded or saved.
#[derive(Debug)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or writing the key file (its path) failed.
    Io(String, std::io::Error),
    /// The key file (its path) is readable or writable by group or others (its mode).
    Permissions(String, u32),
    /// Not a PKCS#8 PEM RSA key.
    Parse(String),
    /// Key generation failed.
    Generate(String),
    /// The key size in bits is outside 2048..=4096 (or not a multiple of 8).
    BadSize(usize),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Io(p, e) => write!(f, "key file {p}: {e}"),
            KeyError::Permissions(p, m) => write!(
                f,
                "key file {p} has mode {m:04o}: it must not be accessible by group or others (chmod 600 {p})"
            ),
            KeyError::Parse(e) => write!(f, "key file is not a PKCS#8 PEM RSA private key: {e}"),
            KeyError::Generate(e) => write!(f, "RSA key generation failed: {e}"),
            KeyError::BadSize(b) => write!(
                f,
                "RSA key size {b} bits is not supported (2048..=4096, multiple of 8)"
            ),
        }
    }
}

impl std::error::Error for KeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KeyError::Io(_, e) => Some(e),
            _ => None,
        }
    }
}

/// Key sizes the relay accepts: 2048 to 4096 bits, a multiple of 8.
pub fn check_bits(bits: usize) -> Result<(), KeyError> {
    if (2048..=4096).contains(&bits) && bits.is_multiple_of(8) {
        Ok(())
    } else {
        Err(KeyError::BadSize(bits))
    }
}

/// The relay's key pair plus what the wire needs of it, computed once.
pub struct ServerKey {
    private: PrivateKey,
    pem: String,
    fingerprint: [u8; 32],
    modulus_len: usize,
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ServerKey({} bits, {})",
            self.modulus_len * 8,
            self.fingerprint_hex()
        )
    }
}

/// SHA-256 of the DER SubjectPublicKeyInfo.
pub fn fingerprint_of(public: &PublicKey) -> Result<[u8; 32], KeyError> {
    let der = public
        .to_public_key_der()
        .map_err(|e| KeyError::Parse(e.to_string()))?;
    Ok(Sha256::digest(der.as_bytes()).into())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl ServerKey {
    /// Wrap a private key (2048 to 4096 bits).
    pub fn from_private(private: PrivateKey) -> Result<Self, KeyError> {
        let public = private.to_public_key();
        let modulus_len = public.size();
        if !(256..=512).contains(&modulus_len) {
            return Err(KeyError::BadSize(modulus_len * 8));
        }
        let pem = public
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| KeyError::Parse(e.to_string()))?;
        let fingerprint = fingerprint_of(&public)?;
        Ok(ServerKey {
            private,
            pem,
            fingerprint,
            modulus_len,
        })
    }

    /// A fresh key with e = 65537.
    pub fn generate(bits: usize) -> Result<Self, KeyError> {
        check_bits(bits)?;
        let private = PrivateKey::new(&mut getrandom::SysRng, bits)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Self::from_private(private)
    }

    /// Parse a PKCS#8 PEM private key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let private =
            PrivateKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Parse(e.to_string()))?;
        Self::from_private(private)
    }

    /// Load `path`, or create it (mode 0600, atomically: written to a temporary file, then
    /// hard-linked into place so a concurrent creator is never overwritten). A file readable
    /// or writable by group or others is refused, as OpenSSH refuses such a private key.
    pub fn load_or_create(path: &Path, bits: usize) -> Result<(Self, bool), KeyError> {
        let name = path.display().to_string();
        match fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeyError::Permissions(name, mode));
                }
                let pem = fs::read_to_string(path).map_err(|e| KeyError::Io(name.clone(), e))?;
                Ok((Self::from_pkcs8_pem(&pem)?, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate(bits)?;
                key.save_new(path)?;
                Ok((key, true))
            }
            Err(e) => Err(KeyError::Io(name, e)),
        }
    }

    /// Write the private key to a new file `path` (fails if it exists), mode 0600.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyError> {
        let name = path.display().to_string();
        let io = |e| KeyError::Io(name.clone(), e);
        let pem = self
            .private
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Parse(e.to_string()))?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let file_name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let result = f
            .write_all(pem.as_bytes())
            .and_then(|_| f.sync_all())
            .and_then(|_| fs::hard_link(&tmp, path));
        let _ = fs::remove_file(&tmp);
        result.map_err(io)
    }

    /// The public key as PEM SubjectPublicKeyInfo (what PUBLIC_KEY carries).
    pub fn public_pem(&self) -> &str {
        &self.pem
    }

    /// SHA-256 of the DER SubjectPublicKeyInfo.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// The fingerprint as 64 lowercase hex digits.
    pub fn fingerprint_hex(&self) -> String {
        hex(&self.fingerprint)
    }

    /// Modulus size in bytes: the exact length of a valid OAEP ciphertext.
    pub fn modulus_len(&self) -> usize {
        self.modulus_len
    }

    /// RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) decryption, blinded (rsa ≥ 0.10).
    pub fn oaep_decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, rsa::Error> {
        self.private.oaep_decrypt::<rsa::sha2::Sha256>(ciphertext)
    }
}

/// Parse a relay public key from PEM and return it with its fingerprint.
pub fn public_key_from_pem(pem: &[u8]) -> Result<(PublicKey, [u8; 32]), KeyError> {
    use rsa::pkcs8::DecodePublicKey;
    let text = std::str::from_utf8(pem).map_err(|e| KeyError::Parse(e.to_string()))?;
    let public =
        PublicKey::from_public_key_pem(text).map_err(|e| KeyError::Parse(e.to_string()))?;
    let fp = fingerprint_of(&public)?;
    Ok((public, fp))
}

/// RSA-OAEP-SHA256 encryption (clients use it for REGISTER).
pub fn oaep_encrypt(public: &PublicKey, plaintext: &[u8]) -> Result<Vec<u8>, rsa::Error> {
    public.oaep_encrypt::<rsa::sha2::Sha256>(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_and_permissions() {
        let dir = std::env::temp_dir().join(format!("mcrelay-key-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.pem");
        let (k1, created) = ServerKey::load_or_create(&path, 2048).unwrap();
        assert!(created);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (k2, created) = ServerKey::load_or_create(&path, 2048).unwrap();
        assert!(!created);
        assert_eq!(k1.fingerprint(), k2.fingerprint());
        assert_eq!(k1.modulus_len(), 256);
        // Refused when group-readable.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            ServerKey::load_or_create(&path, 2048),
            Err(KeyError::Permissions(..))
        ));
        // save_new never overwrites.
        assert!(k1.save_new(&path).is_err());
        // OAEP round trip and fingerprint of the PEM.
        let (public, fp) = public_key_from_pem(k1.public_pem().as_bytes()).unwrap();
        assert_eq!(&fp, k1.fingerprint());
        let ct = oaep_encrypt(&public, b"secret").unwrap();
        assert_eq!(ct.len(), 256);
        assert_eq!(k1.oaep_decrypt(&ct).unwrap(), b"secret");
        assert!(k1.oaep_decrypt(&[0u8; 256]).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
