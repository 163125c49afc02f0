//! What Weir's HTTP/1 codec shares between requests and responses: field lookups on
//! `httparse` heads, the hop-by-hop rules of the general path on raw names, and writing
//! fields.

use httparse::Header;

use super::super::headers::{HOP_BY_HOP, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use crate::data::http1::{self as fields, Connection};

/// Whether `name` is a hop-by-hop field (the general path's list, `Transfer-Encoding`
/// included: Weir writes the framing it derived).
pub(super) fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.as_str().eq_ignore_ascii_case(name))
}

/// Whether `name` is one of the `X-Forwarded-*` fields Weir sets itself.
pub(super) fn is_x_forwarded(name: &str) -> bool {
    [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST].iter().any(|x| x.as_str().eq_ignore_ascii_case(name))
}

/// The values of every `name` field.
pub(super) fn values<'h>(headers: &'h [Header<'h>], name: &'static str) -> impl Iterator<Item = &'h [u8]> + 'h {
    headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
}

/// The `Connection` fields of a head.
pub(super) fn connection(headers: &[Header<'_>]) -> Connection {
    Connection::parse(values(headers, "connection"))
}

/// Whether a field called `name` goes for being named in `Connection`.
pub(super) fn listed(conn: &Connection, headers: &[Header<'_>], name: &str) -> bool {
    conn.lists_others && fields::tokens(values(headers, "connection")).any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

/// Writes `name: value` and CRLF.
pub(super) fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    for part in [name, b": ", value, b"\r\n"] {
        out.extend_from_slice(part);
    }
}

/// Writes a decimal number.
pub(super) fn number(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Where a head ends: the same rule for request and response heads, and for every codec.
pub use crate::data::http1::head_ended;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_numbers() {
        for n in [0, 7, 10, 65_536, u64::MAX] {
            let mut out = Vec::new();
            number(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
