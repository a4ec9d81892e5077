//! Scrape rounds on tokio's paused clock, with a fetch service that answers at once, or never:
//! a scrape that hangs delays no other endpoint's report and ends at the timeout; an endpoint
//! removed from the pool is not scraped again; the task ends with the pool.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Empty, Full};
use tower_ai_balance::{
    engines::{ScrapeConfig, Scraper, ToEndpoints},
    Pool,
};

const METRICS: &str = "vllm:num_requests_waiting 3\nvllm:num_requests_running 2\n";

#[tokio::test(start_paused = true)]
async fn a_hanging_scrape_delays_no_other_and_a_removed_endpoint_is_not_scraped() {
    // Each fetch's host, in order; 10.0.0.1 never answers.
    let asked = Arc::new(Mutex::new(Vec::<String>::new()));
    let fetch = {
        let asked = Arc::clone(&asked);
        tower::service_fn(move |req: Request<Empty<Bytes>>| {
            let host = req.uri().host().unwrap_or_default().to_owned();
            asked.lock().unwrap().push(host.clone());
            async move {
                if host == "10.0.0.1" {
                    std::future::pending::<()>().await;
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                    METRICS.as_bytes(),
                ))))
            }
        })
    };
    let mut config = ScrapeConfig::default();
    config.interval = Duration::from_secs(1);
    config.timeout = Duration::from_secs(5);
    config.jitter = 0.0;
    let pool: Pool<()> = Pool::new();
    for key in ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"] {
        pool.insert(key, ()).unwrap();
    }
    let task = Scraper::new(fetch).config(config).spawn(&pool, ToEndpoints);

    // Well before the hanging scrape's timeout, the others have reported.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for key in ["10.0.0.2:8000", "10.0.0.3:8000"] {
        let report = pool.get(key).unwrap().latest_report();
        assert_eq!(report.and_then(|r| r.waiting), Some(3), "{key}");
    }
    assert!(pool.get("10.0.0.1:8000").unwrap().latest_report().is_none());

    // Rounds go on past the timeout; then 10.0.0.3 leaves the pool and is asked no more.
    tokio::time::sleep(Duration::from_secs(13)).await;
    let count = |host: &str| asked.lock().unwrap().iter().filter(|h| *h == host).count();
    let (first, third) = (count("10.0.0.1"), count("10.0.0.3"));
    assert!(first >= 2, "the hanging scrape was retried: {first}");
    assert_eq!(first, third, "every round asks every endpoint");
    pool.remove("10.0.0.3:8000");
    // Let the round in progress (started before the removal) finish.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = count("10.0.0.3");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        count("10.0.0.3"),
        after,
        "a removed endpoint is not scraped"
    );
    assert!(count("10.0.0.2") > after, "the others still are");

    // Without the pool the task ends, dropping its hanging scrape.
    drop(pool);
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the scraper ends with its pool")
        .unwrap();
}
