//! DNS discovery against a real DNS server (hickory-server) on a loopback port, whose answers
//! change while the pool follows them: endpoints added, removed (drained), kept through
//! every re-resolution with their live state, and kept when the server stops answering.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr},
    pin::Pin,
    str::FromStr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use hickory_resolver::{
    config::{NameServerConfig, ResolverConfig},
    TokioResolver,
};
use hickory_server::{
    net::runtime::{Time, TokioRuntimeProvider},
    proto::rr::{rdata::SOA, LowerName, Name, RData, Record, RecordSet, RecordType, RrKey},
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{AxfrPolicy, Catalog, ZoneType},
    Server,
};
use tokio::{net::UdpSocket, time::Instant};
use tower_ai_balance::{
    discovery::{Dns, DnsConfig},
    Health, Pool,
};

const ZONE: &str = "test.local.";
const NAME: &str = "gpu.test.local.";

/// The zone's records, changed by the test, and a count of the queries answered.
struct Zone {
    handler: Arc<InMemoryZoneHandler<TokioRuntimeProvider>>,
    serial: AtomicUsize,
}

impl Zone {
    /// Replaces the name's A records with `last_octets` (127.0.0.N), with a TTL of 1 s, in
    /// one step, so that no query sees the name half changed.
    async fn set(&self, last_octets: &[u8]) {
        let serial = self.serial.fetch_add(1, SeqCst) as u32 + 2;
        let name = Name::from_str(NAME).unwrap();
        let mut set = RecordSet::new(name.clone(), RecordType::A, serial);
        for &n in last_octets {
            let ip = Ipv4Addr::new(127, 0, 0, n);
            assert!(set.insert(
                Record::from_rdata(name.clone(), 1, RData::A(ip.into())),
                serial
            ));
        }
        let key = RrKey::new(LowerName::new(&name), RecordType::A);
        let mut records = self.handler.records_mut().await;
        if last_octets.is_empty() {
            records.remove(&key);
        } else {
            records.insert(key, Arc::new(set));
        }
    }
}

struct Counting {
    catalog: Catalog,
    queries: Arc<AtomicUsize>,
    /// Leaves A queries unanswered (while AAAA ones are answered), as a lost packet does.
    drop_a: Arc<AtomicBool>,
}

// The trait is declared with `async_trait`; this is the signature it expands to.
impl RequestHandler for Counting {
    fn handle_request<'a, 'b, 'f, R, T>(
        &'a self,
        request: &'b Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'f>>
    where
        R: ResponseHandler + 'f,
        T: Time + 'f,
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.queries.fetch_add(1, SeqCst);
        let is_a = request
            .request_info()
            .is_ok_and(|info| info.query.query_type() == RecordType::A);
        if is_a && self.drop_a.load(SeqCst) {
            return Box::pin(std::future::pending());
        }
        self.catalog
            .handle_request::<R, T>(request, response_handle)
    }
}

struct TestDns {
    server: Server<Counting>,
    zone: Arc<Zone>,
    queries: Arc<AtomicUsize>,
    drop_a: Arc<AtomicBool>,
    port: u16,
}

async fn dns_server() -> TestDns {
    let origin = Name::from_str(ZONE).unwrap();
    let handler = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    );
    let soa = SOA::new(
        Name::from_str("ns.test.local.").unwrap(),
        Name::from_str("admin.test.local.").unwrap(),
        1,
        3600,
        600,
        86400,
        1,
    );
    assert!(
        handler
            .upsert(Record::from_rdata(origin.clone(), 1, RData::SOA(soa)), 1)
            .await
    );
    let handler = Arc::new(handler);
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![handler.clone()]);
    let queries = Arc::new(AtomicUsize::new(0));
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    let drop_a = Arc::new(AtomicBool::new(false));
    let mut server = Server::new(Counting {
        catalog,
        queries: Arc::clone(&queries),
        drop_a: Arc::clone(&drop_a),
    });
    server.register_socket(socket);
    let zone = Arc::new(Zone {
        handler,
        serial: AtomicUsize::new(0),
    });
    TestDns {
        server,
        zone,
        queries,
        drop_a,
        port,
    }
}

