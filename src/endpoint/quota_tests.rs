//! Tests of the quota windows and reservations, in virtual time (instants given, never read).

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, SystemTime},
};

use proptest::prelude::*;
use tokio::time::Instant;

use crate::endpoint::{
    quota_headers::read, Endpoint, EndpointConfig, Quota, QuotaKind, Reservation, Tokens,
};

fn endpoint(quota: Quota) -> Arc<Endpoint> {
    Endpoint::new(EndpointConfig::new("q").quota(quota)).unwrap()
}

fn level(e: &Endpoint, kind: QuotaKind, at: Instant) -> crate::endpoint::QuotaLevel {
    e.quota_levels(at)
        .into_iter()
        .find(|l| l.kind == kind)
        .unwrap()
}

#[test]
fn no_limit_is_no_quota_and_bad_settings_are_refused() {
    let plain = Endpoint::new(EndpointConfig::new("p").quota(Quota::new())).unwrap();
    assert!(!plain.has_quota());
    assert!(
        !plain.admission.slots.is_gated(),
        "no quota costs the pick nothing"
    );
    let with = endpoint(Quota::new().requests_per_minute(10));
    assert!(
        with.admission.slots.is_gated(),
        "a quota is read through the gate"
    );
    for bad in [
        Quota::new().tokens_per_minute(0),
        Quota::new().requests_per_minute(5).burst(1.0),
        Quota::new().requests_per_minute(5).burst(f64::NAN),
    ] {
        assert!(Endpoint::new(EndpointConfig::new("b").quota(bad)).is_err());
    }
}

/// A greedy client takes whatever the window allows, every 100 ms for five minutes: no
/// 60-second window ever sees more than the limit, and every window after the first sees at
/// least 90% of it (the refill is smooth: no minute boundary, no stall).
#[test]
fn every_sixty_second_window_stays_within_the_limit_and_is_nearly_full() {
    const LIMIT: u64 = 60_000;
    let start = Instant::now();
    let e = endpoint(Quota::new().tokens_per_minute(LIMIT));
    let mut taken: Vec<(Duration, u64)> = Vec::new();
    let mut sizes = [700u64, 1_300, 400, 2_000, 950].into_iter().cycle();
    let mut size = sizes.next().unwrap();
    for step in 0..3_000u64 {
        let at = Duration::from_millis(step * 100);
        while let Ok(Some(r)) = Reservation::take(&e, Some(Tokens::new(size, 0)), start + at) {
            r.keep();
            taken.push((at, size));
            size = sizes.next().unwrap();
        }
    }
    let mut window: VecDeque<(Duration, u64)> = VecDeque::new();
    let mut sum = 0;
    let (mut max, mut min_full) = (0, u64::MAX);
    for &(at, n) in &taken {
        window.push_back((at, n));
        sum += n;
        while window
            .front()
            .is_some_and(|(t, _)| *t + Duration::from_secs(60) <= at)
        {
            sum -= window.pop_front().unwrap().1;
        }
        max = max.max(sum);
        if at >= Duration::from_secs(120) {
            min_full = min_full.min(sum);
        }
    }
    assert!(max <= LIMIT, "a 60 s window saw {max} of {LIMIT}");
    assert!(
        min_full >= LIMIT * 9 / 10,
        "a full window saw only {min_full}"
    );
}

#[test]
fn a_reservation_given_back_leaves_no_trace_and_a_settle_charges_the_usage() {
    let at = Instant::now();
    let e = endpoint(
        Quota::new()
            .requests_per_minute(100)
            .tokens_per_minute(10_000)
            .burst(0.5),
    );
    let before = e.quota_levels(at);
    let r = Reservation::take(&e, Some(Tokens::new(1_000, 500)), at)
        .unwrap()
        .unwrap();
    let tokens = level(&e, QuotaKind::Tokens, at);
    assert_eq!((tokens.in_flight, tokens.remaining), (1_500, 3_500));
    r.release();
    assert_eq!(e.quota_levels(at), before, "released whole");
    r.release();
    assert!(
        !r.settle(Tokens::new(1, 1)),
        "nothing to settle once released"
    );
    assert_eq!(e.quota_levels(at), before);

    let r = Reservation::take(&e, Some(Tokens::new(1_000, 500)), at)
        .unwrap()
        .unwrap();
    r.keep();
    assert!(
        r.settle(Tokens::new(1_000, 120)),
        "a usage after the end still settles"
    );
    assert!(!r.settle(Tokens::new(1_000, 120)), "once");
    let tokens = level(&e, QuotaKind::Tokens, at);
    assert_eq!((tokens.used, tokens.in_flight), (1_120, 0));
    let requests = level(&e, QuotaKind::Requests, at);
    assert_eq!(requests.used, 1, "the request itself stays counted");
    // More than reserved is charged too.
    let r = Reservation::take(&e, Some(Tokens::new(10, 10)), at)
        .unwrap()
        .unwrap();
    r.settle(Tokens::new(10, 990));
    assert_eq!(level(&e, QuotaKind::Tokens, at).used, 2_120);
}

