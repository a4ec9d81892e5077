//! What an endpoint can serve: [`Capabilities`], its models, context window, hardware,
//! provider, region and price.

use std::sync::Arc;

/// What an endpoint can serve. Unset fields mean "anything" (a model list left empty serves
/// every model).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capabilities {
    /// The models it serves; empty for any.
    pub models: Vec<Arc<str>>,
    /// Its context window, in tokens.
    pub max_context: Option<u32>,
    /// Its hardware class, such as `h100` or `a10`.
    pub hardware: Option<Arc<str>>,
    /// Who runs it, such as `self-hosted` or `openai`.
    pub provider: Option<Arc<str>>,
    /// Where it runs.
    pub region: Option<Arc<str>>,
    /// Price per 1,000 input tokens, in any currency unit, the same for all endpoints.
    pub price_in: f64,
    /// Price per 1,000 output tokens.
    pub price_out: f64,
}

impl Capabilities {
    /// Whether it serves `model`.
    pub fn serves_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| &**m == model)
    }

    /// The price of a request of `input` and `output` tokens.
    pub fn price(&self, input: u64, output: u64) -> f64 {
        (self.price_in * input as f64 + self.price_out * output as f64) / 1000.0
    }
}
