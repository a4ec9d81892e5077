//! [`HeadCopy`]: the copy of a request's head that a first attempt keeps for a retry that
//! nearly every request never sends.

use bytes::Bytes;
use http::{
    header::{HeaderName, HeaderValue},
    Extensions, HeaderMap, Method, Request, Uri, Version,
};

use super::replay::Head;

/// The width of each length in the flattened headers.
const LEN: usize = std::mem::size_of::<usize>();

/// The room made for each header's name and value together.
const USUAL: usize = 48;

/// A request's head as a retry needs it: the method, version and extensions as they are,
/// and the URI and every header's name and value flattened into one buffer.
///
/// Cloning a `HeaderMap` allocates its two tables, and cloning a URI or a header value that
/// was built from a string (rather than sliced from a shared buffer, as a server's are)
/// allocates a shared count for it; after nearly every request the clone is dropped unused.
/// Here the URI and the headers take one allocation and one copy of their bytes, and they are
/// parsed again only when a retry is sent (the values as slices of that buffer, not copies).
pub(crate) struct HeadCopy {
    method: Method,
    version: Version,
    extensions: Extensions,
    /// `[URI length][URI]`, then each header in the map's order as
    /// `[name length][sensitive: 0 or 1][value length][name][value]`, lengths native `usize`s.
    flat: Vec<u8>,
}

impl HeadCopy {
    /// A copy of `request`'s head.
    pub(crate) fn of<B>(request: &Request<B>) -> Self {
        let map = request.headers();
        let uri = uri_parts(request.uri());
        let uri_len: usize = uri.iter().map(|part| part.len()).sum();
        // One pass over the headers: room for names and values of a usual size, grown (rarely)
        // for larger ones, rather than a first pass to measure them.
        let size = LEN + uri_len + map.len() * (2 * LEN + 1 + USUAL);
        let mut flat = Vec::with_capacity(size);
        flat.extend_from_slice(&uri_len.to_ne_bytes());
        // An origin-form URI (a path and query, as clients send) leaves most parts empty.
        for part in uri.iter().filter(|part| !part.is_empty()) {
            flat.extend_from_slice(part.as_bytes());
        }
        for (name, value) in map {
            let name = name.as_str().as_bytes();
            // The lengths and the flag in one write.
            let mut lengths = [0; 2 * LEN + 1];
            lengths[..LEN].copy_from_slice(&name.len().to_ne_bytes());
            lengths[LEN] = u8::from(value.is_sensitive());
            lengths[LEN + 1..].copy_from_slice(&value.len().to_ne_bytes());
            flat.extend_from_slice(&lengths);
            flat.extend_from_slice(name);
            flat.extend_from_slice(value.as_bytes());
        }
        Self {
            method: request.method().clone(),
            version: request.version(),
            extensions: request.extensions().clone(),
            flat,
        }
    }

    /// The head to build the retries from. `None` only if a part no longer parses, which a
    /// header value made with `HeaderValue::from_maybe_shared_unchecked` from bytes a checked
    /// constructor refuses could do.
    pub(crate) fn into_head(self) -> Option<Head> {
        let flat = Bytes::from(self.flat);
        let mut at = 0;
        let uri_len = read_len(&flat, &mut at)?;
        let end = at.checked_add(uri_len).filter(|&end| end <= flat.len())?;
        let uri = Uri::from_maybe_shared(flat.slice(at..end)).ok()?;
        at = end;
        let mut headers = HeaderMap::new();
        while at < flat.len() {
            let name_len = read_len(&flat, &mut at)?;
            let sensitive = *flat.get(at)? != 0;
            at += 1;
            let value_len = read_len(&flat, &mut at)?;
            let name = HeaderName::from_bytes(flat.get(at..at.checked_add(name_len)?)?).ok()?;
            at += name_len;
            let end = at.checked_add(value_len).filter(|&end| end <= flat.len())?;
            let mut value = HeaderValue::from_maybe_shared(flat.slice(at..end)).ok()?;
            at = end;
            value.set_sensitive(sensitive);
            headers.append(name, value);
        }
        let mut request = Request::new(());
        *request.method_mut() = self.method;
        *request.uri_mut() = uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = headers;
        *request.extensions_mut() = self.extensions;
        Some(Head::from(request.into_parts().0))
    }
}

/// The URI as it is written on the wire, in pieces: what its `Display` writes, which parses
/// back to an equal URI.
fn uri_parts(uri: &Uri) -> [&str; 6] {
    let (scheme, separator) = match uri.scheme_str() {
        Some(scheme) => (scheme, "://"),
        None => ("", ""),
    };
    let authority = uri.authority().map_or("", |a| a.as_str());
    let (mark, query) = match uri.query() {
        Some(query) => ("?", query),
        None => ("", ""),
    };
    [scheme, separator, authority, uri.path(), mark, query]
}

