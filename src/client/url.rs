//! An upstream's base URL: where requests go, how their paths join it, and how it is shown.
//!
//! The base URL may carry credentials (`https://user:token@host/`) and a query (Azure's
//! `?api-version=...`, or a key). Both are kept apart from what is shown: [`BaseUrl`]'s
//! `Display` and `Debug` name only the scheme, host, port and path, and so does every error
//! and endpoint key made from it.

use std::fmt;

use http::{uri::Authority, uri::Scheme, HeaderValue, Uri};

use super::error::ClientError;

/// A parsed upstream base URL. Shown without its userinfo and query.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BaseUrl {
    scheme: Scheme,
    /// Host and port, without userinfo.
    authority: Authority,
    /// The path without a trailing `/`; empty for the root.
    path: String,
    query: Option<String>,
    /// `Authorization: Basic ...` made from the URL's userinfo.
    basic: Option<HeaderValue>,
}

impl BaseUrl {
    /// Parses an absolute `http` or `https` URL. The error names the URL redacted.
    pub(crate) fn parse(text: &str) -> Result<Self, ClientError> {
        let invalid = |reason: &'static str| ClientError::InvalidUrl {
            url: redact(text),
            reason,
        };
        let uri: Uri = text
            .trim()
            .parse()
            .map_err(|_| invalid("not a valid URL"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            Some(_) => return Err(invalid("the scheme is neither http nor https")),
            None => return Err(invalid("not an absolute URL (http:// or https://)")),
        };
        let full = uri.authority().ok_or_else(|| invalid("no host"))?;
        let (userinfo, hostport) = match full.as_str().rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, full.as_str()),
        };
        if hostport.is_empty() || full.host().is_empty() {
            return Err(invalid("no host"));
        }
        let authority: Authority = hostport.parse().map_err(|_| invalid("a bad host"))?;
        let basic = userinfo.map(basic_auth).transpose().map_err(invalid)?;
        let path = uri.path().trim_end_matches('/').to_owned();
        let query = uri.query().filter(|q| !q.is_empty()).map(str::to_owned);
        Ok(Self {
            scheme,
            authority,
            path,
            query,
            basic,
        })
    }

    /// `Authorization: Basic` from the URL's userinfo, if it had any.
    pub(crate) fn basic_auth(&self) -> Option<&HeaderValue> {
        self.basic.as_ref()
    }

    /// The host and port requests go to (the `Host` / `:authority` the upstream sees).
    #[cfg(test)]
    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    /// `path` at the root of the upstream's host (`https://h:8443/v1` and `/metrics` make
    /// `https://h:8443/metrics`), without the base's path and query.
    pub(crate) fn at_root(&self, path: &str) -> Option<Uri> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .ok()
    }

    /// The upstream URI for a request to `path` (with its optional `query`).
    ///
    /// The request's path is appended to the base path, with one exception: when the base
    /// path ends with a version segment (`v1`, `v1beta`, `v2`, ...) and the request's path
    /// starts with the same segment, it is not repeated (`https://h/v1` + `/v1/models` is
    /// `https://h/v1/models`, as `https://h/openai/v1` + `/chat/completions` is
    /// `https://h/openai/v1/chat/completions`). The base URL's query comes first, then the
    /// request's.
    pub(crate) fn join(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let path = if path.starts_with('/') { path } else { "/" };
        let last = self.path.rsplit('/').next().unwrap_or("");
        let rest = if is_version(last) {
            match path[1..].split_once('/') {
                Some((first, _)) if first == last => &path[1 + last.len()..],
                None if &path[1..] == last => "",
                _ => path,
            }
        } else {
            path
        };
        let mut pq = String::with_capacity(self.path.len() + rest.len() + 16);
        pq.push_str(&self.path);
        pq.push_str(rest);
        if pq.is_empty() {
            pq.push('/');
        }
        let queries: Vec<&str> = [self.query.as_deref(), query.filter(|q| !q.is_empty())]
            .into_iter()
            .flatten()
            .collect();
        if !queries.is_empty() {
            pq.push('?');
            pq.push_str(&queries.join("&"));
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }
}

