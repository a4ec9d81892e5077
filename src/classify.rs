//! How an outcome is judged.
//!
//! [`Balance`](crate::balance::Balance) uses it to decide which completions feed an endpoint's
//! latency estimate a failure penalty instead of their round trip.

use http::StatusCode;

/// A status that counts against the endpoint: any 5xx, and 429 (rate-limited).
pub fn status_is_failure(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}
