//! Secrets Weft hands out (API tokens, join tokens, node credentials, session ids): how
//! they are made, hashed for storage and compared.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of Weft API tokens; lets secret scanners recognise a leaked one.
pub const TOKEN_PREFIX: &str = "weft_";

/// Prefix of join tokens: a node's one-time registration secret, never a bearer token.
/// It still starts with `weft_`, so scanners that know Weft secrets find it too.
pub const JOIN_TOKEN_PREFIX: &str = "weft_join_";

/// A new random secret: `weft_` + 256 bits, and the hash we store.
pub fn new_token() -> (String, Vec<u8>) {
    let token = random_secret(TOKEN_PREFIX);
    let hash = hash_token(&token);
    (token, hash)
}

/// `prefix` + 256 random bits, base64url.
pub fn random_secret(prefix: &str) -> String {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(raw))
}

/// Tokens carry 256 bits of entropy, so a plain SHA-256 is a safe at-rest hash
/// (no dictionary to slow down, unlike passwords).
pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Compares two secrets' hashes in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, ha) = new_token();
        let (b, hb) = new_token();
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert_eq!(hash_token(&a), ha);
        assert_eq!(ha.len(), 32);
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
