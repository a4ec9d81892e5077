//! The policy in the request path: `PrefixKeysLayer` in front of `Balance`, over simulated
//! model servers on loopback and over in-process engines whose first frame the test releases.

use std::{collections::HashSet, convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use tokio::sync::mpsc;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    balance::BalanceLayer,
    hints::{Affinity, Exclude},
    pick::Filter,
    prefix::{ChatMessages, PrefixIndex, PrefixKeysLayer, PrefixPolicy, PromptBlocks},
    BoxError, Endpoint, EndpointConfig, Health, Pool,
};

use crate::support::{http_pool, read_to_end, served, total_in_flight};

/// 64-byte blocks of the messages array, at 16 tokens a block.
fn policy() -> PrefixPolicy {
    PrefixPolicy::new(Arc::new(PrefixIndex::new(10_000)), 16)
        .and_then(|p| p.prefill_rate(20_000.0))
        .unwrap()
}

/// The messages of conversation `id` after `turns` exchanges: a system prompt of its own,
/// then user and assistant turns.
fn messages(id: usize, turns: usize) -> String {
    let mut m = format!(
        r#"{{"role":"system","content":"Conversation {id}: you review Rust code for a team that builds load balancers, and answer in short paragraphs."}}"#
    );
    for t in 0..turns {
        m.push_str(&format!(
            r#",{{"role":"user","content":"Question {t} of conversation {id}: what does this layer do with a request whose body is still streaming?"}}"#
        ));
        m.push_str(&format!(
            r#",{{"role":"assistant","content":"Answer {t}: it reads what it needs without consuming the body, and passes the rest on."}}"#
        ));
    }
    m.push_str(r#",{"role":"user","content":"And next?"}"#);
    m
}

fn chat(messages: &str) -> Request<Full<Bytes>> {
    let body = format!(r#"{{"model":"sim","stream":true,"max_tokens":4,"messages":[{messages}]}}"#);
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

#[tokio::test]
async fn a_follow_up_turn_lands_where_its_prefix_was_placed() {
    let (pool, _servers) = http_pool(4, Duration::from_millis(2), Duration::from_millis(1)).await;
    let stack = ServiceBuilder::new()
        .layer(PrefixKeysLayer::new(ChatMessages::new(64).unwrap()))
        .layer(BalanceLayer::builder().prefix(policy()).build().unwrap())
        .service(pool.clone());

    // First turns of twelve conversations, one after the other.
    let mut placed = Vec::new();
    for id in 0..12 {
        let answer = stack.clone().oneshot(chat(&messages(id, 0))).await.unwrap();
        placed.push(served(&answer).key().clone());
        read_to_end(answer.into_body()).await.unwrap();
    }
    // New prefixes go by rendezvous order, not all to one engine.
    let homes: HashSet<_> = placed.iter().collect();
    assert!(homes.len() > 1, "every conversation went to {:?}", placed);

    // Each later turn carries the earlier ones: it goes where they are cached.
    for turns in 1..3 {
        for (id, home) in placed.iter().enumerate() {
            let answer = stack
                .clone()
                .oneshot(chat(&messages(id, turns)))
                .await
                .unwrap();
            assert_eq!(
                served(&answer).key(),
                home,
                "conversation {id}, turn {turns}"
            );
            read_to_end(answer.into_body()).await.unwrap();
        }
    }
    assert_eq!(total_in_flight(&pool), 0);
}

#[tokio::test]
async fn filters_and_affinity_apply_to_prefix_picks() {
    let (pool, _servers) = http_pool(3, Duration::from_millis(1), Duration::from_millis(1)).await;
    let stack = ServiceBuilder::new()
        .layer(PrefixKeysLayer::new(ChatMessages::new(64).unwrap()))
        .layer(BalanceLayer::builder().prefix(policy()).build().unwrap())
        .service(pool.clone());
    let answer = stack.clone().oneshot(chat(&messages(7, 0))).await.unwrap();
    let home = served(&answer);
    read_to_end(answer.into_body()).await.unwrap();

    // A retry that excludes the holder goes elsewhere.
    let mut retry = chat(&messages(7, 1));
    let mut exclude = Exclude::new();
    exclude.insert(&home);
    retry.extensions_mut().insert(exclude);
    let answer = stack.clone().oneshot(retry).await.unwrap();
    assert_ne!(served(&answer).key(), home.key());
    read_to_end(answer.into_body()).await.unwrap();

    // An ejected holder takes no new request either.
    home.set_health(Health::Ejected {
        until: tokio::time::Instant::now() + Duration::from_secs(60),
    });
    for turns in 1..4 {
        let answer = stack
            .clone()
            .oneshot(chat(&messages(7, turns)))
            .await
            .unwrap();
        assert_ne!(served(&answer).key(), home.key());
        read_to_end(answer.into_body()).await.unwrap();
    }
    assert_eq!(total_in_flight(&pool), 0);
}

#[tokio::test]
async fn an_affinity_hint_takes_precedence() {
    let (pool, _servers) = http_pool(4, Duration::from_millis(1), Duration::from_millis(1)).await;
    let stack = ServiceBuilder::new()
        .layer(PrefixKeysLayer::new(ChatMessages::new(64).unwrap()))
        .layer(BalanceLayer::builder().prefix(policy()).build().unwrap())
        .service(pool.clone());
    // Conversations whose prefix homes differ all follow one affinity key.
    let mut keyed = HashSet::new();
    let mut homes = HashSet::new();
    for id in 0..12 {
        let answer = stack.clone().oneshot(chat(&messages(id, 0))).await.unwrap();
        homes.insert(served(&answer).key().clone());
        read_to_end(answer.into_body()).await.unwrap();
        let mut request = chat(&messages(id, 1));
        request.extensions_mut().insert(Affinity::new(b"tenant-a"));
        let answer = stack.clone().oneshot(request).await.unwrap();
        keyed.insert(served(&answer).key().clone());
        read_to_end(answer.into_body()).await.unwrap();
    }
    assert!(homes.len() > 1);
    assert_eq!(keyed.len(), 1, "{keyed:?}");
}

type Frame = Result<http_body::Frame<Bytes>, Infallible>;
type Frames = mpsc::UnboundedSender<Frame>;
type Streamed = Response<UnsyncBoxBody<Bytes, Infallible>>;

/// One in-process engine whose responses send a frame only when the test says so.
fn held_engine(
    senders: Arc<parking_lot::Mutex<Vec<Frames>>>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Streamed,
    Error = Infallible,
    Future = std::future::Ready<Result<Streamed, Infallible>>,
> + Clone {
    tower::service_fn(move |_: Request<Full<Bytes>>| {
        let (tx, rx) = mpsc::unbounded_channel::<Frame>();
        senders.lock().push(tx);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|frame| (frame, rx))
        });
        std::future::ready(Ok(Response::new(StreamBody::new(frames).boxed_unsync())))
    })
}

/// What the policy expects a one-block prompt's first token to take on `endpoint`: the queue
/// it sees there plus the prefill.
fn expected(policy: &PrefixPolicy, endpoint: &Arc<Endpoint>) -> f64 {
    let endpoints = [Arc::clone(endpoint)];
    policy
        .pick(&endpoints, &Filter::new(), &[42], 16, &mut rand::rng())
        .unwrap()
        .expected
}

#[tokio::test]
async fn a_prefill_counts_until_the_first_frame_or_the_end() -> Result<(), BoxError> {
    let senders = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let pool = Pool::new();
    pool.insert(
        EndpointConfig::new("gpu-0"),
        held_engine(Arc::clone(&senders)),
    )?;
    let endpoint = pool.endpoints()[0].clone();
    let policy = policy();
    let mut balance = ServiceBuilder::new()
        .layer(BalanceLayer::builder().prefix(policy.clone()).build()?)
        .service(pool.clone());
    let idle = expected(&policy, &endpoint);
    let prompt = |tokens: u64| {
        let mut r = Request::new(Full::new(Bytes::new()));
        r.extensions_mut()
            .insert(PromptBlocks::new(&[1, 2, 3, 4, 5], tokens));
        r
    };

    // A 20,000-token prompt waits for its first frame: a second of prefill queued there.
    let answer = balance.ready().await?.call(prompt(20_000)).await?;
    let queued = expected(&policy, &endpoint);
    assert!(queued >= idle + 0.99, "idle {idle}, queued {queued}");
    senders.lock()[0].send(Ok(http_body::Frame::data(Bytes::from("data: a\n\n"))))?;
    let mut body = answer.into_body();
    body.frame().await.unwrap()?;
    assert!(expected(&policy, &endpoint) < queued - 0.99);
    drop(body);

    // Cancelled before its first frame: given back all the same.
    let answer = balance.ready().await?.call(prompt(20_000)).await?;
    assert!(expected(&policy, &endpoint) >= idle + 0.99);
    drop(answer);
    assert!(expected(&policy, &endpoint) < idle + 0.5);

    // An engine that ends the stream without a data frame (an error, a filter): given back.
    let answer = balance.ready().await?.call(prompt(20_000)).await?;
    drop(senders.lock().pop());
    read_to_end(answer.into_body()).await?;
    assert!(expected(&policy, &endpoint) < idle + 0.5);
    assert_eq!(endpoint.in_flight(), 0);
    Ok(())
}
