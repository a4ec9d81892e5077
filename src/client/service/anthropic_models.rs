//! An Anthropic upstream's model list, asked with its own credentials and answered in
//! OpenAI's shape: `GET /v1/models` through an upstream of [`Format::Anthropic`](super::Format).

use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use http_body_util::{BodyExt, Empty};

use super::{answer, read, refused_credentials, Inner, ResponseBody};
use crate::{
    anthropic::models::{models_page, openai_list, PAGE},
    error::BoxError,
};

/// The most pages read (a thousand models each).
const MAX_PAGES: usize = 10;

impl Inner {
    /// Every page of the upstream's list (up to [`MAX_PAGES`]), as one OpenAI-format list. An
    /// error answer is translated as a completion's is; a page that is not a model list is a
    /// `502`.
    pub(super) async fn anthropic_models(
        &self,
        headers: &HeaderMap,
    ) -> Result<Response<ResponseBody>, BoxError> {
        let mut models = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let query = match &after {
                Some(id) => format!("limit={PAGE}&after_id={}", percent_encode(id)),
                None => format!("limit={PAGE}"),
            };
            let body = Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync();
            let request =
                self.request(Method::GET, "/v1/models", Some(&query), headers, body, None)?;
            let response = self.client.pooled.request(request).await?;
            if refused_credentials(response.status()) {
                return Ok(answer(response, ResponseBody::incoming));
            }
            let (parts, body) = response.into_parts();
            if !parts.status.is_success() {
                return Ok(self.anthropic_error(parts, body).await);
            }
            let page = read(body, self.max_buffered).await?;
            let Some((found, next)) = models_page(&page) else {
                return Ok(super::error(
                    http::StatusCode::BAD_GATEWAY,
                    "the upstream's model list cannot be read",
                    "server_error",
                    None,
                ));
            };
            models.extend(found);
            match next {
                Some(id) if Some(&id) != after.as_ref() => after = Some(id),
                _ => break,
            }
        }
        let list = Bytes::from(openai_list(models));
        let mut response = Response::new(ResponseBody::full(list.clone()));
        super::json(response.headers_mut(), list.len());
        Ok(response)
    }
}

/// A query value with everything but unreserved characters percent-encoded.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn cursors_are_percent_encoded() {
        assert_eq!(super::percent_encode("claude-3.5_x~"), "claude-3.5_x~");
        assert_eq!(super::percent_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
