//! Leaves every other module may use: header names, request ids, hex digits,
//! a map of deadlines, JSON strings.
//! Nothing here imports from the rest of the crate.

pub mod deadlines;
pub mod headers;
pub mod json;
pub mod request_id;

/// One problem with one field of a config block that validates itself
/// (`acme`, `cluster`): `field` is relative to the block (`directory`,
/// `redis[1]`, `timeout`, …); the config layer prefixes the block's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The value of one hex digit, either case.
pub fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
