//! A configuration file's `probes` and `scrape`: the gateway starts them. A probe ejects an
//! upstream that stopped answering, with no request sent; a scrape brings the engines' load
//! reports to the pool.

use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use tower_ai_balance::Health;

use crate::{
    gateway::Gateway,
    model_server::{ModelServer, Spec},
    serve,
};

fn quick(name: &str) -> Spec {
    Spec::new(name, Duration::from_millis(1), Duration::from_millis(1))
}

async fn gateway(toml: &str) -> tower_ai_balance::Pool<tower_ai_balance::client::Upstream> {
    let gw = Gateway {
        settings: toml::from_str(toml).unwrap(),
        ..Gateway::default()
    };
    serve(gw).await.1
}

#[tokio::test]
async fn a_configured_probe_ejects_an_upstream_that_stopped_answering() {
    let (alive, dead) = (
        ModelServer::spawn(quick("alive")).await,
        ModelServer::spawn(quick("dead")).await,
    );
    let pool = gateway(&format!(
        r#"
[[endpoints]]
key = "{alive}v1"
models = ["sim"]

[[endpoints]]
key = "{dead}v1"
models = ["sim"]

[probes]
interval = "20ms"
timeout = "2s"
unhealthy_threshold = 2
"#,
        alive = alive.uri(),
        dead = dead.uri(),
    ))
    .await;
    dead.crash();
    let endpoint = |server: &ModelServer| {
        let key = format!("{}v1", server.uri());
        pool.get(&key)
            .unwrap_or_else(|| panic!("no endpoint {key}"))
    };
    let mut ejected = false;
    for _ in 0..500 {
        if matches!(endpoint(&dead).health(), Health::Ejected { .. }) {
            ejected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ejected, "{:?}", endpoint(&dead).health());
    assert_eq!(endpoint(&alive).health(), Health::Healthy);
    // No request was sent: the probes alone judged them.
    assert_eq!(
        alive.stats.received.load(SeqCst) + dead.stats.received.load(SeqCst),
        0
    );
    assert_eq!(
        pool.endpoints().iter().map(|e| e.requests()).sum::<u64>(),
        0
    );
}

#[tokio::test]
async fn without_probes_in_the_file_a_dead_upstream_stays_in_until_a_request_fails() {
    let dead = ModelServer::spawn(quick("dead")).await;
    let pool = gateway(&format!("[[endpoints]]\nkey = \"{}v1\"\n", dead.uri())).await;
    dead.crash();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pool.endpoints()[0].health(), Health::Healthy);
}

#[tokio::test]
async fn a_configured_scrape_brings_the_engines_load_reports_to_the_pool() {
    let engine = ModelServer::spawn(quick("engine")).await;
    let pool = gateway(&format!(
        r#"
[[endpoints]]
key = "{engine}v1"

[scrape]
interval = "20ms"
timeout = "2s"
"#,
        engine = engine.uri(),
    ))
    .await;
    let endpoint = pool.endpoints()[0].clone();
    let mut report = None;
    for _ in 0..500 {
        report = endpoint.latest_report();
        if report.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        report.is_some(),
        "no load report after {} scrapes",
        engine.stats.scrapes.load(SeqCst)
    );
    // Scraped at the root of the host (`/metrics`), not under the base path `/v1`.
    assert!(engine.stats.scrapes.load(SeqCst) > 0);
}
