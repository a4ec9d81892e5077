//! Quotas over real HTTP: the shared model server in quota mode (a sliding minute per key, 429
//! beyond it, the provider's rate-limit headers on every answer), in OpenAI's format and
//! Anthropic's, streamed and not.

use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    endpoint::{Quota, QuotaKind},
    hints::Tokens,
    BalanceLayer, EndpointConfig, Pool,
};

use crate::{
    model_server::{chat_request, ModelServer, Spec, Upstream},
    support::{read_to_end, served},
};

/// Each tier-0 server's quota, in tokens per minute.
const TPM: u64 = 6_000;

/// A request as the model server counts it: a quarter of its body's bytes plus one, and its
/// `max_tokens`. The router is told the same through the `Tokens` hint.
fn counted(mut request: Request<Full<Bytes>>, max_tokens: u64) -> Request<Full<Bytes>> {
    use http_body::Body;
    let len = request.body().size_hint().exact().unwrap();
    request
        .extensions_mut()
        .insert(Tokens::new(len / 4 + 1, max_tokens));
    request
}

/// Sends a burst of three times one endpoint's token quota at once over two quota'd endpoints
/// and a second tier; returns the 429s, the responses by tier, and each server's refusals.
async fn burst(with_quotas: bool) -> (usize, [usize; 2], Vec<u64>) {
    let client = Upstream::client();
    let pool = Pool::new();
    let mut servers = Vec::new();
    for (name, tier, quota) in [("a", 0, TPM), ("b", 0, TPM), ("spill", 1, u64::MAX / 4)] {
        let spec = Spec::new(name, Duration::from_millis(5), Duration::ZERO).quota(10_000, quota);
        let server = ModelServer::spawn(spec).await;
        let mut config = EndpointConfig::new(name).tier(tier);
        if with_quotas && tier == 0 {
            config = config.quota(
                Quota::new()
                    .tokens_per_minute(TPM)
                    .requests_per_minute(10_000)
                    .burst(0.5),
            );
        }
        pool.insert(config, Upstream::new(client.clone(), server.uri()))
            .unwrap();
        servers.push(server);
    }
    let svc = ServiceBuilder::new()
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let one = counted(chat_request(200, false), 200);
    let size = {
        let t = one.extensions().get::<Tokens>().unwrap();
        t.input + t.output
    };
    let n = (3 * TPM / size) as usize;
    let calls = (0..n).map(|_| {
        let svc = svc.clone();
        async move {
            let response = svc.oneshot(counted(chat_request(200, false), 200)).await?;
            let tier = served(&response).tier();
            let status = response.status();
            read_to_end(response.into_body()).await?;
            Ok::<_, tower_ai_balance::BoxError>((status, tier))
        }
    });
    let mut limited = 0;
    let mut tiers = [0; 2];
    for result in futures_util::future::join_all(calls).await {
        let (status, tier) = result.unwrap();
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        } else {
            assert_eq!(status, StatusCode::OK);
            tiers[tier as usize] += 1;
        }
    }
    let refused = servers
        .iter()
        .map(|s| s.stats.quota_refused.load(SeqCst))
        .collect();
    for e in pool.endpoints() {
        assert_eq!(e.in_flight(), 0);
    }
    (limited, tiers, refused)
}

/// With quotas no request is refused with 429 and the second tier takes the excess; without
/// them the tier-0 servers refuse what exceeds their minute, counted beside.
#[tokio::test]
async fn a_burst_of_three_quotas_spills_to_the_second_tier_instead_of_429s() {
    let (limited, tiers, refused) = burst(true).await;
    println!(
        "with quotas: {limited} answered 429; {} served by tier 0, {} by tier 1; \
         server refusals {refused:?}",
        tiers[0], tiers[1]
    );
    assert_eq!(limited, 0);
    assert_eq!(refused, vec![0, 0, 0]);
    assert!(tiers[0] > 0 && tiers[1] > 0, "{tiers:?}");
    assert!(
        tiers[1] > tiers[0],
        "the second tier takes the excess: {tiers:?}"
    );

    let (limited, tiers, refused) = burst(false).await;
    println!(
        "without quotas: {limited} answered 429; {} served by tier 0, {} by tier 1; \
         server refusals {refused:?}",
        tiers[0], tiers[1]
    );
    assert!(limited > 0, "a burst of 3× the quota is refused beyond it");
    assert_eq!(
        tiers[1], 0,
        "without quotas nothing spills: tier 0 always has room"
    );
}

/// The provider's headers correct the router's figures, in both formats, streamed and not:
/// after one request the endpoint's levels show the server's limit and remaining.
#[tokio::test]
async fn both_formats_headers_reach_the_quota_streamed_or_not() {
    let client = Upstream::client();
    for (anthropic, stream) in [(false, false), (false, true), (true, false), (true, true)] {
        let server = ModelServer::spawn(
            Spec::new("q", Duration::from_millis(1), Duration::ZERO).quota(50, 9_000),
        )
        .await;
        let pool = Pool::new();
        let e = pool
            .insert(
                EndpointConfig::new("q").quota(
                    Quota::new()
                        .requests_per_minute(100)
                        .tokens_per_minute(10_000),
                ),
                Upstream::new(client.clone(), server.uri()),
            )
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(BalanceLayer::new())
            .service(pool.clone());
        let request = if anthropic {
            let body = serde_json::json!({
                "model": "sim", "max_tokens": 8, "stream": stream,
                "messages": [{"role": "user", "content": "hello"}],
            });
            Request::post("/v1/messages")
                .header("x-api-key", "k")
                .header("anthropic-version", "2023-06-01")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap()
        } else {
            chat_request(8, stream)
        };
        let request = counted(request, 8);
        let response = svc.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        read_to_end(response.into_body()).await.unwrap();
        let levels = e.quota_levels(Instant::now());
        let of = |kind| levels.iter().find(|l| l.kind == kind).unwrap();
        let counted = server.stats.quota_peak_tokens.load(SeqCst);
        let case = format!("anthropic {anthropic}, stream {stream}");
        assert_eq!(of(QuotaKind::Requests).provider_limit, Some(50), "{case}");
        assert_eq!(
            of(QuotaKind::Requests).provider_remaining,
            Some(49),
            "{case}"
        );
        assert_eq!(of(QuotaKind::Tokens).provider_limit, Some(9_000), "{case}");
        assert_eq!(
            of(QuotaKind::Tokens).provider_remaining,
            Some(9_000 - counted),
            "{case}"
        );
        assert_eq!(of(QuotaKind::Tokens).in_flight, 0, "{case}");
    }
}
