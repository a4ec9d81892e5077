//! Where a session goes: an endpoint's WebSocket [`Upstream`], and [`Target`], by which a
//! pool's endpoint services name theirs.

use std::{fmt, sync::Arc};

use http::{uri::Authority, HeaderMap, HeaderName, HeaderValue, Uri};

use crate::error::{BoxError, ConfigError};

/// An endpoint service that can take WebSocket sessions: it names its upstream.
///
/// Implemented by [`Upstream`] (a pool of WebSocket upstreams) and, with the `client`
/// feature, by [`client::Upstream`](crate::client::Upstream), so that one pool serves an
/// upstream's HTTP requests and its sessions and counts both in one load: its base URL with
/// `ws` for `http` and `wss` for `https`, its credentials, the client headers it forwards and
/// its client's TLS settings.
pub trait Target {
    /// The upstream this endpoint's sessions go to.
    fn websocket(&self) -> Upstream;
}

impl Target for Upstream {
    fn websocket(&self) -> Upstream {
        self.clone()
    }
}

#[cfg(feature = "client")]
impl Target for crate::client::Upstream {
    fn websocket(&self) -> Upstream {
        Upstream {
            inner: Arc::new(Inner::Client(self.clone())),
        }
    }
}

/// A WebSocket upstream: its base URL, the headers the gateway sends it (its credentials),
/// and the client headers it forwards beyond [`FORWARDED`](super::FORWARDED).
///
/// A session's URL is the base's path followed by the client's, as for HTTP upstreams: a
/// base ending in a version segment (`/v1`) is not repeated by a client path that starts
/// with it, so `wss://api.openai.com/v1` and a client's `/v1/realtime?model=m` make
/// `wss://api.openai.com/v1/realtime?model=m`. The base's query comes first.
///
/// `wss://` (or `https://`) needs the `client` feature, whose rustls settings it uses (the
/// Mozilla roots, or those of the [`Client`](crate::client::Client) given to
/// [`client`](Self::client)). The URL is shown without its query.
///
/// ```
/// use tower_ai_balance::websocket::Upstream;
///
/// let upstream = Upstream::new("ws://10.0.0.5:8000/v1")?.api_key("sk-gateway")?;
/// assert_eq!(upstream.to_string(), "ws://10.0.0.5:8000/v1");
/// # Ok::<(), tower_ai_balance::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

#[derive(Clone)]
enum Inner {
    Url(Box<Own>),
    #[cfg(feature = "client")]
    Client(crate::client::Upstream),
}

#[derive(Clone)]
struct Own {
    tls: bool,
    authority: Authority,
    path: String,
    query: Option<String>,
    inject: Vec<(HeaderName, HeaderValue)>,
    forward: Vec<HeaderName>,
    #[cfg(feature = "client")]
    client: Option<crate::client::Client>,
}

fn invalid(reason: &'static str) -> ConfigError {
    ConfigError::InvalidSetting {
        name: "websocket upstream",
        reason,
    }
}