fn resolver(port: u16) -> TokioResolver {
    let mut ns = NameServerConfig::udp(IpAddr::V4(Ipv4Addr::LOCALHOST));
    ns.connections[0].port = port;
    let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    builder.options_mut().cache_size = 0;
    builder.options_mut().timeout = Duration::from_millis(200);
    builder.options_mut().attempts = 1;
    builder.build().unwrap()
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
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
async fn the_pool_follows_the_names_addresses() {
    let TestDns {
        server,
        zone,
        queries,
        drop_a,
        port,
    } = dns_server().await;
    zone.set(&[1, 2]).await;

    let pool: Pool<String> = Pool::new();
    let mut config = DnsConfig::default();
    config.min_ttl = Duration::from_millis(20);
    config.max_ttl = Duration::from_millis(100); // the records say 1 s: bounded above
    let dns = Dns::new(resolver(port), NAME, 8000, |addr| {
        format!("client for {addr}")
    })
    .metadata(|c| c.tier(1).model("llama-3-8b").max_concurrency(4).weight(2.0))
    .config(config);
    let task = pool.spawn_discovery(dns);

    until("both addresses", || {
        keys(&pool) == ["127.0.0.1:8000", "127.0.0.2:8000"]
    })
    .await;
    let one = pool.get("127.0.0.1:8000").unwrap();
    let two = pool.get("127.0.0.2:8000").unwrap();
    assert_eq!(
        (one.tier(), one.max_concurrency(), one.weight()),
        (1, Some(4), 2.0)
    );
    assert!(one.capabilities().serves_model("llama-3-8b"));
    assert!(!one.capabilities().serves_model("other"));
    let services: Vec<String> = keys(&pool).iter().filter_map(|k| pool.service(k)).collect();
    assert!(services.contains(&"client for 127.0.0.1:8000".to_owned()));

    // The first endpoint fails and is ejected; the name's answers change: one address
    // goes, another comes.
    let until_t = Instant::now() + Duration::from_secs(600);
    one.set_health(Health::Ejected { until: until_t });
    zone.set(&[1, 3]).await;
    until("the new set", || {
        keys(&pool) == ["127.0.0.1:8000", "127.0.0.3:8000"]
    })
    .await;
    assert!(two.is_removed(), "the gone address drains");
    tokio::time::timeout(Duration::from_secs(10), two.drained())
        .await
        .expect("an idle removed endpoint is drained");

    // Every refresh answers with 127.0.0.1 again: it stays the same endpoint, still ejected.
    let seen = queries.load(SeqCst);
    until("three more resolutions", || {
        queries.load(SeqCst) >= seen + 3
    })
    .await;
    let still = pool.get("127.0.0.1:8000").unwrap();
    assert!(Arc::ptr_eq(&one, &still), "re-announced, not replaced");
    assert!(
        matches!(still.health(), Health::Ejected { until } if until >= until_t),
        "{:?}",
        still.health()
    );

    // A queries go unanswered while AAAA ones say "none": not mistaken for an empty
    // answer; the last answer stands.
    drop_a.store(true, SeqCst);
    let seen = queries.load(SeqCst);
    until("two more rounds of queries", || {
        queries.load(SeqCst) >= seen + 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // past the resolver's timeout
    assert_eq!(keys(&pool), ["127.0.0.1:8000", "127.0.0.3:8000"]);

    // The server stops answering: the last answer stands.
    drop(server);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(keys(&pool), ["127.0.0.1:8000", "127.0.0.3:8000"]);

    // A name without addresses empties the pool.
    let TestDns {
        server,
        zone,
        port: port2,
        ..
    } = dns_server().await;
    zone.set(&[]).await;
    let empty: Pool<String> = Pool::new();
    empty.insert("stale", String::new()).unwrap();
    let dns = Dns::new(resolver(port2), NAME, 8000, |a| a.to_string()).config(config);
    let task2 = empty.spawn_discovery(dns);
    zone.set(&[9]).await;
    until("the one address", || {
        keys(&empty) == ["127.0.0.9:8000", "stale"]
    })
    .await;
    zone.set(&[]).await;
    until("no address", || keys(&empty) == ["stale"]).await;

    // The discovery tasks end with their pools.
    drop((pool, one, still));
    drop(empty);
    for task in [task, task2] {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("discovery ends with the pool")
            .unwrap()
            .unwrap();
    }
    drop(server);
}

/// Zero TTL bounds: the name is still resolved no more than every 100 ms, not in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_ttl_bounds_never_make_a_tight_loop() {
    let TestDns {
        server: _server,
        zone,
        queries,
        port,
        ..
    } = dns_server().await;
    zone.set(&[1]).await;
    let pool: Pool<String> = Pool::new();
    let mut config = DnsConfig::default();
    config.min_ttl = Duration::ZERO;
    config.max_ttl = Duration::ZERO;
    let dns = Dns::new(resolver(port), NAME, 8000, |addr| addr.to_string()).config(config);
    let task = pool.spawn_discovery(dns);
    until("the address", || keys(&pool) == ["127.0.0.1:8000"]).await;
    let before = queries.load(SeqCst);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let asked = queries.load(SeqCst) - before;
    // Two queries (A and AAAA) per resolution, at most one resolution per 100 ms.
    assert!(asked <= 24, "{asked} queries in one second");
    assert!(asked >= 2, "resolved again: {asked}");
    task.abort();
}
