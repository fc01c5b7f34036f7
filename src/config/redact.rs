//! Keeping secrets out of what is printed: passwords in URLs, header values.

use std::collections::BTreeMap;

use serde::Serializer;

pub(super) fn redacted_map<S: Serializer>(
    m: &BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut out = s.serialize_map(Some(m.len()))?;
    for k in m.keys() {
        out.serialize_entry(k, "<redacted>")?;
    }
    out.end()
}

/// A URL with its password replaced, for printing.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => format!(
            "{}{}@{}",
            &url[..scheme_end + 3],
            redact_userinfo(&authority[..at]),
            &rest[at + 1..]
        ),
        None => url.to_string(),
    }
}

/// `user:password` keeps the user; a lone `user` may itself be a token (as
/// `https://TOKEN@host` is written), so it goes whole.
fn redact_userinfo(userinfo: &str) -> String {
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:<redacted>"),
        None => "<redacted>".to_string(),
    }
}

/// `text` with the userinfo of every URL in it redacted ([`redact_url`]): for
/// error messages from libraries (tonic, hyper, reqwest) that may quote the URL
/// they were given, credentials and all.
pub fn redact_text(text: &str) -> String {
    if !text.contains("://") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // The authority runs to the first character that cannot be in one.
        let after = &rest[i + 3..];
        let end = after
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '/' | '?' | '#' | '"' | '\'' | ')' | '>' | ',')
            })
            .unwrap_or(after.len());
        let authority = &after[..end];
        out.push_str(&rest[..i + 3]);
        match authority.rfind('@') {
            Some(at) => {
                out.push_str(&redact_userinfo(&authority[..at]));
                out.push('@');
                out.push_str(&authority[at + 1..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}