/// `v1`, `v2`, `v1beta`, `v1alpha2`: a version segment.
fn is_version(segment: &str) -> bool {
    let mut chars = segment.chars();
    chars.next() == Some('v') && chars.next().is_some_and(|c| c.is_ascii_digit())
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.path)
    }
}

impl fmt::Debug for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// `Authorization: Basic base64(user:password)` from a URL's percent-encoded userinfo.
fn basic_auth(userinfo: &str) -> Result<HeaderValue, &'static str> {
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let mut plain = percent_decode(user).ok_or("bad percent-encoding in the userinfo")?;
    plain.push(b':');
    plain.extend(percent_decode(password).ok_or("bad percent-encoding in the userinfo")?);
    let mut value = HeaderValue::try_from(format!("Basic {}", base64(&plain)))
        .map_err(|_| "the userinfo cannot be sent as a header")?;
    value.set_sensitive(true);
    Ok(value)
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Standard base64 with padding (RFC 4648), for Basic credentials.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A URL as text, without what may be secret: the userinfo and the query (and the fragment).
/// Works on text that does not parse, for error messages.
pub(crate) fn redact(text: &str) -> String {
    let text = text.trim();
    let text = text.split(['?', '#']).next().unwrap_or("");
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, text),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match scheme {
        Some(scheme) => format!("{scheme}://{host}{path}"),
        None => format!("{host}{path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(base: &str, path: &str) -> String {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        BaseUrl::parse(base)
            .unwrap()
            .join(path, query)
            .unwrap()
            .to_string()
    }

    #[test]
    fn paths_join_the_base_path() {
        assert_eq!(
            join("https://h/openai/v1", "/chat/completions"),
            "https://h/openai/v1/chat/completions"
        );
        assert_eq!(
            join("https://h/openai/v1/", "/chat/completions"),
            "https://h/openai/v1/chat/completions"
        );
        assert_eq!(
            join("https://h/v1", "/v1/chat/completions"),
            "https://h/v1/chat/completions"
        );
        assert_eq!(join("https://h/v1", "/v1"), "https://h/v1");
        assert_eq!(
            join("https://h/v1", "/v1beta/models"),
            "https://h/v1/v1beta/models"
        );
        assert_eq!(
            join("https://h/api", "/api/generate"),
            "https://h/api/api/generate"
        );
        assert_eq!(
            join("http://127.0.0.1:8000", "/v1/chat/completions"),
            "http://127.0.0.1:8000/v1/chat/completions"
        );
        assert_eq!(join("http://h:81", ""), "http://h:81/");
        assert_eq!(
            join("https://h/openai?api-version=2024-06-01", "/chat?x=1"),
            "https://h/openai/chat?api-version=2024-06-01&x=1"
        );
        assert_eq!(join("http://[::1]:9/v1", "/v1/m"), "http://[::1]:9/v1/m");
    }

    #[test]
    fn userinfo_becomes_basic_auth_and_is_never_shown() {
        let base = BaseUrl::parse("https://al%40ice:s3cr%2Ft@h.example:8443/v1?key=k").unwrap();
        assert_eq!(base.to_string(), "https://h.example:8443/v1");
        assert_eq!(format!("{base:?}"), "https://h.example:8443/v1");
        let auth = base.basic_auth().unwrap();
        assert!(auth.is_sensitive());
        // al@ice:s3cr/t
        assert_eq!(auth, "Basic YWxAaWNlOnMzY3IvdA==");
        assert_eq!(base.authority().as_str(), "h.example:8443");
        let uri = base.join("/v1/x", None).unwrap();
        assert_eq!(uri.to_string(), "https://h.example:8443/v1/x?key=k");
    }

    #[test]
    fn bad_urls_are_refused_without_their_secrets() {
        for bad in [
            "ftp://user:pw@h/",
            "user:pw@h",
            "https://user:pw@/x",
            "not a url at all ?key=secret",
            "http://u:%zz@h/",
        ] {
            let err = BaseUrl::parse(bad).unwrap_err().to_string();
            assert!(!err.contains("pw") && !err.contains("secret"), "{err}");
            assert!(!err.contains("%zz"), "{err}");
        }
        assert_eq!(redact("https://u:p@h/x?key=1#f"), "https://h/x");
        assert_eq!(redact("u:p@h:1/x"), "h:1/x");
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }
}
