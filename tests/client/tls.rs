//! HTTPS with a CA made at test time; HTTP/2 by ALPN, HTTP/1.1 fallback, h2c.

use http::{StatusCode, Version};
use tower_ai_balance::client::{Client, ClientError, UpstreamConfig};

use crate::{
    post, send,
    support::{Recorder, TestCa},
};

fn client_trusting(ca: &TestCa) -> Client {
    Client::builder()
        .webpki_roots(false)
        .ca_pem(ca.ca_pem.as_bytes())
        .build()
        .unwrap()
}

#[tokio::test]
async fn https_speaks_http2_by_alpn_and_verifies_the_chain() {
    let ca = TestCa::new();
    let server = Recorder::ok(Some(ca.server(&[b"h2", b"http/1.1"]))).await;
    let base = format!("https://localhost:{}/v1", server.addr.port());
    let client = client_trusting(&ca);
    let (head, body) = send(
        &client,
        UpstreamConfig::new(&base).unwrap(),
        post("/v1/chat/completions", "{}"),
    )
    .await
    .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(body, "{\"ok\":true}");
    let seen = server.last();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.target, "/v1/chat/completions");
    // HTTP/2 carries the upstream's authority, not the client's Host.
    let authority = format!("localhost:{}", server.addr.port());
    assert_eq!(seen.authority.as_deref(), Some(authority.as_str()));
    assert_ne!(
        seen.headers.get("host").map(|h| h.to_str().unwrap()),
        Some("gateway.internal")
    );
}

#[tokio::test]
async fn https_falls_back_to_http1_when_the_server_offers_only_that() {
    let ca = TestCa::new();
    let server = Recorder::ok(Some(ca.server(&[b"http/1.1"]))).await;
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let mut request = post("/v1/chat/completions", "{}");
    request
        .headers_mut()
        .insert("host", "gateway.internal".parse().unwrap());
    let (head, _) = send(
        &client_trusting(&ca),
        UpstreamConfig::new(&base).unwrap(),
        request,
    )
    .await
    .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    let seen = server.last();
    assert_eq!(seen.version, Version::HTTP_11);
    // The upstream's Host, not the client's.
    assert_eq!(
        seen.headers["host"],
        format!("127.0.0.1:{}", server.addr.port()).as_str()
    );
}

#[tokio::test]
async fn an_unknown_ca_is_refused() {
    let ca = TestCa::new();
    let server = Recorder::ok(Some(ca.server(&[b"h2", b"http/1.1"]))).await;
    let base = format!("https://localhost:{}", server.addr.port());
    // The public roots only, then another CA: neither signed this server's certificate.
    let other = TestCa::new();
    for client in [Client::new().unwrap(), client_trusting(&other)] {
        let result = send(
            &client,
            UpstreamConfig::new(&base).unwrap(),
            post("/x", "{}"),
        )
        .await;
        assert!(result.is_err());
    }
    assert_eq!(server.count(), 0, "no request reached the server");
    // With the right CA, the same server answers.
    send(
        &client_trusting(&ca),
        UpstreamConfig::new(&base).unwrap(),
        post("/x", "{}"),
    )
    .await
    .unwrap();
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn h2c_with_prior_knowledge_and_http1_on_plain_tcp() {
    let server = Recorder::ok(None).await;
    let base = format!("http://127.0.0.1:{}", server.addr.port());
    let h2c = Client::builder()
        .http2_prior_knowledge(true)
        .build()
        .unwrap();
    send(&h2c, UpstreamConfig::new(&base).unwrap(), post("/a", "{}"))
        .await
        .unwrap();
    assert_eq!(server.last().version, Version::HTTP_2);
    send(
        &Client::new().unwrap(),
        UpstreamConfig::new(&base).unwrap(),
        post("/b", "{}"),
    )
    .await
    .unwrap();
    assert_eq!(server.last().version, Version::HTTP_11);
}

#[test]
fn bad_certificates_and_settings_are_refused_when_built() {
    assert!(matches!(
        Client::builder().ca_pem(b"not a pem").build(),
        Err(ClientError::InvalidCertificate { .. })
    ));
    assert!(matches!(
        Client::builder().webpki_roots(false).build(),
        Err(ClientError::Tls { .. })
    ));
    let zero = Some(std::time::Duration::ZERO);
    for (name, builder) in [
        ("connect_timeout", Client::builder().connect_timeout(zero)),
        ("tcp_keepalive", Client::builder().tcp_keepalive(zero)),
        (
            "http2_keep_alive_interval",
            Client::builder().http2_keep_alive_interval(zero),
        ),
    ] {
        match builder.build() {
            Err(ClientError::InvalidOption { option, .. }) => assert_eq!(option, name),
            other => panic!("{name}: {:?}", other.map(|_| ())),
        }
    }
    assert!(Client::builder().connect_timeout(None).build().is_ok());
}
