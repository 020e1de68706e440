//! The rules a script's path to a named service must follow, checked where the script
//! calls (`http::get`, `http::post`) or queues (`http::deliver`), and again by the service
//! itself before it sends (`switchboard_plugins::services`).
//!
//! A path may never leave the service's base URL, not even on a server that normalises
//! more than RFC 3986 asks: Tomcat drops `;parameters` (`/..;/admin`), IIS and some
//! proxies decode `%5c` as `\` and `%2f` as `/`, or decode twice (`%252e`), and C servers
//! stop at `%00`. So every segment is checked as written, once decoded and twice decoded.

/// Why a path is refused, or `Ok`.
///
/// A path starts with `/`; it has no `#`, `\`, spaces or control characters; no empty
/// segment; and no segment that is, or decodes (once or twice) to, `.` or `..` (also
/// with a `;parameter`, or with trailing dots or spaces, as Windows servers trim them),
/// or that decodes to a `/`, `\`, NUL or control character, or to bytes that are not
/// UTF-8 (overlong encodings of `.` and `/`). A `%` must be followed by two hex digits.
/// A query (`?a=1`) may follow; its text is only checked for the characters above.
pub fn check_path(path: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("refused path: {why}"));
    if !path.starts_with('/') {
        return refuse("it must start with `/`");
    }
    if path
        .chars()
        .any(|c| c.is_control() || matches!(c, '#' | '\\' | ' ' | '\u{2028}' | '\u{2029}'))
    {
        return refuse("no `#`, `\\`, spaces or control characters");
    }
    let segments = path.split_once('?').map_or(path, |(p, _)| p);
    for seg in segments.split('/').skip(1) {
        if seg.is_empty() {
            return refuse("no empty segments (`//`)");
        }
        check_segment(seg).or_else(|why| refuse(&why))?;
    }
    Ok(())
}

/// One segment, as written and decoded.
fn check_segment(seg: &str) -> Result<(), String> {
    let once = decode(seg.as_bytes())
        .ok_or_else(|| "a `%` must be followed by two hex digits".to_owned())?;
    // A second decoding may meet a lone `%` (data that held one): that is no escape.
    let twice = decode(&once).unwrap_or_else(|| once.clone());
    for level in [seg.as_bytes(), &once[..], &twice[..]] {
        let Ok(text) = std::str::from_utf8(level) else {
            return Err("a segment must decode to UTF-8".into());
        };
        if text
            .chars()
            .any(|c| c.is_control() || matches!(c, '/' | '\\' | '\u{2028}' | '\u{2029}'))
        {
            return Err("no encoded `/`, `\\`, NUL or control characters inside a segment".into());
        }
        // Tomcat ignores what follows `;` in a segment; Windows trims trailing dots and
        // spaces: `..;x`, `...` and `.. ` all mean `..` somewhere.
        let name = text.split(';').next().unwrap_or("");
        if name.trim_end_matches(['.', ' ']).is_empty() {
            return Err("no `.` or `..` segments (encoded or not)".into());
        }
    }
    Ok(())
}

/// Percent-decodes `s`; `None` if a `%` is not followed by two hex digits.
fn decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_pass() {
        for ok in [
            "/cards/card_1/holder",
            "/cards?number=1&x=2",
            "/cards/%C3%A9t%C3%A9",
            "/cards/100%25",
            "/a;v=1/b",
            "/cards/.well",
            "/x/a.b",
        ] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn what_servers_normalise_is_refused() {
        for bad in [
            "cards/1",
            "/../admin",
            "/cards/../../admin",
            "/cards/%2e%2E/admin",
            "/cards/./x",
            "/cards//x",
            "/cards/1#frag",
            "/cards/1\\..\\x",
            "/cards/ 1",
            "/cards/\n1",
            "/cards/..;/admin",
            "/cards/..;jsessionid=1/admin",
            "/cards/.;/x",
            "/cards/%2e%2e;x/admin",
            "/cards/a%2fb",
            "/cards/a%2Fb",
            "/cards/..%2fadmin",
            "/cards/a%5cb",
            "/cards/a%5C..%5Cb",
            "/cards/a%00.json",
            "/cards/%0a",
            "/cards/%252e%252e/admin",
            "/cards/a%252fb",
            "/cards/%c0%ae%c0%ae/admin",
            "/cards/%u002e%u002e/admin",
            "/cards/%2",
            "/cards/...",
            "/cards/..%20",
            "/cards/%E2%80%A8",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
