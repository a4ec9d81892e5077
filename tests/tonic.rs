//! The tonic example runs as a test: gRPC calls, unary and server-streaming, spread over the
//! servers, and every call a failing server answers with `UNAVAILABLE` retried on another.

#[path = "../examples/tonic.rs"]
#[allow(dead_code)]
mod example;

#[tokio::test]
async fn grpc_calls_spread_over_the_servers_and_unavailable_ones_are_retried() {
    let report = example::run(300, 6).await.unwrap();
    eprintln!("{report:?}");
    let spread = &report.spread;
    // Every call succeeded, none of them on the failing server.
    assert_eq!(
        spread.len(),
        3,
        "the healthy servers took the calls: {spread:?}"
    );
    assert!(!spread.contains_key("grpc-down"));
    assert_eq!(spread.values().map(|(u, _)| u).sum::<u64>(), 300);
    assert_eq!(spread.values().map(|(_, s)| s).sum::<u64>(), 6);
    for (server, (unary, _)) in spread {
        assert!(
            *unary >= 50,
            "{server} took only {unary} of 300: {spread:?}"
        );
    }
    // The failing server answered some first attempts, each retried elsewhere, until the
    // health layer ejected it.
    assert!(report.retried >= 5, "{report:?}");
    assert!(report.ejected, "{report:?}");
    // Open streams count as load: six held streams, two on each healthy server.
    assert!(spread.values().all(|(_, s)| *s == 2), "{spread:?}");
}
