//! JSON strings written by hand (the access log's lines, the error bodies):
//! text with nothing to escape is copied as it is, anything else goes
//! through serde_json's escaper, so the output is what serde_json writes.

/// Whether `s` holds a byte JSON requires escaping: `"`, `\` or a control
/// character.
pub fn needs_escape(s: &str) -> bool {
    !s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// `s` as a JSON string, known to need no escaping.
pub fn push_plain(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// `s` as a JSON string.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s) {
        push_plain(out, s);
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        // Writing to a Vec cannot fail; keep the output valid JSON anyway.
        out.extend_from_slice(b"\"\"");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_serde_json_writes() {
        for s in [
            "",
            "plain",
            "r\"1",
            "back\\slash",
            "tab\there",
            "\u{1}\u{1f}",
            "é ✓",
        ] {
            let mut out = Vec::new();
            push_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).expect("json"), "{s:?}");
        }
        assert!(needs_escape("a\"b") && needs_escape("a\\b") && needs_escape("a\nb"));
        assert!(!needs_escape("é ✓ ~!#$%&'()*+,-./:;<=>?@[]^_`{|}"));
    }
}
