//! OpenAI requests served by the simulated Anthropic Messages server, through the client.

use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use http::StatusCode;
use serde_json::{json, Value};
use tower_ai_balance::{
    anthropic::RequestError,
    client::{Client, Upstream, UpstreamConfig},
};

use crate::{
    model_server::{Mode, ModelServer, Spec},
    post, send,
    support::{openai_stream, stream_text},
};

async fn claude() -> ModelServer {
    ModelServer::spawn(Spec::new(
        "claude",
        Duration::from_millis(2),
        Duration::from_millis(1),
    ))
    .await
}

fn config(server: &ModelServer) -> UpstreamConfig {
    UpstreamConfig::new(&format!("http://{}/v1", server.addr))
        .unwrap()
        .anthropic("sk-ant-upstream")
        .upstream_model("claude-sim-1")
}

fn chat(extra: Value) -> String {
    let mut request = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say something."},
        ],
    });
    for (k, v) in extra.as_object().unwrap() {
        request[k] = v.clone();
    }
    request.to_string()
}

#[tokio::test]
async fn a_completion_comes_back_in_openai_format() {
    let server = claude().await;
    let mut request = post(
        "/v1/chat/completions",
        &chat(json!({"max_tokens": 3, "stop": "never"})),
    );
    request
        .headers_mut()
        .insert("authorization", "Bearer client-key".parse().unwrap());
    let (head, body) = send(&Client::new().unwrap(), config(&server), request)
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-type"], "application/json");
    assert_eq!(
        head.headers()["content-length"],
        body.len().to_string().as_str()
    );
    let completion: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], "claude-sim-1");
    assert_eq!(completion["choices"][0]["message"]["role"], "assistant");
    assert_eq!(completion["choices"][0]["message"]["content"], "t0 t1 t2 ");
    assert_eq!(completion["choices"][0]["finish_reason"], "length");
    assert_eq!(completion["usage"]["completion_tokens"], 3);
    assert_eq!(completion["usage"]["prompt_tokens"], 4);
    assert_eq!(completion["usage"]["total_tokens"], 7);

    // What the Anthropic server received: its own credentials and a Messages request.
    let headers = server.stats.last_headers.lock().clone();
    assert_eq!(headers["x-api-key"], "sk-ant-upstream");
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert!(!headers.contains_key("authorization"));
    let sent: Value = serde_json::from_slice(&server.stats.last_body.lock()).unwrap();
    assert_eq!(sent["model"], "claude-sim-1");
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["max_tokens"], 3);
    assert_eq!(sent["stop_sequences"], json!(["never"]));
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "Say something."}])
    );
}

#[tokio::test]
async fn a_stream_comes_back_as_chunks_ending_in_done() {
    let server = claude().await;
    let client = Client::new().unwrap();
    let request = chat(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let (head, body) = send(
        &client,
        config(&server),
        post("/v1/chat/completions", &request),
    )
    .await
    .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-type"], "text/event-stream");
    assert!(!head.headers().contains_key("content-length"));
    let chunks = openai_stream(&body);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(stream_text(&chunks), "t0 t1 t2 t3 t4 t5 t6 t7 ");
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("stop")]);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 8);
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));

    // A stop sequence ends it early, still with [DONE]; no usage chunk unless asked.
    let request = chat(json!({"stream": true, "stop": ["t3"], "max_completion_tokens": 100}));
    let (_, body) = send(
        &client,
        config(&server),
        post("/v1/chat/completions", &request),
    )
    .await
    .unwrap();
    let chunks = openai_stream(&body);
    assert_eq!(stream_text(&chunks), "t0 t1 t2 ");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    let sent: Value = serde_json::from_slice(&server.stats.last_body.lock()).unwrap();
    assert_eq!(sent["max_tokens"], 100);
}

#[tokio::test]
async fn rate_limits_and_overloads_are_mapped_with_their_retry_after() {
    let server = claude().await;
    let client = Client::new().unwrap();
    for (mode, status, retry, code) in [
        (Mode::RateLimit(7), 429, Some("7"), "rate_limit_exceeded"),
        (Mode::Overloaded(3), 503, Some("3"), "overloaded"),
        // An overload without a retry-after is given one second.
        (Mode::Unavailable, 503, Some("1"), "overloaded"),
        (Mode::Fail, 500, None, ""),
    ] {
        server.set_mode(mode);
        let (head, body) = send(
            &client,
            config(&server),
            post("/v1/chat/completions", &chat(json!({"stream": true}))),
        )
        .await
        .unwrap();
        assert_eq!(head.status().as_u16(), status, "{mode:?}");
        assert_eq!(
            head.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap()),
            retry,
            "{mode:?}"
        );
        assert_eq!(head.headers()["content-type"], "application/json");
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert!(error["error"]["message"].is_string());
        assert_eq!(error["error"]["code"].as_str().unwrap_or(""), code);
        if mode == Mode::RateLimit(7) {
            assert_eq!(
                head.headers()["anthropic-ratelimit-requests-remaining"],
                "0"
            );
        }
    }
}

#[tokio::test]
async fn an_error_event_reaches_the_client_as_an_openai_error_and_fails_the_body() {
    let server = claude().await;
    server.set_mode(Mode::ErrorEvent);
    let upstream = Upstream::new(&Client::new().unwrap(), &config(&server)).unwrap();
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let response = upstream
        .oneshot(post("/v1/chat/completions", &chat(json!({"stream": true}))))
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut text = Vec::new();
    let mut failed = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => text.extend_from_slice(&frame.into_data().unwrap()),
            Err(e) => {
                failed = true;
                assert!(e.to_string().contains("overloaded_error"), "{e}");
            }
        }
    }
    assert!(failed);
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("\"error\":{"), "{text}");
    assert!(!text.contains("[DONE]"));
}

#[tokio::test]
async fn what_cannot_be_translated_is_refused_before_any_upstream() {
    let server = claude().await;
    let client = Client::new().unwrap();
    let tools =
        chat(json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}));
    let image = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]})
    .to_string();
    for body in [tools, image, "not json".to_owned()] {
        let upstream = Upstream::new(&client, &config(&server)).unwrap();
        use tower::ServiceExt;
        let response = upstream
            .oneshot(post("/v1/chat/completions", &body))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(response.extensions().get::<RequestError>().is_some());
    }
    // Another endpoint than chat completions.
    let (head, _) = send(&client, config(&server), post("/v1/embeddings", "{}"))
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
    assert_eq!(server.stats.received.load(SeqCst), 0);
}
