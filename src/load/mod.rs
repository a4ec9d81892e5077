//! Load held from pick to completion.
//!
//! A [`LoadGuard`] holds one in-flight slot (and the request's [`Cost`](crate::hints::Cost)) on
//! an endpoint. It is created when [`Balance`](crate::balance::Balance) picks and released in
//! `Drop`, so a cancelled, failed or panicking request never leaks a count; completed, it
//! feeds the endpoint's latency estimates and counters with the response's verdict.
//! [`TrackLoad`] is the completion hook: how a response carries its guard until it is
//! finished (for an `http::Response`, until its body ends, in
//! [`balance::ResponseBody`](crate::balance::ResponseBody)).
//!
//! Simulations drive the guard directly, in virtual time:
//!
//! ```
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use tower_ai_balance::{load::LoadGuard, Endpoint, EndpointConfig};
//!
//! let e = Endpoint::new(EndpointConfig::new("gpu-0").max_concurrency(1)).unwrap();
//! let t0 = Instant::now();
//! let guard = LoadGuard::acquire_at(&e, 1, t0).expect("a free slot");
//! assert!(LoadGuard::acquire_at(&e, 1, t0).is_none(), "the limit holds");
//! guard.complete_at(t0 + Duration::from_millis(20));
//! assert_eq!((e.in_flight(), e.requests()), (0, 1));
//! ```

mod completion;
mod first_byte;
mod guard;

pub(crate) use self::first_byte::FirstByteHook;

pub use self::{
    completion::{Completion, TrackLoad},
    guard::LoadGuard,
};