impl Upstream {
    /// An upstream at `url`: `ws://` or `wss://` (`http://` and `https://` are taken for
    /// them). Refuses a URL with credentials in it: give them to [`api_key`](Self::api_key)
    /// or [`key_header`](Self::key_header).
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|_| invalid("the URL does not parse"))?;
        let tls = match uri.scheme_str() {
            Some("ws" | "http") => false,
            Some("wss" | "https") => true,
            _ => return Err(invalid("the URL's scheme is not ws, wss, http or https")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| invalid("the URL has no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid(
                "the URL holds credentials: give them to api_key or key_header",
            ));
        }
        if authority.host().is_empty() {
            return Err(invalid("the URL has no host"));
        }
        Ok(Self {
            inner: Arc::new(Inner::Url(Box::new(Own {
                tls,
                authority: authority.clone(),
                path: uri.path().trim_end_matches('/').to_owned(),
                query: uri.query().filter(|q| !q.is_empty()).map(str::to_owned),
                inject: Vec::new(),
                forward: Vec::new(),
                #[cfg(feature = "client")]
                client: None,
            }))),
        })
    }

    fn own(&mut self) -> &mut Own {
        match Arc::make_mut(&mut self.inner) {
            Inner::Url(own) => own,
            #[cfg(feature = "client")]
            Inner::Client(_) => unreachable!("only `Upstream::new` makes a configurable one"),
        }
    }

    /// Sends `Authorization: Bearer <key>` in the handshake.
    pub fn api_key(self, key: impl AsRef<str>) -> Result<Self, ConfigError> {
        self.key_header("authorization", &format!("Bearer {}", key.as_ref()))
    }

    /// Sends the key in a header of its own (`x-api-key`, Azure's `api-key`). Its value is
    /// never shown.
    pub fn key_header(self, name: &str, key: &str) -> Result<Self, ConfigError> {
        self.add(name, key, true)
    }

    /// Sends a fixed header in the handshake (`openai-beta: realtime=v1`).
    pub fn header(self, name: &str, value: &str) -> Result<Self, ConfigError> {
        self.add(name, value, false)
    }

    fn add(mut self, name: &str, value: &str, secret: bool) -> Result<Self, ConfigError> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid("a header name does not parse"))?;
        let mut value =
            HeaderValue::from_str(value).map_err(|_| invalid("a header value does not parse"))?;
        value.set_sensitive(secret);
        let own = self.own();
        own.inject.retain(|(n, _)| *n != name);
        own.inject.push((name, value));
        Ok(self)
    }

    /// Also forwards this client header (beyond [`FORWARDED`](super::FORWARDED)), such as
    /// `x-session-id`. Credentials and the handshake's own headers are never forwarded,
    /// named here or not.
    pub fn forward_header(mut self, name: HeaderName) -> Self {
        self.own().forward.push(name);
        self
    }

    /// Connects with this client's TCP and TLS settings (its trusted roots, connect timeout
    /// and keep-alive) rather than the defaults.
    #[cfg(feature = "client")]
    pub fn client(mut self, client: &crate::client::Client) -> Self {
        self.own().client = Some(client.clone());
        self
    }

    /// The handshake's URI (`ws` or `wss`) for a client's `path` and `query`, and the headers
    /// the upstream is sent: its own, then the client's by the allow-list.
    pub(crate) fn handshake(
        &self,
        path: &str,
        query: Option<&str>,
        client_headers: &HeaderMap,
    ) -> Result<(Uri, HeaderMap), BoxError> {
        let mut headers = HeaderMap::new();
        let (uri, inject, forward) = match &*self.inner {
            Inner::Url(own) => {
                let scheme = if own.tls { "wss" } else { "ws" };
                let pq = join(&own.path, own.query.as_deref(), path, query);
                let uri = Uri::builder()
                    .scheme(scheme)
                    .authority(own.authority.clone())
                    .path_and_query(pq)
                    .build()?;
                (uri, &own.inject[..], &own.forward[..])
            }
            #[cfg(feature = "client")]
            Inner::Client(upstream) => {
                let (_, base, inject, forward) = upstream.websocket_parts();
                let http = base.join(path, query)?;
                (to_ws(http)?, inject, forward)
            }
        };
        for (name, value) in inject {
            headers.append(name.clone(), value.clone());
        }
        super::headers::forward(client_headers, forward, &mut headers);
        Ok((uri, headers))
    }

    /// The client whose TCP and TLS settings connect this upstream, if one was given.
    #[cfg(feature = "client")]
    pub(crate) fn http_client(&self) -> Option<&crate::client::Client> {
        match &*self.inner {
            Inner::Url(own) => own.client.as_ref(),
            Inner::Client(upstream) => Some(upstream.websocket_parts().0),
        }
    }
}

/// `ws` for `http`, `wss` for `https`.
#[cfg(feature = "client")]
fn to_ws(uri: Uri) -> Result<Uri, http::Error> {
    let mut parts = uri.into_parts();
    let tls = parts.scheme.as_ref().map(|s| s.as_str()) == Some("https");
    parts.scheme = Some(if tls { "wss" } else { "ws" }.parse()?);
    Ok(Uri::from_parts(parts)?)
}

