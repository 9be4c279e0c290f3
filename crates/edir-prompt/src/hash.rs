//! Content hashes: BLAKE3 of the exact bytes, as lower-case hex.

/// BLAKE3 of `bytes` as 64 lower-case hex digits. Templates, schemas and pipelines are hashed
/// by content with this, so a changed byte changes every cache key that depends on it.
#[must_use]
pub fn content_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}
