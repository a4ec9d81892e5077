//! [`Meter`]: where an answer's usage goes when its body ends: the endpoint's token counters
//! and the request's span.

use std::sync::Arc;

use crate::{
    classify::Outcome,
    endpoint::{Endpoint, Reservation, Tokens},
    hints::Judged,
    usage::{Usage, UsageBody, UsageSink},
};

/// The usage sink of a [`MeteredBody`](super::MeteredBody): counts the usage at the endpoint
/// that gave the answer, for the model it was served as, settles the request's reservation of
/// the endpoint's quota to it (if the endpoint has a quota), and records
/// `gen_ai.usage.input_tokens` and `gen_ai.usage.output_tokens` on the span the request was
/// sent in.
#[derive(Debug)]
pub struct Meter {
    pub(crate) endpoint: Option<Arc<Endpoint>>,
    pub(crate) model: Option<Arc<str>>,
    pub(crate) span: tracing::Span,
    /// The request's hold on its endpoint's quota, corrected to the usage.
    pub(crate) reservation: Option<Reservation>,
}

impl UsageSink for Meter {
    fn finish(self, usage: Option<Usage>) {
        let Some(usage) = usage else { return };
        if let Some(reservation) = &self.reservation {
            reservation.settle(Tokens::new(usage.input_tokens, usage.output_tokens));
        }
        if let Some(endpoint) = &self.endpoint {
            endpoint.count_tokens(
                self.model.as_deref(),
                usage.input_tokens,
                usage.output_tokens,
                usage.cached_input_tokens,
            );
        }
        if !self.span.is_disabled() {
            self.span
                .record("gen_ai.usage.input_tokens", usage.input_tokens)
                .record("gen_ai.usage.output_tokens", usage.output_tokens);
        }
    }
}

/// The verdict is the wrapped body's: the usage reader judges nothing.
impl<B: Judged, S: UsageSink> Judged for UsageBody<B, S> {
    fn verdict(&self) -> Option<Outcome> {
        self.get_ref().verdict()
    }

    fn report_failure(&mut self) {
        self.get_mut().report_failure();
    }
}
