//! Settings from files: TOML and JSON into endpoint configs, the health policy and each
//! layer's settings, mapped onto the builders; bad settings refused at load time.

use std::time::Duration;

use http::HeaderName;
use tower_ai_balance::{
    affinity::Header,
    config::{Settings, StrategySetting},
    failover::{FailoverLayer, Hedge, RetryBudget},
    pick::Strategy,
    BalanceLayer, EndpointConfig, HealthPolicy, Pool, StreamAffinityLayer,
};

/// A layer's Debug text without the retry budget's creation time, which differs between two
/// budgets made a moment apart.
fn shape(layer: impl std::fmt::Debug) -> String {
    let text = format!("{layer:?}");
    match text.find("epoch: Instant {") {
        Some(start) => {
            let end = start + text[start..].find('}').unwrap() + 1;
            format!("{}{}", &text[..start], &text[end..])
        }
        None => text,
    }
}

const GATEWAY: &str = r#"
[[endpoints]]
key = "http://10.0.0.7:8000"
weight = 2
max_concurrency = 64
models = ["llama-3-70b", "llama-3-8b"]
max_context = 131072
hardware = "h100"
labels = { base = "http://10.0.0.7:8000" }

[[endpoints]]
key = "https://api.example.com"
tier = 1
provider = "example"
region = "eu"
price = { input = 0.5, output = 1.5 }

[health]
consecutive_failures = 3
base_ejection = "10s"
max_ejection = "2m"
failure_rate = 0.4
slow_start = false

[balance]
strategy = { cost_aware = { max_load = 0.8 } }
queue = { max_waiting = 512, timeout = "5s" }
timeout = "30s"
idle_timeout = 60

[failover]
attempts = 2
first_chunk = "30s"
budget = { ratio = 0.2, min_per_sec = 5 }
hedge = { percentile = { p = 0.95, floor = "50ms" } }

[affinity]
header = "x-conversation"
bound = 1.5
remember = { capacity = 10000, idle = "10m" }

[probes]
interval = "2s"

[scrape]
interval = "250ms"
jitter = 0.2
"#;

