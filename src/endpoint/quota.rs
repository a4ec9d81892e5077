//! Provider quotas: an endpoint's requests and tokens per minute ([`Quota`]), the windows that
//! account for them, and the [`Reservation`] a request holds against them.
//!
//! Each limit is a GCRA (generic cell rate algorithm) over one atomic: the theoretical arrival
//! time (TAT), the instant at which the window would be empty again, in nanoseconds since the
//! quota was made. A request of `n` units moves it on by `n` times the emission interval;
//! it is admitted if the TAT stays within the burst tolerance of now. Time refills the window
//! continuously, with no counter reset on the minute, and a reservation, a correction and a
//! release are each one read-modify-write, so no lock is ever taken. GCRA rather than a token
//! bucket with a level and a time stamp: one word holds the whole state, so a reservation is
//! one compare-and-swap and its correction or release one `fetch_add`/`fetch_sub` that never
//! has to re-read the clock.
//!
//! The limit holds in every 60-second window: a limit of `L` per minute admits a burst of
//! `B = L × burst` units at once and then `L − B` per minute, so that no 60-second window ever
//! sees more than `L` (a bucket of the whole `L` refilled at `L` per minute would admit `2L`
//! in the window that straddles its refill). A request larger than the burst is admitted only
//! when the window is empty, so that it is not refused forever; it is then the only excess a
//! window can see.

use std::{fmt, time::Duration};

use tokio::time::Instant;

use crate::sync::{AtomicU64, AtomicUsize, Ordering::SeqCst};

const WINDOW: Duration = Duration::from_secs(60);

/// What a quota counts: requests, or tokens in one of the ways providers count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    /// Requests per minute.
    Requests,
    /// Tokens per minute, input and output together (OpenAI's `tokens`, Anthropic's
    /// `tokens`).
    Tokens,
    /// Input tokens per minute (Anthropic's `input-tokens`).
    InputTokens,
    /// Output tokens per minute (Anthropic's `output-tokens`).
    OutputTokens,
}

impl QuotaKind {
    /// Every kind, in the order quotas keep them.
    pub const ALL: [QuotaKind; 4] = [
        QuotaKind::Requests,
        QuotaKind::Tokens,
        QuotaKind::InputTokens,
        QuotaKind::OutputTokens,
    ];

    /// The kind's name in metrics: `requests`, `tokens`, `input_tokens`, `output_tokens`.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Requests => "requests",
            QuotaKind::Tokens => "tokens",
            QuotaKind::InputTokens => "input_tokens",
            QuotaKind::OutputTokens => "output_tokens",
        }
    }
}

/// The tokens a request is expected to use (its prompt, and its output at most), or did use
/// (the response's `usage`): what a quota reserves and then corrects. As a request hint
/// (in its extensions), it says what the request will take; `Route` sets it from an OpenAI
/// body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Input (prompt) tokens.
    pub input: u64,
    /// Output (generated) tokens.
    pub output: u64,
}

impl Tokens {
    /// `input` prompt tokens and `output` generated tokens.
    pub fn new(input: u64, output: u64) -> Self {
        Self { input, output }
    }

    /// What each kind of quota counts of a request of these tokens.
    pub(super) fn units(self) -> [u64; 4] {
        [
            1,
            self.input.saturating_add(self.output),
            self.input,
            self.output,
        ]
    }
}

/// An endpoint's provider quotas (set with
/// [`EndpointConfig::quota`](super::EndpointConfig::quota)): requests and tokens per minute,
/// each optional, as the provider counts them.
///
/// ```
/// use tower_ai_balance::{endpoint::Quota, EndpointConfig};
/// let openai = EndpointConfig::new("https://api.openai.com")
///     .quota(Quota::new().requests_per_minute(500).tokens_per_minute(200_000));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Quota {
    limits: [Option<u64>; 4],
    expect: Tokens,
    burst: f64,
}

impl Default for Quota {
    fn default() -> Self {
        Self::new()
    }
}

impl Quota {
    /// No limit yet; a request of unknown size is expected to take 256 input and 256 output
    /// tokens, and 1/20 of each limit may be spent at once.
    pub fn new() -> Self {
        Self {
            limits: [None; 4],
            expect: Tokens::new(256, 256),
            burst: 0.05,
        }
    }

    fn limit(mut self, kind: QuotaKind, limit: u64) -> Self {
        self.limits[kind as usize] = Some(limit);
        self
    }

    /// At most `limit` requests in any 60 seconds.
    pub fn requests_per_minute(self, limit: u64) -> Self {
        self.limit(QuotaKind::Requests, limit)
    }

