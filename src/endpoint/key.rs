//! An endpoint's name in its pool: [`Key`], exact in [`Key::as_str`] and shown without
//! credentials.

use std::{borrow::Borrow, fmt, net::SocketAddr, sync::Arc};

/// An endpoint's name in its pool: cheap to clone, compared by value.
///
/// The key is what affinity hashes and what a pool finds an endpoint by, so it is kept exactly
/// as given: [`as_str`](Self::as_str) returns it. It is *shown* redacted: `Display` and
/// `Debug` (and so every error, `/metrics` label and tracing field that names an endpoint)
/// leave out a URL's userinfo, query and fragment, which is where credentials travel
/// (`http://user:token@host/v1?key=x` shows as `http://host/v1`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// The key as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as it is shown: without userinfo, query or fragment. The same as `Display`.
    pub fn redacted(&self) -> Redacted<'_> {
        Redacted(&self.0)
    }
}

/// A key as it is shown: without userinfo, query or fragment ([`Key::redacted`]).
#[derive(Clone, Copy)]
pub struct Redacted<'a>(&'a str);

impl Redacted<'_> {
    /// The parts shown: everything before the userinfo, and the host, port and path after it.
    fn parts(&self) -> (&str, &str) {
        let text = self.0;
        // Query and fragment go.
        let text = text.find(['?', '#']).map_or(text, |end| &text[..end]);
        let scheme_end = text.find("://").map_or(0, |i| i + 3);
        let (scheme, rest) = text.split_at(scheme_end);
        // The authority runs to the first `/`; its userinfo to its last `@`.
        let authority_end = rest.find('/').unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => (scheme, &rest[at + 1..]),
            None => (scheme, rest),
        }
    }
}

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, rest) = self.parts();
        f.write_str(scheme)?;
        f.write_str(rest)
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, rest) = self.parts();
        write!(f, "\"{}{}\"", scheme.escape_debug(), rest.escape_debug())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.redacted(), f)
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl From<SocketAddr> for Key {
    fn from(a: SocketAddr) -> Self {
        Self(a.to_string().into())
    }
}

impl From<http::Uri> for Key {
    /// The URI as it is usually written: `http::Uri` cannot tell `http://h:8000` from
    /// `http://h:8000/`, and writes both with the `/`; the key is `http://h:8000` for both,
    /// as `Key::from("http://h:8000")` is, so that writing a base URL as a string or as a
    /// `Uri` names the same endpoint. A path other than the root, and a query, are kept.
    fn from(u: http::Uri) -> Self {
        let mut text = String::new();
        if let Some(scheme) = u.scheme_str() {
            text.push_str(scheme);
            text.push_str("://");
        }
        if let Some(authority) = u.authority() {
            text.push_str(authority.as_str());
        }
        let path = u.path();
        if !(path == "/" && u.authority().is_some()) {
            text.push_str(path);
        }
        if let Some(query) = u.query() {
            text.push('?');
            text.push_str(query);
        }
        Self(text.into())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_uri_key_is_written_as_a_base_url_is() {
        for (uri, key) in [
            ("http://10.0.0.5:8000", "http://10.0.0.5:8000"),
            ("http://10.0.0.5:8000/", "http://10.0.0.5:8000"),
            ("https://api.example.com/v1", "https://api.example.com/v1"),
            ("https://api.example.com/v1/", "https://api.example.com/v1/"),
            ("http://h:1/?x=1", "http://h:1?x=1"),
            ("/only/a/path", "/only/a/path"),
        ] {
            let parsed: http::Uri = uri.parse().unwrap();
            assert_eq!(Key::from(parsed).as_str(), key, "{uri}");
        }
        let written = Key::from("http://10.0.0.5:8000");
        let parsed = Key::from("http://10.0.0.5:8000".parse::<http::Uri>().unwrap());
        assert_eq!(written, parsed, "a string and a Uri name one endpoint");
    }

    #[test]
    fn keys_are_shown_without_userinfo_query_or_fragment() {
        for (key, shown) in [
            ("http://user:tok@h/?key=x", "http://h/"),
            (
                "https://u:p@api.example.com:443/v1?api-key=s#frag",
                "https://api.example.com:443/v1",
            ),
            ("http://h:1/a@b/c", "http://h:1/a@b/c"),
            ("user:pw@10.0.0.1:80", "10.0.0.1:80"),
            ("gpu-0", "gpu-0"),
            ("10.0.0.1:8000", "10.0.0.1:8000"),
            ("http://a@b@h", "http://h"),
        ] {
            let k = Key::from(key);
            assert_eq!(k.to_string(), shown, "{key}");
            assert_eq!(format!("{k:?}"), format!("{shown:?}"), "{key}");
            assert_eq!(k.as_str(), key, "the key itself is kept whole");
        }
    }
}
