//! Authority values (`Host`, `:authority`) as RFC 3986 §3.2.2 defines them: `host[:port]`,
//! where host is a registered name, an IPv4 address or a bracketed IPv6 literal.
//!
//! A value with `/`, `?`, `#`, `@`, white space or anything else outside the grammar is refused
//! before routing: an authority that is pasted into a URI string can otherwise move text into
//! the path the upstream receives (`Host: x/admin#` turning `GET /public` into `GET /admin`).

/// Whether `value` is a valid `host[:port]`. The empty string is not.
pub fn is_valid(value: &[u8]) -> bool {
    let (host, port) = split_port(value);
    if let Some(port) = port
        && !(port.is_empty() || (port.len() <= 5 && port.iter().all(u8::is_ascii_digit)))
    {
        return false;
    }
    match host {
        [b'[', literal @ .., b']'] => is_ip_literal(literal),
        [] => false,
        name => name.iter().all(|&b| is_reg_name_byte(b)) && pct_encodings_complete(name),
    }
}

/// Splits off `:port` (the last colon outside an IPv6 literal).
fn split_port(value: &[u8]) -> (&[u8], Option<&[u8]>) {
    let search_from = if value.first() == Some(&b'[') {
        match value.iter().position(|&b| b == b']') {
            Some(close) => close,
            None => return (value, None),
        }
    } else {
        0
    };
    match value[search_from..].iter().rposition(|&b| b == b':') {
        Some(at) => (&value[..search_from + at], Some(&value[search_from + at + 1..])),
        None => (value, None),
    }
}

/// `unreserved / pct-encoded / sub-delims` (the `%` is checked by [`pct_encodings_complete`]).
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',')
        || matches!(b, b';' | b'=')
}

/// Every `%` is followed by two hex digits.
fn pct_encodings_complete(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        if name[i] == b'%' {
            let digits = name.get(i + 1..i + 3);
            if !digits.is_some_and(|d| d.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// An IPv6 address (zone ids are not allowed in URIs) or an `IPvFuture` literal.
fn is_ip_literal(literal: &[u8]) -> bool {
    if let [b'v' | b'V', rest @ ..] = literal {
        // IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )
        return match rest.iter().position(|&b| b == b'.') {
            Some(dot) if dot > 0 => {
                rest[..dot].iter().all(u8::is_ascii_hexdigit)
                    && rest.len() > dot + 1
                    && rest[dot + 1..].iter().all(|&b| b != b'%' && (is_reg_name_byte(b) || b == b':'))
            }
            _ => false,
        };
    }
    std::str::from_utf8(literal).ok().and_then(|text| text.parse::<std::net::Ipv6Addr>().ok()).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_with_and_without_ports_are_valid() {
        for value in [
            "example.com",
            "example.com:8080",
            "gallery-api",
            "127.0.0.1:9080",
            "[::1]:8080",
            "[2001:db8::7]",
            "xn--bcher-kva.example",
            "a%2Db.example",
            "host:",
        ] {
            assert!(is_valid(value.as_bytes()), "{value}");
        }
    }

    #[test]
    fn anything_that_could_reach_the_path_is_refused() {
        for value in [
            "",
            "x/admin/secret#",
            "x?y",
            "x#y",
            "user@host",
            "host:80/x",
            "host:abc",
            "host:123456",
            "[::1",
            "[::1]x",
            "[fe80::1%25eth0]",
            "a b",
            "%zz.example",
            "caf\u{e9}.example",
            ":80",
        ] {
            assert!(!is_valid(value.as_bytes()), "{value}");
        }
    }
}
