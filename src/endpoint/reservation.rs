//! What one request holds of its endpoint's quota ([`Reservation`]), and the endpoint's side
//! of its quota: the pick's question, the levels, the wait queue's timer.

use std::{fmt, sync::Arc};

use tokio::time::Instant;

use super::{
    quota::{Figure, ProviderFigures, QuotaLevel, QuotaState, Tokens},
    Endpoint,
};
use crate::{
    clock::LazyNow,
    sync::{AtomicUsize, Ordering::SeqCst},
};

const PENDING: usize = 0;
const KEPT: usize = 1;
const SETTLED: usize = 2;
const RELEASED: usize = 3;

/// What one request holds against its endpoint's quota, from its pick until its response says
/// what it used ([`settle`](Self::settle)), or until it fails or is cancelled before that (then
/// it is given back whole). `Balance` puts a clone in the response's extensions, so that a
/// reader of the response's `usage` can settle it; the load guard gives it back if the request
/// fails or is dropped before it finished.
#[derive(Clone)]
pub struct Reservation {
    held: Arc<Held>,
}

struct Held {
    endpoint: Arc<Endpoint>,
    units: [u64; 4],
    state: AtomicUsize,
    /// One bit per window whose state the provider's headers on this request's response
    /// replaced: the provider counted the request there, and a usage changes nothing.
    told: AtomicUsize,
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("endpoint", self.held.endpoint.key())
            .field("tokens", &self.tokens())
            .field("state", &self.held.state.load(SeqCst))
            .finish()
    }
}

impl Reservation {
    /// Reserves `tokens` (its quota's expectation without) on `endpoint` at `now`; `Ok(None)`
    /// if it has no quota, `Err(when)` if a window has no room until `when`.
    pub(crate) fn take(
        endpoint: &Arc<Endpoint>,
        tokens: Option<Tokens>,
        now: Instant,
    ) -> Result<Option<Self>, Instant> {
        let Some(q) = endpoint.quota.as_deref() else {
            return Ok(None);
        };
        let units = q.units(tokens);
        q.take(&units, now)?;
        Ok(Some(Self {
            held: Arc::new(Held {
                endpoint: Arc::clone(endpoint),
                units,
                state: AtomicUsize::new(PENDING),
                told: AtomicUsize::new(0),
            }),
        }))
    }

    fn quota(&self) -> &QuotaState {
        self.held
            .endpoint
            .quota
            .as_deref()
            .expect("a reservation is taken on an endpoint with a quota")
    }

