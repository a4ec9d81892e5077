//! Kubernetes discovery, with kube's real client and watcher against a loopback HTTP server
//! that speaks the Kubernetes list/watch protocol for EndpointSlices: no cluster runs here, so
//! the server answers as the API server does, with JSON in the API's recorded shapes (a
//! paged list with its resourceVersion, then a chunked watch stream of ADDED/MODIFIED/DELETED
//! events, BOOKMARK events, a watch that ends and is resumed from the last bookmark, and an
//! ERROR event with `410 Gone` that makes the client list again).

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{body::Frame, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::broadcast, time::Instant};
use tower_ai_balance::{discovery::EndpointSlices, Health, Pool};

const PATH: &str = "/apis/discovery.k8s.io/v1/namespaces/inference/endpointslices";

/// What the API server holds and what it was asked.
struct ApiServer {
    slices: Mutex<BTreeMap<String, Value>>,
    resource_version: Mutex<String>,
    /// Lines to send down every open watch; `None` ends the watch.
    events: broadcast::Sender<Option<String>>,
    lists: AtomicUsize,
    watches: AtomicUsize,
    /// Each request's query string.
    queries: Mutex<Vec<String>>,
}

type Body = BoxBody<Bytes, Infallible>;

impl ApiServer {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let query = req.uri().query().unwrap_or_default().to_owned();
        self.queries.lock().unwrap().push(query.clone());
        if req.uri().path() != PATH {
            let mut r = Response::new(Full::from("not found").boxed());
            *r.status_mut() = http::StatusCode::NOT_FOUND;
            return Ok(r);
        }
        if query.split('&').any(|p| p == "watch=true") {
            let rx = self.events.subscribe();
            self.watches.fetch_add(1, SeqCst);
            let lines = stream::unfold(rx, |mut rx| async move {
                match rx.recv().await {
                    Ok(Some(line)) => Some((Ok(Frame::data(Bytes::from(line + "\n"))), rx)),
                    _ => None,
                }
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(lines)));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            return Ok(r);
        }
        self.lists.fetch_add(1, SeqCst);
        let items: Vec<Value> = self.slices.lock().unwrap().values().cloned().collect();
        let list = json!({
            "kind": "EndpointSliceList",
            "apiVersion": "discovery.k8s.io/v1",
            "metadata": { "resourceVersion": *self.resource_version.lock().unwrap() },
            "items": items,
        });
        let mut r = Response::new(Full::from(list.to_string()).boxed());
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        Ok(r)
    }

    fn send(&self, kind: &str, object: Value) {
        assert!(self.try_send(kind, object), "a watch is open");
    }

    /// Sends an event if a watch is open; whether one was.
    fn try_send(&self, kind: &str, object: Value) -> bool {
        let line = json!({ "type": kind, "object": object }).to_string();
        self.events.send(Some(line)).is_ok()
    }

    fn set(&self, slices: &[Value], resource_version: &str) {
        let mut map = self.slices.lock().unwrap();
        map.clear();
        for s in slices {
            map.insert(
                s["metadata"]["name"].as_str().unwrap().to_owned(),
                s.clone(),
            );
        }
        *self.resource_version.lock().unwrap() = resource_version.to_owned();
    }
}

