//! Timeouts: one fired after the request was sent is sent elsewhere only on opt-in (failures
//! before sending always are), and a timeout the user chose is not evidence against the
//! endpoint unless the health policy says so.

use std::{convert::Infallible, sync::atomic::Ordering::SeqCst};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    error::{AttemptsFailed, EndpointError, GaveUp, Timeout},
    failover::FailoverLayer,
    health::HealthFilterLayer,
    hints::AttemptTimeout,
    BalanceLayer, EndpointConfig, Health, HealthPolicy, Pool,
};

use crate::{
    model_server::{chat_request, Mode, ModelServer, Spec, Upstream},
    support::{ms, served, HttpService},
};

/// Real servers on loopback, one per `(key, tier, mode)`, in one pool.
async fn servers(specs: &[(&str, u32, Mode)]) -> (Pool<HttpService>, Vec<ModelServer>) {
    let pool = Pool::new();
    let client = Upstream::client();
    let mut servers = Vec::new();
    for &(key, tier, mode) in specs {
        let s = ModelServer::spawn(Spec::new(key, ms(1), ms(1))).await;
        s.set_mode(mode);
        pool.insert(
            EndpointConfig::new(key).tier(tier),
            Upstream::new(client.clone(), s.uri()),
        )
        .unwrap();
        servers.push(s);
    }
    (pool, servers)
}

fn received(s: &ModelServer) -> u64 {
    s.stats.received.load(SeqCst)
}

/// The per-attempt timeout inside an error, if that is what it is.
fn timeout_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Timeout> {
    error
        .downcast_ref::<EndpointError>()
        .and_then(|e| e.inner().downcast_ref::<Timeout>())
}

#[tokio::test]
async fn a_timeout_after_sending_is_retried_elsewhere_only_when_the_user_opted_in() {
    let balance = || BalanceLayer::builder().timeout(ms(300)).build().unwrap();
    let (pool, s) = servers(&[("hung", 0, Mode::Hang), ("spare", 1, Mode::Normal)]).await;
    // Default settings, in place and boxed (a deadline boxes the attempts).
    for failover in [
        FailoverLayer::new(),
        FailoverLayer::builder()
            .deadline(ms(30_000))
            .build()
            .unwrap(),
    ] {
        let svc = ServiceBuilder::new()
            .layer(failover)
            .layer(balance())
            .service(pool.clone());
        let error = svc
            .oneshot(chat_request(1, false))
            .await
            .expect_err("the upstream may be running it: not sent again");
        let timeout = timeout_in(&*error).unwrap_or_else(|| panic!("a Timeout: {error}"));
        assert!(timeout.request_sent());
    }
    assert_eq!((received(&s[0]), received(&s[1])), (2, 0));

    let svc = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .retry_timeouts(true)
                .build()
                .unwrap(),
        )
        .layer(balance())
        .service(pool.clone());
    let response = svc.oneshot(chat_request(1, false)).await.unwrap();
    assert_eq!(
        served(&response).key().as_str(),
        "spare",
        "opted in: sent again"
    );
    assert_eq!((received(&s[0]), received(&s[1])), (3, 1));
}

#[tokio::test]
async fn failures_before_sending_are_retried_and_a_later_timeout_names_every_attempt() {
    let (pool, s) = servers(&[
        ("refused", 0, Mode::Normal),
        ("hung", 1, Mode::Hang),
        ("spare", 2, Mode::Normal),
    ])
    .await;
    s[0].crash(); // connections refused: nothing was sent
    let svc = ServiceBuilder::new()
        .layer(FailoverLayer::builder().attempts(4).build().unwrap())
        .layer(BalanceLayer::builder().timeout(ms(300)).build().unwrap())
        .service(pool.clone());
    let error = svc
        .oneshot(chat_request(1, false))
        .await
        .expect_err("the hung upstream's timeout ends it");
    let failed = error
        .downcast_ref::<AttemptsFailed>()
        .unwrap_or_else(|| panic!("AttemptsFailed: {error}"));
    assert_eq!(failed.gave_up(), GaveUp::TimedOutAfterSending, "{error}");
    let named: Vec<_> = failed
        .attempts()
        .iter()
        .map(|a| a.endpoint.as_ref().unwrap().as_str().to_owned())
        .collect();
    assert_eq!(named, ["refused", "hung"], "{error}");
    assert_eq!(received(&s[2]), 0, "the timeout was not retried");
}

type Hanging = BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

/// An endpoint service that takes every request and never answers.
fn hanging() -> Hanging {
    BoxCloneSyncService::new(tower::service_fn(|_: Request<Full<Bytes>>| async {
        std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>().await
    }))
}

#[tokio::test(start_paused = true)]
async fn a_timeout_the_user_chose_is_not_health_evidence_unless_the_policy_says_so() {
    for timeouts_are_failures in [false, true] {
        for by_hint in [false, true] {
            let pool = Pool::new();
            let e = pool.insert(EndpointConfig::new("slow"), hanging()).unwrap();
            let mut policy = HealthPolicy::default();
            policy.consecutive_failures = 1;
            policy.max_ejected_fraction = 1.0;
            policy.timeouts_are_failures = timeouts_are_failures;
            let balance = if by_hint {
                BalanceLayer::new()
            } else {
                BalanceLayer::builder().timeout(ms(1_000)).build().unwrap()
            };
            let svc = ServiceBuilder::new()
                .layer(HealthFilterLayer::builder().policy(policy).build().unwrap())
                .layer(balance)
                .service(pool.clone());
            let mut request = Request::new(Full::new(Bytes::from_static(b"{}")));
            if by_hint {
                request.extensions_mut().insert(AttemptTimeout(ms(1_000)));
            }
            let error = svc.oneshot(request).await.expect_err("timed out");
            assert!(timeout_in(&*error).is_some(), "{error}");
            let case = format!("timeouts_are_failures {timeouts_are_failures}, hint {by_hint}");
            assert_eq!(
                matches!(e.health(), Health::Ejected { .. }),
                timeouts_are_failures,
                "{case}: {:?}",
                e.health()
            );
            assert_eq!(e.in_flight(), 0, "{case}");
        }
    }
}
