//! Request ids: the client's if sane, else 32 random hex characters.

use http::HeaderValue;

/// A client-sent request id is kept if sane: 1–128 visible ASCII characters.
pub fn sane(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// 32 random hex characters.
pub fn new_request_id() -> HeaderValue {
    let mut hex = [0u8; 32];
    // Cannot fail: the buffer is exactly twice the input's length.
    let _ = hex::encode_to_slice(rand::random::<[u8; 16]>(), &mut hex);
    // Owned by a reference-counted block from the start: the id is cloned
    // into the upstream request and the response, and a plain copy would
    // be moved into a shared block (a second allocation) on its first clone.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(hex))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Request ids are visible ASCII (checked or generated), so this is exact.
pub fn as_str(v: &HeaderValue) -> &str {
    v.to_str().unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(sane(&HeaderValue::from_static("abc-123")));
        assert!(!sane(&HeaderValue::from_static("a b")));
        assert!(!sane(&HeaderValue::from_static("")));
        let long = "x".repeat(129);
        assert!(!sane(&HeaderValue::from_str(&long).unwrap()));
        assert_eq!(new_request_id().len(), 32);
    }
}