    /// The endpoint it is held on.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.held.endpoint
    }

    /// The tokens reserved.
    pub fn tokens(&self) -> Tokens {
        Tokens::new(self.held.units[2], self.held.units[3])
    }

    fn transition(&self, from: &[usize], to: usize) -> Option<usize> {
        self.held
            .state
            .fetch_update(SeqCst, SeqCst, |s| from.contains(&s).then_some(to))
            .ok()
    }

    /// Corrects the reservation to what the request used, by its response's `usage`: the
    /// windows are charged `used` instead of the estimate. Once per request; `false` if it was
    /// settled already, or given back (the request failed or was dropped first).
    pub fn settle(&self, used: Tokens) -> bool {
        let Some(before) = self.transition(&[PENDING, KEPT], SETTLED) else {
            return false;
        };
        let actual = used.units();
        let told = self.held.told.load(SeqCst);
        let windows = self.quota().windows.iter().zip(&self.held.units);
        for (i, ((w, &was), &is)) in windows.zip(&actual).enumerate() {
            let Some(w) = w else { continue };
            if before == PENDING {
                w.unpend(was);
            }
            if told & 1 << i != 0 {
                continue; // the provider's count stands until its next headers
            }
            let (was_c, is_c) = (w.cost(was), w.cost(is));
            if is_c > was_c {
                w.take_more(is_c - was_c);
            } else {
                w.give_back(was_c - is_c);
            }
        }
        self.held.endpoint.quota_changed();
        true
    }

    /// Gives the whole reservation back: the request failed, or was dropped, before the
    /// upstream counted it. Nothing if it was settled or kept meanwhile.
    pub(crate) fn release(&self) {
        if self.release_quietly() {
            self.held.endpoint.quota_changed();
        }
    }

    /// As [`release`](Self::release), without offering the quota to waiting requests (for
    /// the wait queue, which holds its lock). Returns whether anything was given back.
    pub(crate) fn release_quietly(&self) -> bool {
        if self.transition(&[PENDING], RELEASED).is_none() {
            return false;
        }
        self.quota().each(&self.held.units, |w, u| {
            w.give_back(w.cost(u));
            w.unpend(u);
        });
        true
    }

    /// The request finished without saying what it used: the estimate stands (a later
    /// [`settle`](Self::settle) may still correct it).
    pub(crate) fn keep(&self) {
        if self.transition(&[PENDING], KEPT).is_some() {
            self.quota().each(&self.held.units, |w, u| w.unpend(u));
        }
    }

    /// The provider's headers on this request's response: their figures override the local
    /// estimate of every window they speak of where they leave less room (see
    /// `Window::told`), and the request counts as the provider counted it (kept, unless a
    /// usage settles it).
    pub(crate) fn told(&self, figures: &ProviderFigures, now: Instant) {
        let q = self.quota();
        let now_n = q.nanos(now);
        let mut any = false;
        let windows = q.windows.iter().zip(&figures.0).zip(&self.held.units);
        for (i, ((w, f), &own)) in windows.enumerate() {
            let (
                Some(w),
                Some(Figure {
                    limit,
                    remaining: Some(remaining),
                    reset,
                }),
            ) = (w, f)
            else {
                continue;
            };
            let own = if self.held.state.load(SeqCst) == PENDING {
                own
            } else {
                0
            };
            if w.told(*limit, *remaining, *reset, own, now_n) {
                // The provider's count replaced this request's estimate: a settle must not
                // correct it again.
                self.held.told.fetch_or(1 << i, SeqCst);
            }
            any = true;
        }
        if any {
            self.keep();
            self.held.endpoint.quota_changed();
        }
    }
}

/// The endpoint's side of its quota.
impl Endpoint {
    /// Whether the endpoint has a quota.
    #[inline]
    pub fn has_quota(&self) -> bool {
        self.quota.is_some()
    }

    /// Its quota's limits and what is left of them at `now` (empty without a quota).
    pub fn quota_levels(&self, now: Instant) -> Vec<QuotaLevel> {
        self.quota
            .as_deref()
            .map_or_else(Vec::new, |q| q.levels(now))
    }

    /// How many picks passed it over, or took no slot on it, for want of quota.
    pub fn quota_refusals(&self) -> usize {
        self.quota.as_deref().map_or(0, QuotaState::refused)
    }

    /// `None` if its quota has room for a request of `tokens` at `now` (or it has no quota);
    /// else when it will.
    pub(crate) fn quota_wait(&self, tokens: Option<Tokens>, now: Instant) -> Option<Instant> {
        let q = self.quota.as_deref()?;
        q.wait(&q.units(tokens), now)
    }

    /// `Some(())` if it has no quota, or room in it for a request of `tokens` now.
    #[inline]
    pub(crate) fn quota_room(&self, tokens: Option<Tokens>, now: &LazyNow) -> Option<()> {
        if self.quota.is_none() {
            return Some(());
        }
        self.quota_wait(tokens, now.get()).is_none().then_some(())
    }

    /// When its quota will next have room for a request of the expected size, if it has none
    /// now: what the wait queue's timer waits for.
    pub(crate) fn quota_returns(&self, now: Instant) -> Option<Instant> {
        self.quota_wait(None, now)
    }

    /// Sets the wait queue's timer for when this endpoint's quota returns.
    pub(crate) fn quota_timer(&self, at: Instant) {
        self.admission.waiters.note_time(at);
    }

    /// Quota came back: waiting requests may be served.
    fn quota_changed(&self) {
        self.admission.waiters.offer(self);
    }
}

#[cfg(all(test, not(loom)))]
#[path = "quota_tests.rs"]
mod quota_tests;
