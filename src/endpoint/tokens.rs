//! The tokens an endpoint's answers used, counted per model: input, output and cached input
//! ([`ModelTokens`]), from the usage the answers reported.
//!
//! The models are a fixed set, so the series they label are bounded: an endpoint configured
//! with models has a row for each; one configured with none (it serves any) learns the first
//! [`LEARNED_MODELS`] names it counts usage for; everything else is counted in a row of its
//! own, labelled [`OTHER_MODEL`]. A row is three relaxed adds; a learned name is allocated
//! once, the first time it is counted.

use std::sync::{Arc, OnceLock};

use crate::sync::{AtomicU64, Ordering::Relaxed};

/// How many model names an endpoint configured with none learns.
pub const LEARNED_MODELS: usize = 8;

/// The `model` label of the tokens of a model that is none of the endpoint's (or of a request
/// that named none): as OpenTelemetry names a value outside a known set.
pub const OTHER_MODEL: &str = "_OTHER";

/// One model's tokens at an endpoint, as read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelTokens {
    /// The model; [`OTHER_MODEL`] for the rest.
    pub model: Arc<str>,
    /// Input tokens, cached ones included.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Input tokens read from the server's prompt cache.
    pub cached_input: u64,
}

#[derive(Debug, Default)]
struct Row {
    input: AtomicU64,
    output: AtomicU64,
    cached: AtomicU64,
}

/// One answer's tokens: input (cached ones included), output, cached input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) input: u64,
    pub(crate) output: u64,
    pub(crate) cached_input: u64,
}

impl Row {
    fn add(&self, counts: &Counts) {
        // Saturating: the counts are an upstream's, and a counter must never go back.
        let add = |counter: &AtomicU64, n: u64| {
            if n > 0 {
                let _ = counter.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_add(n)));
            }
        };
        add(&self.input, counts.input);
        add(&self.output, counts.output);
        add(&self.cached, counts.cached_input);
    }

    fn read(&self, model: Arc<str>) -> ModelTokens {
        ModelTokens {
            model,
            input: self.input.load(Relaxed),
            output: self.output.load(Relaxed),
            cached_input: self.cached.load(Relaxed),
        }
    }
}

#[derive(Debug)]
struct Slot {
    name: OnceLock<Arc<str>>,
    row: Row,
}

/// An endpoint's token counters.
#[derive(Debug)]
pub(crate) struct Tokens {
    slots: Box<[Slot]>,
    /// The slots are the configured models (else they are learned).
    configured: bool,
    other: Row,
}

impl Tokens {
    pub(crate) fn new(models: &[Arc<str>]) -> Self {
        let slots: Box<[Slot]> = if models.is_empty() {
            (0..LEARNED_MODELS)
                .map(|_| Slot {
                    name: OnceLock::new(),
                    row: Row::default(),
                })
                .collect()
        } else {
            models
                .iter()
                .map(|m| Slot {
                    name: OnceLock::from(Arc::clone(m)),
                    row: Row::default(),
                })
                .collect()
        };
        Self {
            slots,
            configured: !models.is_empty(),
            other: Row::default(),
        }
    }

    /// Counts an answer's tokens for `model`; a request that named no model counts for the
    /// endpoint's only model, if it has exactly one.
    pub(crate) fn count(&self, model: Option<&str>, counts: &Counts) {
        self.row(model).add(counts);
    }

    fn row(&self, model: Option<&str>) -> &Row {
        // A model named as the rest's label is counted with the rest: a row of its own would
        // write the series `model="_OTHER"` twice.
        if model == Some(OTHER_MODEL) {
            return &self.other;
        }
        let Some(model) = model else {
            return match &*self.slots {
                [only] if self.configured => &only.row,
                _ => &self.other,
            };
        };
        for slot in &*self.slots {
            let name = match slot.name.get() {
                Some(name) => name,
                None if self.configured => continue,
                // Another request may claim the slot first, with another name.
                None => slot.name.get_or_init(|| Arc::from(model)),
            };
            if **name == *model {
                return &slot.row;
            }
        }
        &self.other
    }

    /// Every row: the models' in their order (learned ones once learned), then the rest.
    pub(crate) fn read(&self) -> Vec<ModelTokens> {
        self.slots
            .iter()
            .filter_map(|s| Some(s.row.read(Arc::clone(s.name.get()?))))
            // A configured model of that name counts nothing: the rest's row stands for it.
            .filter(|t| &*t.model != OTHER_MODEL)
            .chain([self.other.read(Arc::from(OTHER_MODEL))])
            .collect()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn counts(input: u64, output: u64, cached_input: u64) -> Counts {
        Counts {
            input,
            output,
            cached_input,
        }
    }

    fn tokens(rows: &[ModelTokens]) -> Vec<(&str, u64, u64, u64)> {
        rows.iter()
            .map(|r| (&*r.model, r.input, r.output, r.cached_input))
            .collect()
    }

    #[test]
    fn counts_beyond_u64_saturate_instead_of_wrapping() {
        // The counts are an upstream's bytes: one answer claiming u64::MAX tokens must not
        // wrap the counters (a `_total` series that goes back reads as a counter reset).
        let t = Tokens::new(&[Arc::from("m")]);
        t.count(Some("m"), &counts(5, 5, 5));
        t.count(Some("m"), &counts(u64::MAX, u64::MAX, u64::MAX));
        t.count(Some("m"), &counts(1, 1, 1));
        assert_eq!(tokens(&t.read())[0], ("m", u64::MAX, u64::MAX, u64::MAX));
    }

    #[test]
    fn configured_models_have_their_rows_and_the_rest_one() {
        let t = Tokens::new(&[Arc::from("llama"), Arc::from("qwen")]);
        assert_eq!(
            tokens(&t.read()),
            [
                ("llama", 0, 0, 0),
                ("qwen", 0, 0, 0),
                (OTHER_MODEL, 0, 0, 0)
            ],
            "every series from the start"
        );
        t.count(Some("qwen"), &counts(10, 2, 8));
        t.count(Some("qwen"), &counts(5, 1, 0));
        t.count(Some("mistral"), &counts(7, 7, 0));
        t.count(None, &counts(1, 1, 0));
        assert_eq!(
            tokens(&t.read()),
            [
                ("llama", 0, 0, 0),
                ("qwen", 15, 3, 8),
                (OTHER_MODEL, 8, 8, 0)
            ]
        );
        let one = Tokens::new(&[Arc::from("llama")]);
        one.count(None, &counts(3, 4, 0));
        assert_eq!(
            tokens(&one.read()),
            [("llama", 3, 4, 0), (OTHER_MODEL, 0, 0, 0)],
            "the only model serves a request that named none"
        );
    }

    #[test]
    fn an_endpoint_of_any_model_learns_a_bounded_set() {
        let t = Tokens::new(&[]);
        assert_eq!(tokens(&t.read()), [(OTHER_MODEL, 0, 0, 0)]);
        for i in 0..LEARNED_MODELS + 3 {
            t.count(Some(&format!("m{i}")), &counts(1, 0, 0));
        }
        t.count(Some("m0"), &counts(1, 0, 0));
        t.count(None, &counts(0, 5, 0));
        let rows = t.read();
        assert_eq!(rows.len(), LEARNED_MODELS + 1);
        assert_eq!(tokens(&rows[..1]), [("m0", 2, 0, 0)]);
        assert_eq!(tokens(&rows[LEARNED_MODELS..]), [(OTHER_MODEL, 3, 5, 0)]);
    }
}
