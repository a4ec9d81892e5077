//! The client's errors: settings it refuses, and failures of a request in flight.
//!
//! None of them shows a URL's userinfo or query, a credential, or a header's value.

use std::fmt;

use crate::error::ConfigError;

/// A setting the client or an upstream's configuration refused.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientError {
    /// The base URL is not an absolute `http`/`https` URL.
    InvalidUrl {
        /// The URL, without its userinfo and query.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// A header name or value that HTTP does not allow (the value is not shown).
    InvalidHeader {
        /// The header's name, or the name given.
        name: String,
    },
    /// A CA certificate that could not be read or used.
    InvalidCertificate {
        /// Why.
        reason: String,
    },
    /// The TLS settings were refused.
    Tls {
        /// Why.
        reason: String,
    },
    /// The pool refused an upstream (a duplicate key, a bad weight).
    Pool(ConfigError),
    /// An option of an upstream's line or labels was refused (an unknown option or format,
    /// a value that is not a number, a key variable that is not set). Never shows a key.
    InvalidOption {
        /// The option's name.
        option: String,
        /// Why.
        reason: String,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUrl { url, reason } => write!(f, "upstream URL {url}: {reason}"),
            Self::InvalidHeader { name } => write!(f, "header {name:?}: invalid name or value"),
            Self::InvalidCertificate { reason } => write!(f, "CA certificate: {reason}"),
            Self::Tls { reason } => write!(f, "TLS settings: {reason}"),
            Self::Pool(e) => write!(f, "{e}"),
            Self::InvalidOption { option, reason } => {
                write!(f, "upstream option {option:?}: {reason}")
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Pool(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConfigError> for ClientError {
    fn from(e: ConfigError) -> Self {
        Self::Pool(e)
    }
}

/// An upstream's response body was larger than the client buffers (a non-streamed answer it
/// must translate, or an error body).
#[derive(Debug, Clone)]
pub struct ResponseTooLarge {
    limit: usize,
}

impl ResponseTooLarge {
    #[cfg_attr(not(feature = "anthropic"), allow(dead_code))]
    pub(crate) fn new(limit: usize) -> Self {
        Self { limit }
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl fmt::Display for ResponseTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the upstream's response body exceeds {} bytes",
            self.limit
        )
    }
}

impl std::error::Error for ResponseTooLarge {}
