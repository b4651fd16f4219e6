//! CURVE keys: the Z85 text form, key files, and the public key derived from a secret one
//! (PROTOCOL.md §11).
//!
//! Why here, in `config`: a key file and the `public_key` entries of `config.json` are input
//! an operator writes, so they are checked up front, with the config, into one clear line;
//! the transport only ever sees validated 32-byte keys.
//!
//! A key file is a text file whose first line is a 40-character Z85 CURVE secret key; the
//! public key is derived from it (Curve25519 scalar multiplication of the base point, done
//! by libzmq's `zmq_curve_public`).

use std::fmt;
use std::io::Write;
use std::path::Path;

/// A CURVE key in binary form.
pub type Key = [u8; 32];

/// Characters of a key in Z85.
pub const Z85_KEY_CHARS: usize = 40;

const Z85_ALPHABET: &[u8; 85] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Why a key or key file was refused. `Display` is one line.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("empty key")]
    Empty,
    #[error("a key is {Z85_KEY_CHARS} Z85 characters, found {0}")]
    Length(usize),
    #[error("not Z85: character {0:?} at position {1}")]
    NotZ85(char, usize),
    #[error("not Z85: group at position {0} is out of range")]
    Overflow(usize),
    #[error("{path}: cannot read key file: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    BadFile { path: String, source: Box<KeyError> },
    #[error("{path}: cannot write key file: {source}")]
    Unwritable {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot derive a public key: libzmq has no CURVE")]
    NoCurve,
}

/// A node's or client's own key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub public: Key,
    pub secret: Key,
}

impl fmt::Debug for KeyPair {
    /// Never prints the secret key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair {{ public: {} }}", z85_encode(&self.public))
    }
}

impl KeyPair {
    /// The pair of `secret`.
    pub fn from_secret(secret: Key) -> Result<KeyPair, KeyError> {
        Ok(KeyPair {
            public: public_from_secret(&secret)?,
            secret,
        })
    }

    /// A fresh random pair (libzmq's `zmq_curve_keypair`, libsodium's randomness).
    pub fn generate() -> Result<KeyPair, KeyError> {
        let pair = zmq::CurveKeyPair::new().map_err(|_| KeyError::NoCurve)?;
        Ok(KeyPair {
            public: pair.public_key,
            secret: pair.secret_key,
        })
    }
}

/// `key` in Z85: 40 characters.
pub fn z85_encode(key: &Key) -> String {
    let mut text = String::with_capacity(Z85_KEY_CHARS);
    for chunk in key.chunks(4) {
        let mut value = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let mut group = [0u8; 5];
        for slot in group.iter_mut().rev() {
            *slot = Z85_ALPHABET[(value % 85) as usize];
            value /= 85;
        }
        text.extend(group.iter().map(|&byte| byte as char));
    }
    text
}

/// A 40-character Z85 key (surrounding whitespace ignored) in binary form.
pub fn z85_decode(text: &str) -> Result<Key, KeyError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(KeyError::Empty);
    }
    let count = text.chars().count();
    if count != Z85_KEY_CHARS {
        return Err(KeyError::Length(count));
    }
    let mut key = [0u8; 32];
    for (group, chunk) in text.as_bytes().chunks(5).enumerate() {
        let mut value: u64 = 0;
        for (offset, &byte) in chunk.iter().enumerate() {
            let digit = Z85_ALPHABET
                .iter()
                .position(|&c| c == byte)
                .ok_or(KeyError::NotZ85(byte as char, group * 5 + offset))?;
            value = value * 85 + digit as u64;
        }
        let value = u32::try_from(value).map_err(|_| KeyError::Overflow(group * 5))?;
        key[group * 4..group * 4 + 4].copy_from_slice(&value.to_be_bytes());
    }
    Ok(key)
}

extern "C" {
    // libzmq's own; the `zmq-sys` crate declares but does not export it.
    fn zmq_curve_public(
        z85_public_key: *mut std::os::raw::c_char,
        z85_secret_key: *const std::os::raw::c_char,
    ) -> std::os::raw::c_int;
}

