//! W3C Baggage (`baggage: key=value;property,key2=value2`): parsed within the specification's
//! limits (64 members, 8192 bytes), values percent-decoded.

/// Most list members.
pub const MAX_MEMBERS: usize = 64;
/// Largest total header size.
pub const MAX_BYTES: usize = 8192;

fn token(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `(key, value)` members of every `baggage` header value, in order; `None` if the
/// combined value breaks the grammar or the limits.
pub fn parse(values: &[&str]) -> Option<Vec<(String, String)>> {
    if values.iter().map(|v| v.len()).sum::<usize>() > MAX_BYTES {
        return None;
    }
    let mut members = Vec::new();
    for member in values.iter().flat_map(|v| v.split(',')) {
        let member = member.trim();
        if member.is_empty() {
            continue;
        }
        let pair = member.split(';').next()?.trim();
        let (key, value) = pair.split_once('=')?;
        let key = key.trim();
        if !token(key) {
            return None;
        }
        members.push((key.to_owned(), percent_decode(value.trim())?));
    }
    (members.len() <= MAX_MEMBERS).then_some(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_properties_and_percent_encoding() {
        assert_eq!(
            parse(&["userId=alice, serverNode=DF%2028;prop=1", "isProduction=false"]),
            Some(vec![
                ("userId".into(), "alice".into()),
                ("serverNode".into(), "DF 28".into()),
                ("isProduction".into(), "false".into())
            ])
        );
        assert_eq!(parse(&["no equals"]), None);
        assert_eq!(parse(&["bad key=1"]), None);
        assert_eq!(parse(&["k=%zz"]), None);
        let many: Vec<String> = (0..65).map(|i| format!("k{i}=v")).collect();
        assert_eq!(parse(&[&many.join(",")]), None);
    }
}
