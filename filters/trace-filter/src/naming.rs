//! Low-cardinality span names and address splitting.

/// `host[:port]` (or `[v6]:port`, or `ip:port`) split into host and port.
pub fn split_authority(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[')
        && let Some((host, tail)) = rest.split_once(']')
    {
        return (host, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

fn looks_like_an_id(segment: &str) -> bool {
    let hexish = segment.len() >= 8 && segment.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    let numeric = !segment.is_empty() && segment.chars().all(|c| c.is_ascii_digit());
    hexish || numeric
}

/// A path with its id-like segments (numbers, UUIDs, long hex) replaced by `{id}`, so span names
/// stay few: `/v0/images/42` → `/v0/images/{id}`.
pub fn path_template(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    push_path_template(path, &mut out);
    out
}

/// Appends [`path_template`] of `path` to `out` (a span name being built, without a string of
/// its own).
pub fn push_path_template(path: &str, out: &mut String) {
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(if looks_like_an_id(segment) { "{id}" } else { segment });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_authority("gallery.local:8080"), ("gallery.local", Some(8080)));
        assert_eq!(split_authority("gallery.local"), ("gallery.local", None));
        assert_eq!(split_authority("[::1]:443"), ("::1", Some(443)));
        assert_eq!(split_authority("127.0.0.1:5000"), ("127.0.0.1", Some(5000)));
    }

    #[test]
    fn ids_in_paths_become_placeholders() {
        assert_eq!(path_template("/v0/images/42"), "/v0/images/{id}");
        assert_eq!(path_template("/v0/images/3f2c9a1e-7b4d-4c1a-9e2f-0a1b2c3d4e5f/raw"), "/v0/images/{id}/raw");
        assert_eq!(path_template("/v0/healthz"), "/v0/healthz");
        assert_eq!(path_template("/"), "/");
    }
}
