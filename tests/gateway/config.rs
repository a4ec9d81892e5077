//! The gateway from a configuration file: endpoints whose key is their URL (with their wire
//! format, key variable and upstream model as labels), the health policy and layer settings.

use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use http::StatusCode;

use crate::{
    completion,
    gateway::Gateway,
    model_server::{ModelServer, Spec},
    send, serve,
    support::refusing_port,
};

#[tokio::test]
async fn a_config_file_names_upstreams_of_both_formats_and_the_settings() {
    let quick = |name: &str| Spec::new(name, Duration::from_millis(1), Duration::from_millis(1));
    let provider = ModelServer::spawn(quick("provider")).await;
    let down = refusing_port().await;
    // Keys stay out of the file: it names the variable that holds one.
    std::env::set_var("GATEWAY_TEST_CONFIG_ANTHROPIC_KEY", "sk-from-env");
    let toml = format!(
        r#"
[[endpoints]]
key = "http://{down}/v1"
models = ["sim"]

[[endpoints]]
key = "{provider}"
tier = 1
weight = 2
models = ["sim"]
labels = {{ format = "anthropic", key_env = "GATEWAY_TEST_CONFIG_ANTHROPIC_KEY", upstream_model = "claude-haiku" }}

[health]
consecutive_failures = 1
base_ejection = "30s"

[balance]
timeout = "2s"
idle_timeout = "90s"

[failover]
attempts = 3
"#,
        provider = provider.uri(),
    );
    let settings: tower_ai_balance::config::Settings = toml::from_str(&toml).unwrap();
    assert_eq!(settings.endpoints.len(), 2);
    assert_eq!(settings.balance.timeout, Some(Duration::from_secs(2)));
    let gw = Gateway {
        settings,
        ..Gateway::default()
    };
    let (addr, pool) = serve(gw).await;
    let (head, body) = send(completion(addr, 2, false)).await;
    assert_eq!(head.status, StatusCode::OK, "{body:?}");
    assert_eq!(provider.stats.received.load(SeqCst), 1);
    assert_eq!(
        provider.stats.last_headers.lock()["x-api-key"],
        "sk-from-env"
    );
    let sent: serde_json::Value = serde_json::from_slice(&provider.stats.last_body.lock()).unwrap();
    assert_eq!(sent["model"], "claude-haiku");
    // One failure ejects, as the file's health policy says.
    let down_key = format!("http://{down}/v1");
    let endpoint = (pool.endpoints().iter())
        .find(|e| e.key().as_str() == down_key)
        .cloned()
        .unwrap_or_else(|| panic!("no endpoint {down_key}"));
    assert!(
        matches!(endpoint.health(), tower_ai_balance::Health::Ejected { .. }),
        "{:?}",
        endpoint.health()
    );

    // A key variable that is not set, an unknown format, a missing key: errors, not a start.
    let unset = toml.replace(
        "GATEWAY_TEST_CONFIG_ANTHROPIC_KEY",
        "GATEWAY_TEST_CONFIG_UNSET",
    );
    for bad in [
        unset,
        toml.replace("\"anthropic\"", "\"cohere\""),
        toml.replace(", key_env = \"GATEWAY_TEST_CONFIG_ANTHROPIC_KEY\"", ""),
        "[[endpoints]]\nkey = \"not a url\"".to_owned(),
    ] {
        let gw = Gateway {
            settings: toml::from_str(&bad).unwrap(),
            ..Gateway::default()
        };
        assert!(gw.build().await.is_err(), "{bad}");
    }
}