/// The base path and query joined with a client's, a version segment the base ends with not
/// repeated (the rule of the `client` feature's URLs).
fn join(base: &str, base_query: Option<&str>, path: &str, query: Option<&str>) -> String {
    let path = if path.starts_with('/') { path } else { "/" };
    let last = base.rsplit('/').next().unwrap_or("");
    let is_version = {
        let mut c = last.chars();
        c.next() == Some('v') && c.next().is_some_and(|c| c.is_ascii_digit())
    };
    let rest = match path[1..].split_once('/') {
        Some((first, _)) if is_version && first == last => &path[1 + last.len()..],
        None if is_version && &path[1..] == last => "",
        _ => path,
    };
    let mut pq = format!("{base}{rest}");
    if pq.is_empty() {
        pq.push('/');
    }
    let queries: Vec<&str> = [base_query, query.filter(|q| !q.is_empty())]
        .into_iter()
        .flatten()
        .collect();
    if !queries.is_empty() {
        pq.push('?');
        pq.push_str(&queries.join("&"));
    }
    pq
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.inner {
            Inner::Url(own) => {
                let scheme = if own.tls { "wss" } else { "ws" };
                write!(f, "{scheme}://{}{}", own.authority, own.path)
            }
            #[cfg(feature = "client")]
            Inner::Client(upstream) => write!(f, "{}", upstream.websocket_parts().1),
        }
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (inject, forward) = match &*self.inner {
            Inner::Url(own) => (&own.inject[..], &own.forward[..]),
            #[cfg(feature = "client")]
            Inner::Client(upstream) => {
                let (_, _, inject, forward) = upstream.websocket_parts();
                (inject, forward)
            }
        };
        let names: Vec<&str> = inject.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Upstream")
            .field("url", &format_args!("{self}"))
            .field("headers", &names)
            .field("forward", &forward)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_join_and_show_without_their_query() {
        let up = Upstream::new("wss://api.example/v1?key=secret").unwrap();
        assert_eq!(up.to_string(), "wss://api.example/v1");
        let (uri, _) = up
            .handshake("/v1/realtime", Some("model=m"), &HeaderMap::new())
            .unwrap();
        assert_eq!(uri, "wss://api.example/v1/realtime?key=secret&model=m");
        let up = Upstream::new("http://127.0.0.1:9/").unwrap();
        let (uri, _) = up.handshake("/ws", None, &HeaderMap::new()).unwrap();
        assert_eq!(uri, "ws://127.0.0.1:9/ws");
        let (uri, _) = up.handshake("", None, &HeaderMap::new()).unwrap();
        assert_eq!(uri, "ws://127.0.0.1:9/");
        assert!(format!("{up:?}").contains("ws://127.0.0.1:9"));
        for bad in [
            "ftp://h/",
            "/relative",
            "ws://user:pw@h/",
            "not a url",
            "ws://:80/",
        ] {
            assert!(Upstream::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_upstream_key_is_sent_and_never_shown() {
        let up = Upstream::new("ws://h/v1")
            .unwrap()
            .api_key("sk-gateway")
            .unwrap()
            .forward_header(HeaderName::from_static("x-session-id"));
        let mut client = HeaderMap::new();
        client.insert("authorization", "Bearer sk-client".parse().unwrap());
        client.insert("x-session-id", "s1".parse().unwrap());
        let (_, headers) = up.handshake("/v1/realtime", None, &client).unwrap();
        assert_eq!(headers["authorization"], "Bearer sk-gateway");
        assert_eq!(headers.get_all("authorization").iter().count(), 1);
        assert_eq!(headers["x-session-id"], "s1");
        assert!(!format!("{up:?}").contains("sk-gateway"));
        assert!(Upstream::new("ws://h/")
            .unwrap()
            .api_key("bad\nkey")
            .is_err());
    }
}
