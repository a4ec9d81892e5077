//! The tonic example runs as a test: gRPC calls, unary and server-streaming, spread over the
//! servers.

#[path = "../examples/tonic.rs"]
#[allow(dead_code)]
mod example;

#[tokio::test]
async fn grpc_calls_spread_over_the_servers() {
    let spread = example::run(300, 6).await.unwrap();
    eprintln!("{spread:?}");
    assert_eq!(spread.len(), 3, "every server took calls: {spread:?}");
    assert_eq!(spread.values().map(|(u, _)| u).sum::<u64>(), 300);
    assert_eq!(spread.values().map(|(_, s)| s).sum::<u64>(), 6);
    for (server, (unary, _)) in &spread {
        assert!(
            *unary >= 50,
            "{server} took only {unary} of 300: {spread:?}"
        );
    }
    // Open streams count as load: six held streams, two on each server.
    assert!(spread.values().all(|(_, s)| *s == 2), "{spread:?}");
}