/// The public key of `secret`.
pub fn public_from_secret(secret: &Key) -> Result<Key, KeyError> {
    let secret_text = std::ffi::CString::new(z85_encode(secret)).map_err(|_| KeyError::NoCurve)?;
    let mut public_text = [0 as std::os::raw::c_char; Z85_KEY_CHARS + 1];
    // SAFETY: libzmq reads a 41-byte NUL-terminated string and writes 41 bytes.
    let rc = unsafe { zmq_curve_public(public_text.as_mut_ptr(), secret_text.as_ptr()) };
    if rc != 0 {
        return Err(KeyError::NoCurve);
    }
    let text: String = public_text[..Z85_KEY_CHARS]
        .iter()
        .map(|&c| c as u8 as char)
        .collect();
    z85_decode(&text)
}

/// Reads a key file: its first line is the Z85 secret key.
pub fn load_key_file(path: &Path) -> Result<KeyPair, KeyError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Unreadable {
        path: shown.clone(),
        source,
    })?;
    let first = text.lines().next().unwrap_or("");
    let bad = |source: KeyError| KeyError::BadFile {
        path: shown.clone(),
        source: Box::new(source),
    };
    let secret = z85_decode(first).map_err(bad)?;
    KeyPair::from_secret(secret).map_err(bad)
}

/// Writes a new key file at `path` (mode 0600; refuses to overwrite anything) and returns
/// its pair.
pub fn write_new_key_file(path: &Path) -> Result<KeyPair, KeyError> {
    let pair = KeyPair::generate()?;
    let unwritable = |source| KeyError::Unwritable {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(unwritable)?;
    writeln!(file, "{}", z85_encode(&pair.secret)).map_err(unwritable)?;
    file.sync_all().map_err(unwritable)?;
    Ok(pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z85_round_trips_and_matches_libzmq() {
        let pair = KeyPair::generate().expect("keypair");
        let text = z85_encode(&pair.public);
        assert_eq!(text, zmq::z85_encode(&pair.public).expect("libzmq encode"));
        assert_eq!(z85_decode(&text).expect("decode"), pair.public);
    }

    #[test]
    fn the_public_key_is_derived_from_the_secret_one() {
        let pair = KeyPair::generate().expect("keypair");
        assert_eq!(
            KeyPair::from_secret(pair.secret).expect("derive"),
            pair.clone()
        );
    }

    #[test]
    fn hostile_keys_are_refused() {
        assert!(matches!(z85_decode(""), Err(KeyError::Empty)));
        assert!(matches!(z85_decode("   "), Err(KeyError::Empty)));
        assert!(matches!(z85_decode("abc"), Err(KeyError::Length(3))));
        let long = "a".repeat(41);
        assert!(matches!(z85_decode(&long), Err(KeyError::Length(41))));
        let bad_char = format!("{}~", "a".repeat(39));
        assert!(matches!(
            z85_decode(&bad_char),
            Err(KeyError::NotZ85('~', 39))
        ));
        let multibyte = format!("{}é", "a".repeat(39));
        assert!(z85_decode(&multibyte).is_err());
        // "#####" is 85^5 - 1, above u32::MAX.
        let overflow = format!("#####{}", "0".repeat(35));
        assert!(matches!(z85_decode(&overflow), Err(KeyError::Overflow(0))));
    }

    #[test]
    fn key_files_are_written_once_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        let pair = write_new_key_file(&path).expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(load_key_file(&path).expect("load"), pair);
        assert!(matches!(
            write_new_key_file(&path),
            Err(KeyError::Unwritable { .. })
        ));
        assert_eq!(load_key_file(&path).expect("unchanged"), pair);
    }

    #[test]
    fn bad_key_files_are_refused_with_their_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.key");
        let error = load_key_file(&missing).expect_err("missing");
        assert!(matches!(error, KeyError::Unreadable { .. }));
        assert!(error.to_string().contains("missing.key"));
        for (name, text) in [
            ("empty.key", ""),
            ("short.key", "abc\n"),
            ("notz85.key", &format!("{}~\n", "a".repeat(39))),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            let error = load_key_file(&path).expect_err(name);
            assert!(matches!(error, KeyError::BadFile { .. }), "{name}");
            assert!(!error.to_string().contains('\n'), "{name}: one line");
        }
    }
}