    /// At most `limit` tokens, input and output together, in any 60 seconds.
    pub fn tokens_per_minute(self, limit: u64) -> Self {
        self.limit(QuotaKind::Tokens, limit)
    }

    /// At most `limit` input tokens in any 60 seconds.
    pub fn input_tokens_per_minute(self, limit: u64) -> Self {
        self.limit(QuotaKind::InputTokens, limit)
    }

    /// At most `limit` output tokens in any 60 seconds.
    pub fn output_tokens_per_minute(self, limit: u64) -> Self {
        self.limit(QuotaKind::OutputTokens, limit)
    }

    /// What a request reserves when it says nothing of its size (no [`Tokens`] hint): its
    /// prompt's tokens and its output's.
    pub fn expect(mut self, input: u64, output: u64) -> Self {
        self.expect = Tokens::new(input, output);
        self
    }

    /// The share of each limit that may be spent at once, in `[0, 1)`; the rest refills
    /// evenly over the minute (0.05 by default). A larger burst absorbs spikes but lowers the
    /// steady rate: a window never sees more than the limit either way.
    pub fn burst(mut self, share: f64) -> Self {
        self.burst = share;
        self
    }

    /// The limit of one kind, if set.
    pub fn limit_of(&self, kind: QuotaKind) -> Option<u64> {
        self.limits[kind as usize]
    }

    /// What a request of unknown size is expected to take.
    pub fn expected(&self) -> Tokens {
        self.expect
    }

    /// What is wrong with the settings, if anything: (setting, reason).
    pub(super) fn invalid(&self) -> Option<(&'static str, &'static str)> {
        if self.limits.contains(&Some(0)) {
            return Some(("quota", "a limit of 0 per minute could never serve"));
        }
        if !(self.burst >= 0.0 && self.burst < 1.0) {
            return Some(("quota burst", "must be at least 0 and below 1"));
        }
        None
    }
}

/// One limit's window: the GCRA state and what it is made of.
#[derive(Debug)]
pub(super) struct Window {
    limit: u64,
    /// The emission interval: nanoseconds per unit.
    interval: f64,
    /// The burst tolerance, in nanoseconds.
    tolerance: u64,
    /// The theoretical arrival time, in nanoseconds since the quota was made.
    tat: AtomicU64,
    /// Units reserved by requests that have not finished (nor been absorbed by the provider's
    /// figures): what a provider's `remaining` does not count yet.
    pending: AtomicU64,
    /// The provider's last figures: limit and remaining (`u64::MAX`: none).
    told_limit: AtomicU64,
    told_remaining: AtomicU64,
}

impl Window {
    fn new(limit: u64, burst: f64) -> Self {
        let burst_units = ((limit as f64) * burst).floor() as u64;
        let rate = limit.saturating_sub(burst_units).max(1);
        let interval = WINDOW.as_nanos() as f64 / rate as f64;
        Self {
            limit,
            interval,
            tolerance: (burst_units as f64 * interval).round() as u64,
            tat: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            told_limit: AtomicU64::new(u64::MAX),
            told_remaining: AtomicU64::new(u64::MAX),
        }
    }

    /// What `units` move the TAT on by: the same figure for a reservation and its undoing.
    pub(super) fn cost(&self, units: u64) -> u64 {
        let c = (units as f64 * self.interval).round();
        if c >= u64::MAX as f64 {
            u64::MAX
        } else {
            c as u64
        }
    }

    /// When `cost` could be admitted at a TAT of `tat`: at once if it is `now` or earlier.
    fn ready_at(&self, tat: u64, cost: u64) -> u64 {
        if cost <= self.tolerance {
            tat.saturating_add(cost).saturating_sub(self.tolerance)
        } else {
            tat // larger than the burst: when the window is empty
        }
    }

    fn admits(&self, tat: u64, cost: u64, now: u64) -> bool {
        tat <= now || tat.saturating_add(cost) <= now.saturating_add(self.tolerance)
    }