#[test]
fn a_whole_gateway_from_toml() {
    let s: Settings = toml::from_str(GATEWAY).unwrap();

    assert_eq!(s.endpoints.len(), 2);
    let expected = EndpointConfig::new("http://10.0.0.7:8000")
        .weight(2.0)
        .max_concurrency(64)
        .model("llama-3-70b")
        .model("llama-3-8b")
        .max_context(131_072)
        .hardware("h100")
        .label("base", "http://10.0.0.7:8000");
    assert_eq!(s.endpoints[0], expected);
    let expected = EndpointConfig::new("https://api.example.com")
        .tier(1)
        .provider("example")
        .region("eu")
        .price(0.5, 1.5);
    assert_eq!(s.endpoints[1], expected);
    // The configs are the pool's.
    let pool = Pool::new();
    pool.extend(s.endpoints.iter().cloned().map(|c| (c, ())))
        .unwrap();
    assert_eq!(pool.get("https://api.example.com").unwrap().tier(), 1);

    let mut policy = HealthPolicy::default();
    policy.consecutive_failures = 3;
    policy.base_ejection = Duration::from_secs(10);
    policy.max_ejection = Duration::from_secs(120);
    policy.failure_rate = 0.4;
    policy.slow_start = None;
    assert_eq!(format!("{:?}", s.health), format!("{policy:?}"));

    assert_eq!(
        s.balance.strategy,
        StrategySetting::CostAware { max_load: 0.8 }
    );
    let balance = BalanceLayer::builder()
        .strategy(Strategy::CostAware { max_load: 0.8 })
        .queue(512, Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    assert_eq!(
        format!("{:?}", s.balance.layer().unwrap()),
        format!("{balance:?}")
    );

    let failover = FailoverLayer::builder()
        .attempts(2)
        .first_chunk(Duration::from_secs(30))
        .budget(RetryBudget::new(0.2, 5).unwrap())
        .hedge(Hedge::Percentile {
            p: 0.95,
            floor: Duration::from_millis(50),
        })
        .build()
        .unwrap();
    assert_eq!(shape(s.failover.layer().unwrap()), shape(failover));

    let affinity = StreamAffinityLayer::builder(Header(HeaderName::from_static("x-conversation")))
        .bound(1.5)
        .remember(10_000, Duration::from_secs(600))
        .build()
        .unwrap();
    assert_eq!(
        format!("{:?}", s.affinity.unwrap().layer().unwrap()),
        format!("{affinity:?}")
    );
    let probes = s.probes.unwrap().config().unwrap();
    assert_eq!(
        (probes.interval, probes.timeout),
        (Duration::from_secs(2), Duration::from_secs(1))
    );
    let scrape = s.scrape.unwrap().config().unwrap();
    assert_eq!(
        (scrape.interval, scrape.jitter),
        (Duration::from_millis(250), 0.2)
    );
}

#[test]
fn everything_is_optional_and_json_works_too() {
    let s: Settings = serde_json::from_str("{}").unwrap();
    assert!(s.endpoints.is_empty() && s.affinity.is_none());
    assert_eq!(
        format!("{:?}", s.health),
        format!("{:?}", HealthPolicy::default())
    );
    assert_eq!(
        format!("{:?}", s.balance.layer().unwrap()),
        format!("{:?}", BalanceLayer::new())
    );
    assert_eq!(
        shape(s.failover.layer().unwrap()),
        shape(FailoverLayer::new())
    );
    let s: Settings = serde_json::from_str(
        r#"{"endpoints": [{"key": "a"}], "balance": {"strategy": "p2c"}, "failover": {"hedge": {"after": 0.25}}}"#,
    )
    .unwrap();
    assert_eq!(s.endpoints[0], EndpointConfig::new("a"));
    assert_eq!(s.balance.strategy, StrategySetting::PowerOfTwoChoices);
    let hedged = FailoverLayer::builder()
        .hedge(Hedge::After(Duration::from_millis(250)))
        .build()
        .unwrap();
    assert_eq!(shape(s.failover.layer().unwrap()), shape(hedged));
}

#[test]
fn bad_settings_are_refused_when_read() {
    let refused = |text: &str| {
        let err = toml::from_str::<Settings>(text).map(|_| ()).unwrap_err();
        err.to_string()
    };
    assert!(refused("[[endpoints]]\nkey = \"a\"\nweight = -1").contains("weight"));
    assert!(refused("[[endpoints]]\nkey = \"a\"\nmax_concurrency = 0").contains("concurrency"));
    assert!(refused("[[endpoints]]\nweight = 1").contains("key"));
    assert!(refused("[[endpoints]]\nkey = \"a\"\nwieght = 2").contains("wieght"));
    assert!(refused("[health]\nfailure_rate = 2.0").contains("failure_rate"));
    assert!(refused("[health]\nbase_ejection = \"ten seconds\"").contains("unit"));
    assert!(refused("[health]\nwindow = \"-1s\"").contains("number and a unit"));
    assert!(refused("[balance]\nstrategy = \"fastest\"").contains("fastest"));
    assert!(refused("[balance]\ntimeout = true").contains("duration"));
    assert!(refused("[typo]\nx = 1").contains("typo"));

    // Settings the builders refuse are refused when the layer is built.
    let s: Settings = toml::from_str("[failover]\nattempts = 0").unwrap();
    assert!(s.failover.layer().is_err());
    let s: Settings =
        toml::from_str("[failover]\nbudget = { ratio = -1.0, min_per_sec = 0 }").unwrap();
    assert!(s.failover.layer().is_err());
    let s: Settings =
        toml::from_str("[failover.hedge.percentile]\np = 1.5\nfloor = \"1s\"").unwrap();
    assert!(s.failover.layer().is_err());
    let s: Settings = toml::from_str("[affinity]\nheader = \"not a header\"").unwrap();
    assert!(s.affinity.unwrap().layer().is_err());
    let s: Settings = toml::from_str("[affinity]\nbound = 0.5").unwrap();
    assert!(s.affinity.unwrap().layer().is_err());
    let s: Settings = toml::from_str("[scrape]\njitter = 3.0").unwrap();
    assert!(s.scrape.unwrap().config().is_err());
}

#[test]
fn an_endpoint_key_listed_twice_is_refused() {
    let text = "[[endpoints]]\nkey = \"http://10.0.0.7:8000\"\nweight = 1\n\n\
                [[endpoints]]\nkey = \"http://10.0.0.8:8000\"\n\n\
                [[endpoints]]\nkey = \"http://10.0.0.7:8000\"\nweight = 5";
    let err = toml::from_str::<Settings>(text).unwrap_err().to_string();
    assert!(err.contains("endpoints"), "{err}");
    assert!(err.contains("http://10.0.0.7:8000"), "{err}");
    let json = r#"{"endpoints": [{"key": "a"}, {"key": "a"}]}"#;
    assert!(serde_json::from_str::<Settings>(json).is_err());
    // Distinct keys, and an empty list, still load.
    let s: Settings = toml::from_str("endpoints = []").unwrap();
    assert!(s.endpoints.is_empty());
}

#[test]
fn zero_probe_and_scrape_settings_are_refused_naming_the_field() {
    let probe = |text: &str| {
        let s: Settings = toml::from_str(text).unwrap();
        s.probes
            .unwrap()
            .config()
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    for (text, field) in [
        ("[probes]\ninterval = \"0s\"", "interval"),
        ("[probes]\ninterval = 0", "interval"),
        ("[probes]\ntimeout = \"0ms\"", "timeout"),
        ("[probes]\nhealthy_threshold = 0", "healthy_threshold"),
        ("[probes]\nunhealthy_threshold = 0", "unhealthy_threshold"),
    ] {
        let err = probe(text);
        assert!(err.contains(field), "{text}: {err}");
    }
    let scrape = |text: &str| {
        let s: Settings = toml::from_str(text).unwrap();
        s.scrape
            .unwrap()
            .config()
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    for (text, field, not) in [
        ("[scrape]\ninterval = \"0s\"", "interval", "concurrency"),
        ("[scrape]\nconcurrency = 0", "concurrency", "interval"),
        ("[scrape]\ntimeout = 0", "timeout", "interval"),
        ("[scrape]\nmax_body = 0", "max_body", "interval"),
    ] {
        let err = scrape(text);
        assert!(err.contains(field) && !err.contains(not), "{text}: {err}");
    }
    // NaN and negative values never get as far as a config.
    for text in [
        "[probes]\ninterval = nan",
        "[probes]\ntimeout = -1",
        "[scrape]\ninterval = -0.5",
        "[scrape]\ntimeout = inf",
    ] {
        assert!(toml::from_str::<Settings>(text).is_err(), "{text}");
    }
    let s: Settings = toml::from_str("[probes]\n[scrape]").unwrap();
    assert!(s.probes.unwrap().config().is_ok());
    assert!(s.scrape.unwrap().config().is_ok());
}