async fn api_server() -> (Arc<ApiServer>, String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let api = Arc::new(ApiServer {
        slices: Mutex::new(BTreeMap::new()),
        resource_version: Mutex::new("1".into()),
        events: broadcast::channel(64).0,
        lists: AtomicUsize::new(0),
        watches: AtomicUsize::new(0),
        queries: Mutex::new(Vec::new()),
    });
    let server = Arc::clone(&api);
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let api = Arc::clone(&server);
            connections.spawn(async move {
                let svc = service_fn(move |req| Arc::clone(&api).handle(req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (api, url, task)
}

/// An endpoint of a slice: (last octet of 127.0.0.N, ready, terminating).
fn slice(name: &str, resource_version: &str, endpoints: &[(u8, bool, bool)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|&(n, ready, terminating)| {
            json!({
                "addresses": [format!("127.0.0.{n}")],
                "conditions": { "ready": ready, "serving": ready || terminating, "terminating": terminating },
                "nodeName": format!("node-{n}"),
                "zone": "zone-a",
                "targetRef": { "kind": "Pod", "namespace": "inference", "name": format!("vllm-{n}") },
            })
        })
        .collect();
    json!({
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": name,
            "namespace": "inference",
            "resourceVersion": resource_version,
            "generateName": "vllm-",
            "labels": {
                "kubernetes.io/service-name": "vllm",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "tower-ai-balance/tier": "1",
                "tower-ai-balance/weight": "2",
            },
            "annotations": {
                "tower-ai-balance/models": "meta-llama/Llama-3.1-8B-Instruct, llama-3-70b",
                "tower-ai-balance/max-concurrency": "8",
                "tower-ai-balance/max-context": "lots",
            },
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [
            { "name": "metrics", "port": 9090, "protocol": "TCP" },
            { "name": "http", "port": 8000, "protocol": "TCP" },
        ],
    })
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn keys(pool: &Pool<String>) -> Vec<String> {
    let mut keys: Vec<String> = pool
        .endpoints()
        .iter()
        .map(|e| e.key().to_string())
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_follows_a_services_ready_endpoints() {
    let (api, url, server) = api_server().await;
    api.set(
        &[slice(
            "vllm-abc",
            "10",
            &[(1, true, false), (2, true, false), (3, false, false)],
        )],
        "10",
    );

    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let pool: Pool<String> = Pool::new();
    let slices = EndpointSlices::new(client, "inference", "vllm", |addr| {
        format!("client for {addr}")
    })
    .port("http")
    .metadata(|c| c.label("source", "k8s"));
    let task = pool.spawn_discovery(slices);

    // The list: ready endpoints only, with their metadata.
    until("the listed endpoints", || {
        keys(&pool) == ["127.0.0.1:8000", "127.0.0.2:8000"]
    })
    .await;
    let one = pool.get("127.0.0.1:8000").unwrap();
    assert_eq!(
        (one.tier(), one.weight(), one.max_concurrency()),
        (1, 2.0, Some(8))
    );
    let caps = one.capabilities();
    assert!(
        caps.serves_model("meta-llama/Llama-3.1-8B-Instruct") && caps.serves_model("llama-3-70b")
    );
    assert!(!caps.serves_model("other"));
    assert_eq!(caps.max_context, None, "an unreadable value is skipped");
    assert_eq!(
        (
            one.label("zone"),
            one.label("node"),
            one.label("pod"),
            one.label("source")
        ),
        (Some("zone-a"), Some("node-1"), Some("vllm-1"), Some("k8s"))
    );
    let queries = api.queries.lock().unwrap().clone();
    assert!(
        queries[0].contains("labelSelector=kubernetes.io%2Fservice-name%3Dvllm"),
        "{queries:?}"
    );

    // Endpoint 1 fails and is ejected; then 2 starts terminating and 3 becomes ready.
    let ejected_until = Instant::now() + Duration::from_secs(600);
    one.set_health(Health::Ejected {
        until: ejected_until,
    });
    let ejected = one.health();
    let two = pool.get("127.0.0.2:8000").unwrap();
    until("the watch", || api.watches.load(SeqCst) == 1).await;
    assert!(api
        .queries
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .contains("resourceVersion=10"));
    api.send(
        "MODIFIED",
        slice(
            "vllm-abc",
            "11",
            &[(1, true, false), (2, false, true), (3, true, false)],
        ),
    );
    until("the terminating one drained, the ready one added", || {
        keys(&pool) == ["127.0.0.1:8000", "127.0.0.3:8000"]
    })
    .await;
    assert!(two.is_removed());
    tokio::time::timeout(Duration::from_secs(10), two.drained())
        .await
        .unwrap();
    // Endpoint 1 was in the changed slice too: the same endpoint, still ejected.
    assert!(Arc::ptr_eq(&one, &pool.get("127.0.0.1:8000").unwrap()));
    assert_eq!(one.health(), ejected);

    // A bookmark moves the watch's place; the watch ends (as the server's timeout ends it)
    // and resumes from the bookmark.
    api.send(
        "BOOKMARK",
        json!({
            "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": { "resourceVersion": "15" },
        }),
    );
    api.events.send(None).unwrap();
    until("the resumed watch", || api.watches.load(SeqCst) == 2).await;
    let last = api.queries.lock().unwrap().last().unwrap().clone();
    assert!(
        last.contains("watch=true") && last.contains("resourceVersion=15"),
        "{last}"
    );
    assert!(last.contains("allowWatchBookmarks=true"), "{last}");
    assert_eq!(api.lists.load(SeqCst), 1, "no new list for a resumed watch");

    // Meanwhile the world moved on; the place is too old: 410 Gone, and the client lists
    // again, replacing what it knew.
    api.set(
        &[slice(
            "vllm-abc",
            "20",
            &[(1, true, false), (4, true, false)],
        )],
        "20",
    );
    api.send(
        "ERROR",
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version: 15 (20)", "reason": "Expired", "code": 410,
        }),
    );
    until("the new list", || {
        keys(&pool) == ["127.0.0.1:8000", "127.0.0.4:8000"]
    })
    .await;
    assert_eq!(api.lists.load(SeqCst), 2);
    assert!(
        Arc::ptr_eq(&one, &pool.get("127.0.0.1:8000").unwrap()),
        "kept through the re-list"
    );
    assert_eq!(one.health(), ejected);

    // The slice is deleted: every endpoint drains.
    until("the watch after the list", || api.watches.load(SeqCst) == 3).await;
    api.send(
        "DELETED",
        slice("vllm-abc", "21", &[(1, true, false), (4, true, false)]),
    );
    until("no endpoints", || pool.is_empty()).await;
    assert!(one.is_removed());

    // The task ends with the pool, at the stream's next wake-up (or before it, if it noticed
    // the pool go first and closed its watch: then there is nothing left to wake).
    drop(pool);
    api.try_send(
        "BOOKMARK",
        json!({
            "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": { "resourceVersion": "22" },
        }),
    );
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("discovery ends with the pool")
        .unwrap()
        .unwrap();
    server.abort();
}
