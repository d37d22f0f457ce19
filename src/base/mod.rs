//! Leaves every other module may use: header names, request ids, hex digits.
//! Nothing here imports from the rest of the crate.

pub mod headers;
pub mod request_id;

/// The value of one hex digit, either case.
pub fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