#[test]
fn a_refusal_by_one_window_leaves_the_others_as_they_were() {
    let at = Instant::now();
    let e = endpoint(
        Quota::new()
            .requests_per_minute(100)
            .tokens_per_minute(1_000),
    );
    Reservation::take(&e, Some(Tokens::new(1_000, 0)), at)
        .unwrap()
        .unwrap()
        .keep();
    let before = e.quota_levels(at);
    assert!(Reservation::take(&e, Some(Tokens::new(10, 0)), at).is_err());
    assert_eq!(e.quota_levels(at), before);
}

#[test]
fn a_full_window_says_when_it_has_room_again() {
    let at = Instant::now();
    let e = endpoint(Quota::new().requests_per_minute(60).burst(0.1));
    for _ in 0..6 {
        Reservation::take(&e, None, at).unwrap().unwrap().keep();
    }
    let when = Reservation::take(&e, None, at).unwrap_err();
    // 54 per minute refill after the burst of 6: one every 60/54 s.
    let wait = when - at;
    assert!(wait > Duration::from_millis(1_100) && wait < Duration::from_millis(1_120));
    assert_eq!(e.quota_wait(None, at), Some(when));
    assert_eq!(e.quota_wait(None, when), None);
    assert!(Reservation::take(&e, None, when).unwrap().is_some());
    assert_eq!(e.quota_refusals(), 1);
}

#[test]
fn a_request_larger_than_the_burst_waits_for_an_empty_window_rather_than_forever() {
    let at = Instant::now();
    let e = endpoint(Quota::new().tokens_per_minute(1_000));
    let big = Some(Tokens::new(800, 0));
    Reservation::take(&e, big, at).unwrap().unwrap().keep();
    let when = Reservation::take(&e, big, at).unwrap_err();
    assert!(when > at);
    assert!(Reservation::take(&e, big, when).unwrap().is_some());
}

#[test]
fn the_providers_headers_replace_the_estimate() {
    let at = Instant::now();
    let e = endpoint(
        Quota::new()
            .requests_per_minute(1_000)
            .tokens_per_minute(100_000)
            .burst(0.5),
    );
    let mine = Reservation::take(&e, Some(Tokens::new(100, 100)), at)
        .unwrap()
        .unwrap();
    let other = Reservation::take(&e, Some(Tokens::new(1_000, 0)), at)
        .unwrap()
        .unwrap();
    let headers: http::HeaderMap = [
        ("x-ratelimit-remaining-tokens", "3000"),
        ("x-ratelimit-reset-tokens", "1s"),
        ("x-ratelimit-limit-tokens", "90000"),
    ]
    .into_iter()
    .map(|(n, v)| (http::HeaderName::from_static(n), v.parse().unwrap()))
    .collect();
    mine.told(&read(&headers, SystemTime::now()), at);
    let tokens = level(&e, QuotaKind::Tokens, at);
    // The provider counted this request; the other one in flight it has not seen yet.
    assert_eq!(tokens.remaining, 2_000);
    assert_eq!(
        (tokens.provider_limit, tokens.provider_remaining),
        (Some(90_000), Some(3_000))
    );
    assert_eq!(
        tokens.in_flight, 1_000,
        "the told request is as the provider counted it"
    );
    // Nothing left: no room until the provider's reset.
    let empty: http::HeaderMap = [
        ("x-ratelimit-remaining-tokens", "0"),
        ("x-ratelimit-reset-tokens", "45s"),
    ]
    .into_iter()
    .map(|(n, v)| (http::HeaderName::from_static(n), v.parse().unwrap()))
    .collect();
    other.told(&read(&empty, SystemTime::now()), at);
    let when = e.quota_wait(Some(Tokens::new(1, 0)), at).unwrap();
    assert!(when - at >= Duration::from_secs(45), "{:?}", when - at);
}

