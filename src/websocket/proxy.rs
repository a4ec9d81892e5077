//! [`Proxy`]: picks an endpoint for each session from the pool, as `Balance` does for a
//! request, and opens the upstream, failing over before the session starts.

use std::{fmt, sync::Arc, time::Duration};

use http::request;
use tokio::sync::watch;

use super::{
    dial::{dial, timed_out, DialError},
    headers::offered_protocols,
    Session, Settings, Target,
};
use crate::{
    balance::Balance,
    error::{Attempt, AttemptFailure, AttemptsFailed, BoxError, GaveUp, NoEndpoints},
    hints::{Affinity, Cost, Exclude, Require, WithHints},
    route::BadRequest,
};

/// The key of a session, hashed ([`hash_key`](crate::affinity::hash_key)), from its upgrade
/// request.
pub(crate) type KeyFn = dyn Fn(&request::Parts) -> Option<u64> + Send + Sync;

/// What every clone of one proxy shares.
pub(crate) struct Shared {
    pub(crate) settings: Arc<Settings>,
    pub(crate) attempts: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) affinity: Option<Box<KeyFn>>,
    pub(crate) bound: f64,
    pub(crate) hidden_protocols: Vec<String>,
    /// Tells every session to end: set by [`Proxy::shutdown`], and dropped with the last
    /// clone of the proxy, which ends them too.
    pub(crate) shutdown: watch::Sender<bool>,
}

/// Proxies WebSocket sessions to the endpoints of a pool, each session holding its
/// endpoint's slot from the pick to its end. See the [module docs](super).
///
/// `Clone` and cheap to clone. Every session it opened ends when [`shutdown`](Self::shutdown)
/// is called or its last clone is dropped.
pub struct Proxy<S> {
    pub(crate) balance: Balance<S>,
    pub(crate) shared: Arc<Shared>,
}

impl<S> Clone for Proxy<S> {
    fn clone(&self) -> Self {
        Self {
            balance: self.balance.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> fmt::Debug for Proxy<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("balance", &self.balance)
            .field("attempts", &self.shared.attempts)
            .field("connect_timeout", &self.shared.connect_timeout)
            .field("idle_timeout", &self.shared.settings.idle_timeout)
            .field("sessions", &self.sessions())
            .finish_non_exhaustive()
    }
}

impl<S: Target + Clone> Proxy<S> {
    /// Opens a session for a client whose upgrade request had the head `head`, before the
    /// client's upgrade is answered.
    ///
    /// Picks an endpoint as `Balance` picks for a request (tiers, health, limits, and
    /// affinity: the session key's, or an [`Affinity`] hint in `head`'s extensions, where a
    /// [`Require`] or [`Cost`] hint is read too) and takes a slot on it; connects to its
    /// upstream and completes the handshake within the connect timeout. A refused connection,
    /// a failed handshake or a status that calls for another endpoint (5xx, 429, and 401, 403
    /// or 407: the gateway's credentials refused) counts against that endpoint and the next is
    /// tried, up to the attempts allowed.
    ///
    /// Fails with [`BadRequest`] for a path with a `.` or `..` segment (also
    /// percent-encoded): under an upstream's base path it could leave it. Fails with the pick's error ([`NoEndpoints`], [`Overloaded`](crate::error::Overloaded),
    /// [`Unsatisfiable`](crate::capability::Unsatisfiable)) when no attempt could be made, and
    /// with [`AttemptsFailed`] otherwise; [`http_error::openai_response`] turns either into
    /// the answer to give the client.
    ///
    /// [`http_error::openai_response`]: crate::http_error::openai_response
    pub async fn connect(&self, head: &request::Parts) -> Result<Session, BoxError> {
        if crate::dot_segments::has_dot_segment(head.uri.path()) {
            // Joined under an upstream's base path it could leave it, with the upstream's
            // credentials: refused before any endpoint is picked.
            return Err(BadRequest::new("the request's path has a `.` or `..` segment").into());
        }
        let shared = &*self.shared;
        let mut hints = WithHints::new(());
        let ext = &head.extensions;
        if let Some(require) = ext.get::<Require>() {
            hints.extensions.insert(require.clone());
        }
        if let Some(cost) = ext.get::<Cost>() {
            hints.extensions.insert(*cost);
        }
        let keyed = shared.affinity.as_ref().and_then(|key| key(head));
        if let Some(affinity) = ext.get::<Affinity>() {
            hints.extensions.insert(*affinity);
        } else if let Some(key) = keyed {
            let mut affinity = Affinity::hashed(key);
            affinity.bound = shared.bound;
            hints.extensions.insert(affinity);
        }
        let protocols = offered_protocols(&head.headers, &shared.hidden_protocols);
        let mut exclude = Exclude::new();
        let mut failed: Vec<Attempt> = Vec::new();
        let mut gave_up = GaveUp::Attempts;
        let mut retry_after = None;
        while failed.len() < shared.attempts {
            let (service, mut guard) = match self.balance.pick(&hints) {
                Ok(picked) => picked,
                Err(e) if failed.is_empty() => return Err(e),
                Err(e) => {
                    gave_up = GaveUp::NoEndpoints;
                    retry_after = e
                        .downcast_ref::<NoEndpoints>()
                        .and_then(|n| n.retry_after());
                    break;
                }
            };
            let upstream = service.websocket();
            let dialed = tokio::time::timeout(
                shared.connect_timeout,
                dial(&upstream, head, protocols.as_ref(), shared.settings.config),
            )
            .await
            .unwrap_or_else(|_| Err(timed_out(shared.connect_timeout)));
            let error = match dialed {
                Ok(dialed) => {
                    return Ok(Session {
                        upstream: dialed.socket,
                        guard,
                        protocol: dialed.protocol,
                        settings: Arc::clone(&shared.settings),
                        shutdown: shared.shutdown.subscribe(),
                    })
                }
                Err(error) => error,
            };
            let endpoint = Arc::clone(guard.endpoint());
            let verdict = error.verdict(&**self.balance.classifier());
            tracing::debug!(endpoint = %endpoint.key(), ?error, ?verdict, "session refused");
            guard.judge(verdict);
            guard.complete();
            if let Some(health) = &shared.settings.health {
                health.judge(&endpoint, verdict);
            }
            failed.push(Attempt {
                endpoint: Some(endpoint.key().clone()),
                failure: match error {
                    DialError::Refused { status, .. } => AttemptFailure::Status {
                        status,
                        retry_after: match verdict {
                            crate::classify::Outcome::RateLimited { retry_after } => retry_after,
                            _ => None,
                        },
                    },
                    DialError::Failed(e) => AttemptFailure::Error(e),
                },
            });
            if !verdict.is_retriable() {
                break;
            }
            exclude.insert(&endpoint);
            hints.extensions.insert(exclude.clone());
        }
        Err(AttemptsFailed::new(failed, gave_up, retry_after).into())
    }

    /// The pool's balancer.
    pub fn balance(&self) -> &Balance<S> {
        &self.balance
    }
}

impl<S> Proxy<S> {
    /// How many sessions are open (counting those opened and not yet served).
    pub fn sessions(&self) -> usize {
        self.shared.shutdown.receiver_count()
    }

    /// Ends every session: both sides are sent 1001 (going away), and each endpoint's slot is
    /// released. Sessions opened afterwards end as soon as they are served.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }
}
