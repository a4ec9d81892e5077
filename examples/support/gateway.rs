//! The OpenAI-compatible gateway: its upstream flags, its stack and its routes. Shared by
//! `examples/gateway.rs` and its integration test (included with `#[path]`).
#![allow(dead_code, unreachable_pub)]

use std::{convert::Infallible, time::Duration};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use bytes::Bytes;
use http_body_util::Full;
use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    affinity::StreamAffinityLayer,
    failover::FailoverLayer,
    health::HealthFilterLayer,
    http_error::openai_response,
    route::{OpenAiRules, RouteLayer, Rules},
    BalanceLayer, BoxError, EndpointConfig, Pool,
};

use super::model_server::Upstream;

/// One upstream, as given on the command line:
/// `URL[,key=API_KEY][,tier=N][,models=a|b][,weight=W]`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSpec {
    pub base: http::Uri,
    pub api_key: Option<String>,
    pub tier: u32,
    pub models: Vec<String>,
    pub weight: f64,
}

pub fn parse_upstream(text: &str) -> Result<UpstreamSpec, String> {
    let mut parts = text.split(',');
    let base = parts
        .next()
        .filter(|s| !s.is_empty())
        .ok_or("an upstream needs a base URL")?
        .trim_end_matches('/')
        .parse::<http::Uri>()
        .map_err(|e| format!("bad upstream URL: {e}"))?;
    let mut spec = UpstreamSpec {
        base,
        api_key: None,
        tier: 0,
        models: Vec::new(),
        weight: 1.0,
    };
    for part in parts {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, got {part:?}"))?;
        match k {
            "key" => spec.api_key = Some(v.to_owned()),
            "tier" => spec.tier = v.parse().map_err(|_| format!("bad tier {v:?}"))?,
            "models" => spec.models = v.split('|').map(str::to_owned).collect(),
            "weight" => spec.weight = v.parse().map_err(|_| format!("bad weight {v:?}"))?,
            other => return Err(format!("unknown upstream option {other:?}")),
        }
    }
    Ok(spec)
}

/// A pool of the given upstreams, sharing one hyper client.
pub fn pool(upstreams: &[UpstreamSpec]) -> Result<Pool<Upstream>, BoxError> {
    let client = Upstream::client();
    let pool = Pool::new();
    for u in upstreams {
        let mut config = EndpointConfig::new(u.base.to_string())
            .tier(u.tier)
            .weight(u.weight)
            .label("base", u.base.to_string().trim_end_matches('/'));
        for m in &u.models {
            config = config.model(m.as_str());
        }
        let mut upstream = Upstream::new(client.clone(), u.base.clone());
        if let Some(key) = &u.api_key {
            upstream = upstream.with_api_key(key);
        }
        pool.insert(config, upstream)?;
    }
    Ok(pool)
}

type Stack = BoxCloneSyncService<http::Request<Full<Bytes>>, http::Response<Body>, BoxError>;

#[derive(Clone)]
struct AppState {
    pool: Pool<Upstream>,
    stack: Stack,
}

/// The gateway's routes over `pool`: Failover, Route (model and context from the JSON body),
/// StreamAffinity (`x-session-id`), HealthFilter and Balance.
pub fn app(pool: Pool<Upstream>) -> Router {
    let stack = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .first_chunk(Duration::from_secs(60))
                .build()
                .expect("valid settings"),
        )
        .layer(RouteLayer::new(OpenAiRules(Rules::new())))
        .layer(StreamAffinityLayer::header(HeaderName::from_static(
            "x-session-id",
        )))
        .layer(HealthFilterLayer::new())
        .layer(
            BalanceLayer::builder()
                .timeout(Duration::from_secs(60))
                .idle_timeout(Duration::from_secs(120))
                .build()
                .expect("valid settings"),
        )
        .service(pool.clone())
        .map_response(|r| r.map(Body::new));
    let state = AppState {
        pool,
        stack: BoxCloneSyncService::new(stack),
    };
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn chat(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 16 << 20).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is too large",
            None,
        );
    };
    // The client's own credentials and host are not the upstream's.
    parts.headers.remove(header::AUTHORIZATION);
    parts.headers.remove(header::HOST);
    let forward = http::Request::from_parts(parts, Full::new(bytes));
    match state.stack.oneshot(forward).await {
        Ok(response) => response,
        Err(e) => error_for(&e),
    }
}

/// The stack's error as an OpenAI client expects it: a status by what failed (429 with
/// `Retry-After` when every upstream is rate-limited), a message that names no upstream.
fn error_for(e: &BoxError) -> Response {
    openai_response(e).map(Body::new)
}

/// An error in the OpenAI format, with `Retry-After` when it is known.
fn error(status: StatusCode, message: &str, retry_after: Option<Duration>) -> Response {
    let body = format!(
        "{{\"error\":{{\"message\":{},\"type\":\"{}\"}}}}",
        json_string(message),
        if status.is_client_error() {
            "invalid_request_error"
        } else {
            "server_error"
        }
    );
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(d) = retry_after {
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn models(State(state): State<AppState>) -> Result<Response, Infallible> {
    let mut names: Vec<String> = state
        .pool
        .endpoints()
        .iter()
        .flat_map(|e| {
            e.capabilities()
                .models
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names.dedup();
    let data: Vec<String> = names
        .iter()
        .map(|m| {
            format!(
                "{{\"id\":{},\"object\":\"model\",\"owned_by\":\"tower-ai-balance\"}}",
                json_string(m)
            )
        })
        .collect();
    let body = format!("{{\"object\":\"list\",\"data\":[{}]}}", data.join(","));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.pool.metrics().prometheus(),
    )
        .into_response()
}
