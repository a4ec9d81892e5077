//! What a client, a scraper or a log sees of an endpoint's key: never its credentials, and
//! each endpoint named once.

use std::sync::{Arc, Mutex};

use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{error::AttemptsFailed, BalanceLayer, EndpointConfig, FailoverLayer, Pool};

use crate::{
    model_server::{chat_request, ModelServer, Spec, Upstream},
    support::{ms, HttpService},
};

/// A writer that keeps what tracing writes, for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn errors_metrics_and_logs_show_no_credentials_and_name_each_endpoint_once() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    // Tests on other threads may have met the log's call site with no subscriber first: ask
    // every call site again, now that this thread has one.
    tracing::callsite::rebuild_interest_cache();

    // Two upstreams whose URLs carry credentials, both refusing connections.
    let pool: Pool<HttpService> = Pool::new();
    let client = Upstream::client();
    for i in 0..2 {
        let server = ModelServer::spawn(Spec::new(format!("m{i}"), ms(1), ms(1))).await;
        let key = format!("http://user:tok{i}@{}/v1?key=secret{i}", server.addr);
        pool.insert(
            EndpointConfig::new(key),
            Upstream::new(client.clone(), server.uri()),
        )
        .unwrap();
        server.crash();
    }
    let svc = ServiceBuilder::new()
        .layer(FailoverLayer::new())
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let error = svc
        .oneshot(chat_request(1, false))
        .await
        .expect_err("both refuse");
    let failed = error
        .downcast_ref::<AttemptsFailed>()
        .expect("AttemptsFailed");
    assert_eq!(failed.attempts().len(), 2, "{error}");
    let shown = error.to_string();
    let debug = format!("{error:?}");
    let metrics = pool.metrics().prometheus();
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("attempt failed"),
        "tracing was captured: {logged}"
    );
    for (what, text) in [
        ("Display", &shown),
        ("Debug", &debug),
        ("/metrics", &metrics),
        ("logs", &logged),
    ] {
        for secret in ["tok0", "tok1", "secret0", "secret1", "user:"] {
            assert!(!text.contains(secret), "{what} shows {secret:?}: {text}");
        }
    }
    for e in pool.endpoints() {
        let shown_key = e.key().to_string();
        assert!(
            shown_key.ends_with("/v1") && !shown_key.contains('@'),
            "{shown_key}"
        );
        assert_eq!(
            shown.matches(&shown_key).count(),
            1,
            "each endpoint is named once: {shown}"
        );
        // Shortened by redaction, the label carries a hash of the whole key after `#`.
        assert!(
            metrics.contains(&format!("endpoint=\"{shown_key}#")),
            "{metrics}"
        );
    }
}