    /// Takes `cost`, or says when it could be taken.
    fn try_take(&self, cost: u64, now: u64) -> Result<(), u64> {
        let mut tat = self.tat.load(SeqCst);
        loop {
            if !self.admits(tat, cost, now) {
                return Err(self.ready_at(tat, cost));
            }
            let next = tat.max(now).saturating_add(cost);
            match self.tat.compare_exchange_weak(tat, next, SeqCst, SeqCst) {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }

    pub(super) fn give_back(&self, cost: u64) {
        let _ = self
            .tat
            .fetch_update(SeqCst, SeqCst, |t| Some(t.saturating_sub(cost)));
    }

    /// Charges `cost` more than a request reserved, at most a whole window's units: an
    /// answer's usage beyond that (an upstream's absurd figure) would shut the window for as
    /// long as it claims, and no provider admits one request over its whole limit.
    pub(super) fn take_more(&self, cost: u64) {
        let cost = cost.min(self.cost(self.limit));
        let _ = self
            .tat
            .fetch_update(SeqCst, SeqCst, |t| Some(t.saturating_add(cost)));
    }

    pub(super) fn unpend(&self, units: u64) {
        let _ = self
            .pending
            .fetch_update(SeqCst, SeqCst, |p| Some(p.saturating_sub(units)));
    }

    /// Units left now: what the window could admit at once.
    fn remaining(&self, now: u64) -> u64 {
        let tat = self.tat.load(SeqCst).max(now);
        let room = now.saturating_add(self.tolerance).saturating_sub(tat);
        ((room as f64 / self.interval).floor() as u64).min(self.limit)
    }

    /// Units spent in the window as it stands (reserved or used, not yet refilled).
    fn used(&self, now: u64) -> u64 {
        let ahead = self.tat.load(SeqCst).saturating_sub(now);
        ((ahead as f64 / self.interval).ceil() as u64).min(u64::MAX / 2)
    }

    /// The provider says `remaining` are left and the window is whole again after `reset`.
    /// The provider has counted the request they came with (`own` units) but not the others
    /// this router has in flight, which are taken off. Its figures override the local
    /// estimate where they leave less room (other clients of the key spent some, or nothing
    /// is left before the reset); they never leave more than the local accounting does: a
    /// provider's window refills by what it served a minute before, in lumps, while this one
    /// refills evenly, so room granted on a provider's higher figure would be spent again by
    /// the even refill before the provider's own returned (429s at saturation). Returns
    /// whether the figures overrode the estimate.
    pub(super) fn told(
        &self,
        limit: Option<u64>,
        remaining: u64,
        reset: Option<Duration>,
        own: u64,
        now: u64,
    ) -> bool {
        let others = self.pending.load(SeqCst).saturating_sub(own);
        let available = remaining.saturating_sub(others);
        let burst_units = (self.tolerance as f64 / self.interval).floor() as u64;
        let tat = if remaining == 0 {
            // Nothing left: no room before the provider's reset (within one window), and the
            // usual refill from then on.
            let reset = reset.map_or(0, |r| r.min(WINDOW).as_nanos() as u64);
            now.saturating_add(self.tolerance).saturating_add(reset)
        } else {
            now.saturating_add(self.tolerance)
                .saturating_sub(self.cost(available.min(burst_units)))
        };
        let before = self.tat.fetch_max(tat, SeqCst);
        self.told_limit.store(limit.unwrap_or(u64::MAX), SeqCst);
        self.told_remaining.store(remaining, SeqCst);
        tat > before
    }
}

/// An endpoint's quota state: one window per limit set.
pub(crate) struct QuotaState {
    config: Quota,
    pub(super) windows: [Option<Window>; 4],
    born: Instant,
    /// Requests refused for want of quota (the pick moved on, or waited).
    refused: AtomicUsize,
}

impl fmt::Debug for QuotaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl QuotaState {
    pub(super) fn new(config: Quota) -> Option<Box<Self>> {
        if config.limits.iter().all(Option::is_none) {
            return None;
        }
        let windows = config
            .limits
            .map(|l| l.map(|l| Window::new(l, config.burst)));
        Some(Box::new(Self {
            config,
            windows,
            born: Instant::now(),
            refused: AtomicUsize::new(0),
        }))
    }

    pub(super) fn config(&self) -> &Quota {
        &self.config
    }

    pub(super) fn nanos(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.born);
        d.as_nanos().min(u128::from(u64::MAX / 2)) as u64
    }

    pub(super) fn instant(&self, nanos: u64) -> Instant {
        crate::clock::later(self.born, Duration::from_nanos(nanos))
    }

    /// The units each kind counts of a request of `tokens` (the expectation without).
    pub(super) fn units(&self, tokens: Option<Tokens>) -> [u64; 4] {
        tokens.unwrap_or(self.config.expect).units()
    }

    /// `None` if every window has room for `units` at `now`; else when the last of them will.
    pub(super) fn wait(&self, units: &[u64; 4], now: Instant) -> Option<Instant> {
        let now_n = self.nanos(now);
        let mut at = None::<u64>;
        for (w, &u) in self.windows.iter().zip(units) {
            let Some(w) = w else { continue };
            let tat = w.tat.load(SeqCst);
            let cost = w.cost(u);
            if !w.admits(tat, cost, now_n) {
                let ready = w.ready_at(tat, cost);
                at = Some(at.map_or(ready, |a| a.max(ready)));
            }
        }
        at.map(|a| self.instant(a.max(now_n)))
    }

    /// Takes `units` from every window, all or none; else when they would all have room.
    pub(super) fn take(&self, units: &[u64; 4], now: Instant) -> Result<(), Instant> {
        let now_n = self.nanos(now);
        for (i, (w, &u)) in self.windows.iter().zip(units).enumerate() {
            let Some(w) = w else { continue };
            if let Err(ready) = w.try_take(w.cost(u), now_n) {
                for (w, &u) in self.windows[..i].iter().zip(units) {
                    if let Some(w) = w {
                        w.give_back(w.cost(u));
                        w.unpend(u);
                    }
                }
                self.refused.fetch_add(1, SeqCst);
                let later = self.wait(units, now).map_or(ready, |a| self.nanos(a));
                return Err(self.instant(later.max(ready).max(now_n)));
            }
            w.pending.fetch_add(u, SeqCst);
        }
        Ok(())
    }

    pub(super) fn each(&self, units: &[u64; 4], f: impl Fn(&Window, u64)) {
        for (w, &u) in self.windows.iter().zip(units) {
            if let Some(w) = w {
                f(w, u);
            }
        }
    }

    /// What the quota looks like at `now`, per limit set.
    pub(super) fn levels(&self, now: Instant) -> Vec<QuotaLevel> {
        let now = self.nanos(now);
        QuotaKind::ALL
            .iter()
            .zip(&self.windows)
            .filter_map(|(&kind, w)| {
                let w = w.as_ref()?;
                let told = |a: &AtomicU64| Some(a.load(SeqCst)).filter(|&v| v != u64::MAX);
                Some(QuotaLevel {
                    kind,
                    limit: w.limit,
                    used: w.used(now),
                    remaining: w.remaining(now),
                    in_flight: w.pending.load(SeqCst),
                    provider_limit: told(&w.told_limit),
                    provider_remaining: told(&w.told_remaining),
                })
            })
            .collect()
    }

    pub(super) fn refused(&self) -> usize {
        self.refused.load(SeqCst)
    }
}

/// One limit of an endpoint's quota as it stands ([`Endpoint::quota_levels`](super::Endpoint::quota_levels)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLevel {
    /// What it counts.
    pub kind: QuotaKind,
    /// The configured limit per minute.
    pub limit: u64,
    /// Units spent and not yet refilled (reserved by requests in flight included).
    pub used: u64,
    /// Units that could be spent at once now.
    pub remaining: u64,
    /// Units reserved by requests in flight, not yet corrected to their use.
    pub in_flight: u64,
    /// The provider's limit by its latest headers.
    pub provider_limit: Option<u64>,
    /// The provider's remaining by its latest headers.
    pub provider_remaining: Option<u64>,
}

