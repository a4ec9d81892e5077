//! A soak: the gateway under steady load with faults, on loopback only, for a set time, with
//! its memory (RSS) reported at the start, every minute and at the end.
//!
//! ```sh
//! cargo run --release --example soak -- --duration 600
//! ```
//!
//! Four simulated model servers sit behind the gateway of `examples/gateway.rs`. 32 clients
//! send short and streamed completions without pause; one in ten drops its stream midway.
//! Every 10 s one server misbehaves for 3 s (500s, 429s with Retry-After, or streams that break
//! or stall). At the end the soak checks that every request ended in a response or an error and
//! that no endpoint holds load.

#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/model_server.rs"]
mod model_server;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use model_server::{Mode, ModelServer, Spec, Upstream};
use rand::{Rng, SeedableRng};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), tower_ai_balance::BoxError> {
    let mut duration = Duration::from_secs(60);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--duration" => {
                duration = Duration::from_secs(args.next().ok_or("--duration SECS")?.parse()?)
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let mut servers = Vec::new();
    let mut gw = gateway::Gateway::default();
    for i in 0..4 {
        let s = ModelServer::spawn(
            Spec::new(
                format!("m{i}"),
                Duration::from_millis(5),
                Duration::from_millis(2),
            )
            .batch(16),
        )
        .await;
        gw.upstreams.push(s.uri().to_string().parse()?);
        servers.push(s);
    }
    let servers = Arc::new(servers);
    let (app, pool) = gw.build().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default()); // ok, error status, transport error, dropped
    let client = Upstream::client();
    let mut workers = Vec::new();
    for w in 0..32u64 {
        let (client, stop, counts) = (client.clone(), Arc::clone(&stop), Arc::clone(&counts));
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w);
            while !stop.load(SeqCst) {
                let stream = rng.random_bool(0.5);
                let body = format!(r#"{{"model":"sim","stream":{stream},"max_tokens":{},"messages":[{{"role":"user","content":"hello"}}]}}"#, rng.random_range(1..40));
                let request = http::Request::post(format!("http://{addr}/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .expect("request");
                let outcome = match client.request(request).await {
                    Ok(r) if r.status().is_success() => {
                        if stream && rng.random_bool(0.1) {
                            let mut b = r.into_body();
                            let _ = b.frame().await;
                            3
                        } else if r.into_body().collect().await.is_ok() {
                            0
                        } else {
                            2
                        }
                    }
                    Ok(r) => {
                        let _ = r.into_body().collect().await;
                        1
                    }
                    Err(_) => 2,
                };
                counts[outcome].fetch_add(1, SeqCst);
            }
        }));
    }
    let faults = {
        let (servers, stop) = (Arc::clone(&servers), Arc::clone(&stop));
        tokio::spawn(async move {
            let modes = [
                Mode::Fail,
                Mode::RateLimit(1),
                Mode::ResetMidStream,
                Mode::StallAfterFirst,
            ];
            let mut k = 0;
            while !stop.load(SeqCst) {
                tokio::time::sleep(Duration::from_secs(7)).await;
                let s = &servers[k % servers.len()];
                s.set_mode(modes[k % modes.len()]);
                tokio::time::sleep(Duration::from_secs(3)).await;
                s.set_mode(Mode::Normal);
                k += 1;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(5.min(duration.as_secs()))).await;
    let start_rss = rss_kib();
    let started = Instant::now();
    println!("soak for {duration:?} on http://{addr}: RSS after warm-up {start_rss} KiB");
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(60).min(duration.saturating_sub(started.elapsed())))
            .await;
        let c: Vec<u64> = counts.iter().map(|c| c.load(SeqCst)).collect();
        println!(
            "  {:>4} s: RSS {} KiB; ok {}, 4xx/5xx {}, errors {}, dropped {}",
            started.elapsed().as_secs(),
            rss_kib(),
            c[0],
            c[1],
            c[2],
            c[3]
        );
    }
    stop.store(true, SeqCst);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(180), w).await;
    }
    faults.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let end_rss = rss_kib();
    let c: Vec<u64> = counts.iter().map(|c| c.load(SeqCst)).collect();
    let held: usize = pool.endpoints().iter().map(|e| e.in_flight()).sum();
    println!(
        "done: {} requests (ok {}, 4xx/5xx {}, errors {}, dropped mid-stream {}); in flight at the end {held}; RSS {start_rss} KiB -> {end_rss} KiB",
        c.iter().sum::<u64>(), c[0], c[1], c[2], c[3]
    );
    Ok(())
}
