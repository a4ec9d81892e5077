//! An endpoint's name in its pool: [`Key`].

use std::{borrow::Borrow, fmt, net::SocketAddr, sync::Arc};

/// An endpoint's name in its pool: cheap to clone, compared by value.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
    fn from(u: http::Uri) -> Self {
        Self(u.to_string().into())
    }
}