/// What a provider's rate-limit headers say of one limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Figure {
    pub(crate) limit: Option<u64>,
    pub(crate) remaining: Option<u64>,
    pub(crate) reset: Option<Duration>,
}

/// What a provider's rate-limit headers say, per [`QuotaKind`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ProviderFigures(pub(crate) [Option<Figure>; 4]);

impl ProviderFigures {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`

    use super::Window;
    use loom::{sync::Arc, thread};

    /// Takes racing each other and a give-back lose no update: the window ends exactly where
    /// the requests kept put it, and never holds more than its burst.
    #[test]
    fn racing_takes_and_give_backs_lose_no_update() {
        loom::model(|| {
            // A burst of 2 units.
            let w = Arc::new(Window::new(40, 0.05));
            let now = 1_000_000_000_000;
            let c = w.cost(1);
            let keeps = {
                let w = Arc::clone(&w);
                thread::spawn(move || u64::from(w.try_take(c, now).is_ok()))
            };
            let gives_back = {
                let w = Arc::clone(&w);
                thread::spawn(move || {
                    if w.try_take(c, now).is_ok() {
                        w.give_back(c);
                    }
                })
            };
            let mine = u64::from(w.try_take(c, now).is_ok());
            let kept = keeps.join().unwrap() + mine;
            gives_back.join().unwrap();
            assert!(kept <= 2);
            let tat = w.tat.load(crate::sync::Ordering::SeqCst);
            assert_eq!(tat, now + c * kept, "an update was lost");
        });
    }
}
