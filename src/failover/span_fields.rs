//! The request span's fields, named after OpenTelemetry's semantic conventions for GenAI
//! and HTTP clients: `gen_ai.operation.name` (from the path), `gen_ai.request.model` (recorded
//! by `Route` when it reads the model), `gen_ai.provider.name` (the answering endpoint's
//! [provider](crate::endpoint::Capabilities::provider), when it has one), `server.address`
//! and `server.port` (the endpoint that answered, without credentials), `error.type` (the
//! error's kind, or the status of a failed answer), and `gen_ai.usage.input_tokens` and
//! `gen_ai.usage.output_tokens` (recorded by `Metering` when the answer's body ends; the
//! attempt spans declare them too, for an answer that came from a retry). Recorded through `tracing` only when the span is enabled, so a disabled
//! span costs nothing; no OpenTelemetry crate is needed, and an OpenTelemetry layer for
//! `tracing` exports them under these names.

use http::{Response, Uri};

use crate::{
    error::{
        AttemptsFailed, BoxError, EndpointError, NoEndpoints, NotReplayable, Overloaded, Stalled,
        Timeout,
    },
    hints::Served,
};

/// Whether a subscriber takes Failover's debug spans. When none does, the spans are
/// `Span::none()`, which (unlike a disabled span that keeps its metadata) costs nothing to
/// enter and leave, even when `tracing`'s `log` feature is on.
#[inline]
pub(crate) fn spans_wanted() -> bool {
    tracing::level_enabled!(tracing::Level::DEBUG)
}

/// The request span, with the fields recorded later left empty (`Span::none()` unless
/// [`spans_wanted`]).
pub(crate) fn request_span(uri: &Uri, method: &http::Method) -> tracing::Span {
    if !spans_wanted() {
        return tracing::Span::none();
    }
    tracing::debug_span!(
        "request",
        method = %method,
        uri = %uri,
        "gen_ai.operation.name" = operation(uri.path()),
        "gen_ai.request.model" = tracing::field::Empty,
        "gen_ai.provider.name" = tracing::field::Empty,
        "server.address" = tracing::field::Empty,
        "server.port" = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
        "gen_ai.usage.input_tokens" = tracing::field::Empty,
        "gen_ai.usage.output_tokens" = tracing::field::Empty,
    )
}

/// The GenAI operation an OpenAI-style path names, if any.
fn operation(path: &str) -> Option<&'static str> {
    let path = path.trim_end_matches('/');
    [
        ("/chat/completions", "chat"),
        ("/completions", "text_completion"),
        ("/embeddings", "embeddings"),
        ("/messages", "chat"),
        ("/responses", "chat"),
    ]
    .into_iter()
    .find_map(|(suffix, name)| path.ends_with(suffix).then_some(name))
}

/// Records what the request came to on its span: the endpoint that answered, and the kind of
/// error or the status of a failed answer.
pub(crate) fn record_answer<B>(span: &tracing::Span, answer: &Result<Response<B>, BoxError>) {
    if span.is_disabled() {
        return;
    }
    match answer {
        Ok(response) => {
            if let Some(served) = response.extensions().get::<Served>() {
                let endpoint = served.endpoint();
                record_server(span, &endpoint.key().redacted().to_string());
                if let Some(provider) = &endpoint.capabilities().provider {
                    span.record("gen_ai.provider.name", &**provider);
                }
            }
            let status = response.status();
            if status.is_client_error() || status.is_server_error() {
                span.record("error.type", status.as_str());
            }
        }
        Err(error) => {
            span.record("error.type", error_type(error));
        }
    }
}

/// `server.address` and `server.port` from an endpoint's key, when it is a URL or
/// `host:port`.
fn record_server(span: &tracing::Span, key: &str) {
    let Ok(uri) = key.parse::<Uri>() else {
        return;
    };
    if let Some(host) = uri.host() {
        span.record("server.address", host);
    }
    let port = uri.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    });
    if let Some(port) = port {
        span.record("server.port", port);
    }
}

/// A low-cardinality name for the kind of `error`: the crate's error types by name (what an
/// [`EndpointError`] carries, for one), else `_OTHER`, as the conventions ask.
fn error_type(error: &BoxError) -> &'static str {
    let error: &(dyn std::error::Error + Send + Sync + 'static) =
        match error.downcast_ref::<EndpointError>() {
            Some(e) => e.inner(),
            None => &**error,
        };
    if error.is::<AttemptsFailed>() {
        "attempts_failed"
    } else if error.is::<NoEndpoints>() {
        "no_endpoints"
    } else if error.is::<Overloaded>() {
        "overloaded"
    } else if error.is::<Timeout>() {
        "timeout"
    } else if error.is::<Stalled>() {
        "stalled"
    } else if error.is::<NotReplayable>() {
        "not_replayable"
    } else {
        "_OTHER"
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn operations_come_from_openai_style_paths() {
        assert_eq!(operation("/v1/chat/completions"), Some("chat"));
        assert_eq!(operation("/v1/completions/"), Some("text_completion"));
        assert_eq!(operation("/v1/embeddings"), Some("embeddings"));
        assert_eq!(operation("/v1/messages"), Some("chat"));
        assert_eq!(operation("/healthz"), None);
    }

    #[test]
    fn errors_are_named_by_kind() {
        let e: BoxError = Timeout::new(std::time::Duration::from_secs(1)).into();
        assert_eq!(error_type(&e), "timeout");
        let e: BoxError = NoEndpoints::empty().into();
        assert_eq!(error_type(&e), "no_endpoints");
        let e: BoxError = "something".into();
        assert_eq!(error_type(&e), "_OTHER");
    }
}