/// A provider's figure that leaves more room than the local accounting does not raise it (its
/// window refills by what it served a minute before, this one evenly), and the request it
/// came with is then corrected by its usage as if no header had come.
#[test]
fn the_providers_headers_never_leave_more_room_than_the_local_accounting() {
    let at = Instant::now();
    let e = endpoint(Quota::new().tokens_per_minute(10_000).burst(0.2));
    let first = Reservation::take(&e, Some(Tokens::new(1_000, 1_000)), at)
        .unwrap()
        .unwrap();
    let before = level(&e, QuotaKind::Tokens, at).remaining;
    assert_eq!(before, 0, "the burst of 2,000 is spent");
    let headers: http::HeaderMap = [("x-ratelimit-remaining-tokens", "9000")]
        .into_iter()
        .map(|(n, v)| (http::HeaderName::from_static(n), v.parse().unwrap()))
        .collect();
    first.told(&read(&headers, SystemTime::now()), at);
    let told = level(&e, QuotaKind::Tokens, at);
    assert_eq!(
        told.remaining, 0,
        "a higher figure leaves the estimate as it was"
    );
    assert_eq!(told.provider_remaining, Some(9_000), "but is reported");
    assert!(Reservation::take(&e, Some(Tokens::new(1, 0)), at).is_err());
    // The request used half its reservation: the usage gives the rest back.
    assert!(first.settle(Tokens::new(1_000, 0)));
    assert_eq!(level(&e, QuotaKind::Tokens, at).remaining, 1_000);
}

/// What a run of random operations leaves in the windows.
#[derive(Debug, Clone)]
enum Op {
    /// A request that completes, with the usage it reports (if any).
    Served(u64, u64, Option<u64>),
    /// A request that fails before the upstream counted it.
    Failed(u64, u64),
    /// A request dropped before it finished (cancelled, or its stream dropped).
    Dropped(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..500u64, 0..500u64, proptest::option::of(0..500u64))
            .prop_map(|(i, o, u)| Op::Served(i, o, u)),
        (0..500u64, 0..500u64).prop_map(|(i, o)| Op::Failed(i, o)),
        (0..500u64, 0..500u64).prop_map(|(i, o)| Op::Dropped(i, o)),
    ]
}

proptest! {
    /// Failed and dropped requests, interleaved in any order with served ones and with each
    /// other, leave every window exactly where the served requests alone leave it.
    #[test]
    fn reservations_always_come_back(ops in proptest::collection::vec((op(), any::<bool>()), 0..40)) {
        let at = Instant::now();
        let quota = Quota::new().requests_per_minute(1_000_000).tokens_per_minute(1_000_000_000)
            .input_tokens_per_minute(1_000_000_000).output_tokens_per_minute(1_000_000_000);
        let (with, without) = (endpoint(quota.clone()), endpoint(quota));
        let mut open = Vec::new();
        for (op, finish_later) in ops {
            match op {
                Op::Served(i, o, usage) => {
                    for e in [&with, &without] {
                        let r = Reservation::take(e, Some(Tokens::new(i, o)), at).unwrap().unwrap();
                        r.keep();
                        if let Some(u) = usage {
                            r.settle(Tokens::new(i, u));
                        }
                    }
                }
                Op::Failed(i, o) | Op::Dropped(i, o) => {
                    let r = Reservation::take(&with, Some(Tokens::new(i, o)), at).unwrap().unwrap();
                    if finish_later {
                        open.push(r);
                    } else {
                        r.release();
                    }
                }
            }
        }
        for r in open {
            r.release();
        }
        prop_assert_eq!(with.quota_levels(at), without.quota_levels(at));
    }
}

#[test]
fn an_absurd_usage_does_not_shut_the_quota_for_ever() {
    let at = Instant::now();
    let e = endpoint(Quota::new().tokens_per_minute(10_000));
    let r = Reservation::take(&e, Some(Tokens::new(100, 100)), at)
        .unwrap()
        .unwrap();
    r.settle(Tokens::new(u64::MAX, 0));
    // At most a whole window more than it reserved: free again within two minutes.
    let later = at + Duration::from_secs(120);
    assert!(
        Reservation::take(&e, Some(Tokens::new(10, 10)), later).is_ok(),
        "shut until {:?} from now",
        e.quota_wait(Some(Tokens::new(10, 10)), later)
            .map(|w| w - later)
    );
}
