//! Model aliases through real upstreams on loopback: every upstream receives, in the body, the
//! model it serves (not the alias), and while the only upstream of one variant is ejected,
//! the alias is served by the other.

use std::sync::{
    atomic::{AtomicBool, Ordering::SeqCst},
    Arc,
};

use http::StatusCode;
use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    client::{Upstream, UpstreamConfig, Upstreams},
    hints::Served,
    route::{OpenAiRules, RouteLayer, Rules},
    BalanceLayer, Health, HealthFilterLayer, Pool,
};

use crate::{
    post,
    support::{json, Recorder, Seen},
};

/// "chat": three parts llama-70b, one part qwen-72b.
fn rules() -> OpenAiRules {
    OpenAiRules(Rules::new().alias("chat", [("llama-70b", 3.0), ("qwen-72b", 1.0)]))
}

/// An upstream per variant; the qwen one answers 500 while `broken` is set.
async fn upstreams(broken: &Arc<AtomicBool>) -> (Recorder, Recorder, Pool<Upstream>) {
    let llama = Recorder::ok(None).await;
    let broken = Arc::clone(broken);
    let qwen = Recorder::start(None, move |_| {
        if broken.load(SeqCst) {
            json(StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":{}}"#)
        } else {
            json(StatusCode::OK, r#"{"ok":true}"#)
        }
    })
    .await;
    let pool = Upstreams::new()
        .add(
            UpstreamConfig::new(&format!("http://{}/v1", llama.addr))
                .unwrap()
                .name("llama")
                .model("llama-70b"),
        )
        .add(
            UpstreamConfig::new(&format!("http://{}/v1", qwen.addr))
                .unwrap()
                .name("qwen")
                .model("qwen-72b"),
        )
        .build_pool()
        .unwrap();
    (llama, qwen, pool)
}

fn chat(model: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    post(
        "/v1/chat/completions",
        &format!(
            r#"{{"model":"{model}","max_tokens":5,"messages":[{{"role":"user","content":"hi"}}]}}"#
        ),
    )
}

/// The model each request a server saw names in its body; each body's length as sent.
fn models(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|s| {
            let length: usize = s.headers["content-length"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(length, s.body.len(), "content-length follows the body");
            let body: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
            body["model"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn each_upstream_receives_the_model_it_serves_not_the_alias() {
    let (llama, qwen, pool) = upstreams(&Arc::default()).await;
    let svc = ServiceBuilder::new()
        .layer(RouteLayer::new(rules()))
        .layer(HealthFilterLayer::new())
        .layer(BalanceLayer::new())
        .service(pool);
    for _ in 0..100 {
        let r = svc.clone().oneshot(chat("chat")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let (to_llama, to_qwen) = (models(&llama.seen.lock()), models(&qwen.seen.lock()));
    assert_eq!(to_llama.len() + to_qwen.len(), 100);
    assert!(
        to_llama.len() > to_qwen.len() && !to_qwen.is_empty(),
        "split by weight: {} and {}",
        to_llama.len(),
        to_qwen.len()
    );
    assert!(to_llama.iter().all(|m| m == "llama-70b"), "{to_llama:?}");
    assert!(to_qwen.iter().all(|m| m == "qwen-72b"), "{to_qwen:?}");
}

#[tokio::test]
async fn while_one_variants_only_upstream_is_ejected_the_alias_is_served_by_the_other() {
    let broken = Arc::new(AtomicBool::new(true));
    let (llama, qwen, pool) = upstreams(&broken).await;
    let svc = ServiceBuilder::new()
        .layer(RouteLayer::new(rules()))
        .layer(HealthFilterLayer::new())
        .layer(BalanceLayer::new())
        .service(pool.clone());
    // The qwen upstream fails until it is ejected.
    let qwen_endpoint = pool.get("qwen").unwrap();
    for _ in 0..20 {
        if matches!(qwen_endpoint.health(), Health::Ejected { .. }) {
            break;
        }
        let r = svc.clone().oneshot(chat("qwen-72b")).await.unwrap();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert!(matches!(qwen_endpoint.health(), Health::Ejected { .. }));
    let failed_before = qwen.count();

    let mut failures = 0;
    let mut served_by = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..100 {
        match svc.clone().oneshot(chat("chat")).await {
            Ok(r) if r.status() == StatusCode::OK => {
                let key = r.extensions().get::<Served>().unwrap().endpoint().key();
                *served_by.entry(key.to_string()).or_default() += 1;
            }
            _ => failures += 1,
        }
    }
    assert_eq!(failures, 0, "served: {served_by:?}");
    assert_eq!(served_by.get("llama"), Some(&100), "{served_by:?}");
    assert_eq!(
        qwen.count(),
        failed_before,
        "nothing more reached the ejected one"
    );
    let to_llama = models(&llama.seen.lock());
    assert_eq!(to_llama, vec!["llama-70b"; 100]);
}