/// Reads one length at `at` and moves past it.
fn read_len(flat: &[u8], at: &mut usize) -> Option<usize> {
    let bytes = flat.get(*at..at.checked_add(LEN)?)?;
    *at += LEN;
    Some(usize::from_ne_bytes(bytes.try_into().ok()?))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use http::header;

    use super::*;
    use crate::hints::{Affinity, Exclude};

    /// The request a retry built from a copy of `original`'s head sends.
    fn retried(original: &Request<()>) -> Request<()> {
        let head = HeadCopy::of(original)
            .into_head()
            .expect("a head that parses");
        head.request((), &Exclude::new(), None)
    }

    #[test]
    fn a_retry_sends_the_head_the_caller_built() {
        let mut secret = HeaderValue::from_static("Bearer sk-0123");
        secret.set_sensitive(true);
        let mut original = Request::builder()
            .method(Method::PATCH)
            .uri("https://api.example.com:8443/v1/chat/completions?stream=true")
            .version(Version::HTTP_2)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, secret)
            .header("x-session-id", "sess-42")
            // Two values of one name, apart from each other: their order is kept.
            .header(header::ACCEPT, "text/event-stream")
            .header("x-custom", "")
            .header(header::ACCEPT, "application/json")
            .header(
                "x-bytes",
                HeaderValue::from_bytes(b"caf\xc3\xa9\t!").unwrap(),
            )
            .body(())
            .unwrap();
        original.extensions_mut().insert(Affinity::hashed(7));
        let retry = retried(&original);

        assert_eq!(retry.method(), Method::PATCH);
        assert_eq!(retry.uri(), original.uri());
        assert_eq!(retry.version(), Version::HTTP_2);
        assert_eq!(retry.headers(), original.headers());
        let pairs = |r: &Request<()>| {
            r.headers()
                .iter()
                .map(|(n, v)| (n.clone(), v.clone(), v.is_sensitive()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pairs(&retry),
            pairs(&original),
            "order and sensitivity kept"
        );
        assert!(retry.headers()[header::AUTHORIZATION].is_sensitive());
        assert_eq!(
            retry.extensions().get::<Affinity>().map(|a| a.key),
            Some(7),
            "the hints travel with the retry"
        );
    }

    #[test]
    fn a_head_without_headers_or_extensions_copies_to_itself() {
        let original = Request::new(());
        let retry = retried(&original);
        assert_eq!(retry.method(), Method::GET);
        assert_eq!(retry.uri(), "/");
        assert!(retry.headers().is_empty());
        assert!(retry.extensions().is_empty());
    }

    #[test]
    fn every_form_of_uri_comes_back_equal() {
        for uri in [
            "/",
            "*",
            "/v1/chat/completions",
            "/v1/models?limit=10&after=m%20x",
            "http://10.0.0.7:8000/v1/completions",
            "https://api.example.com",
            "example.com:443",
            "http://[::1]:8080/v1?x=%2F",
        ] {
            let original = Request::builder().uri(uri).body(()).unwrap();
            let retry = retried(&original);
            assert_eq!(retry.uri(), original.uri(), "{uri}");
            assert_eq!(retry.uri().to_string(), original.uri().to_string(), "{uri}");
        }
    }

    /// A copy's buffer as `of` writes it, of a URI `/` and these headers.
    fn flat(headers: &[(&[u8], u8, &[u8])]) -> Vec<u8> {
        let mut flat = Vec::new();
        flat.extend_from_slice(&1usize.to_ne_bytes());
        flat.push(b'/');
        for (name, sensitive, value) in headers {
            flat.extend_from_slice(&name.len().to_ne_bytes());
            flat.push(*sensitive);
            flat.extend_from_slice(&value.len().to_ne_bytes());
            flat.extend_from_slice(name);
            flat.extend_from_slice(value);
        }
        flat
    }

    fn copy(flat: Vec<u8>) -> HeadCopy {
        HeadCopy {
            method: Method::GET,
            version: Version::HTTP_11,
            extensions: Extensions::new(),
            flat,
        }
    }

    #[test]
    fn a_value_no_checked_constructor_makes_is_not_sent() {
        assert!(copy(flat(&[(b"x", 1, b"ok")])).into_head().is_some());
        // Only `unsafe` code makes such a value; the copy refuses it rather than panic.
        assert!(copy(flat(&[(b"x", 0, b"a\r\nb")])).into_head().is_none());
        // A buffer cut short anywhere is refused too.
        let whole = flat(&[(b"x-a", 0, b"1"), (b"x-b", 1, b"22")]);
        for len in 0..whole.len() {
            let cut = copy(whole[..len].to_vec()).into_head();
            // Cut between two whole parts it is a shorter head, and parses.
            let between = [LEN + 1, LEN + 1 + 2 * LEN + 1 + 3 + 1];
            assert_eq!(cut.is_some(), between.contains(&len), "cut at {len}");
        }
    }
}
