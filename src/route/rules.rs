//! Content-based routing rules: [`Rules`] with model aliases and request classes, over the
//! [`RequestInfo`] a reader extracts.

use std::sync::Arc;

use super::Routing;
use crate::{capability::Require, hints::Tokens};

/// What a reader extracted from a request, for [`Rules`] to decide on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// The model asked for.
    pub model: Option<String>,
    /// The prompt's tokens (or an estimate).
    pub prompt_tokens: u32,
    /// The most tokens it may generate.
    pub max_tokens: u32,
}

/// A class of requests by size, with requirements of its own.
#[derive(Debug, Clone)]
pub struct Class {
    /// Requests of at most this many tokens (prompt plus maximum output) are in the class.
    pub up_to: u32,
    /// What such requests need besides their model and context: a hardware class, a provider.
    pub require: Require,
}

/// An alias: the models it stands for, with their weights, and the same models by weight,
/// heaviest first, shared by every request's [`Require::fallback`].
#[derive(Debug, Clone)]
struct Alias {
    name: Arc<str>,
    variants: Vec<(Arc<str>, f64)>,
    by_weight: Arc<[Arc<str>]>,
}

/// Content-based routing: model aliases resolved to their variants (at random, by weight,
/// falling back to the others), request classes by size, and the context window every
/// request needs.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    aliases: Vec<Alias>,
    classes: Vec<Class>,
}

impl Rules {
    /// No aliases and no classes: each request needs its own model and a context window of its
    /// prompt plus maximum output, and costs that many tokens.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves `alias` to one of `variants`, chosen at random in proportion to its weight;
    /// when no endpoint of the chosen one can take the request at the moment (none healthy
    /// with room), to the others, heaviest first. A variant whose weight is not a positive
    /// number is never used.
    ///
    /// The request is sent as the variant that serves it, not as the alias: `Balance` puts
    /// that model in a [`ServeAs`](crate::hints::ServeAs) hint, which the endpoint's service
    /// must write into the request (`client::Upstream` does;
    /// [`RewriteModel`](super::RewriteModel) does for other services).
    pub fn alias(
        mut self,
        alias: impl Into<Arc<str>>,
        variants: impl IntoIterator<Item = (impl Into<Arc<str>>, f64)>,
    ) -> Self {
        let variants: Vec<(Arc<str>, f64)> = variants
            .into_iter()
            .map(|(m, w)| (m.into(), w))
            .filter(|(_, w)| *w > 0.0 && w.is_finite())
            .collect();
        let mut by_weight = variants.clone();
        // Stable: variants of equal weight keep the order they were given in.
        by_weight.sort_by(|a, b| b.1.total_cmp(&a.1));
        let by_weight = by_weight.into_iter().map(|(m, _)| m).collect();
        self.aliases.push(Alias {
            name: alias.into(),
            variants,
            by_weight,
        });
        self
    }

    /// Adds a class; the first whose `up_to` covers a request applies.
    pub fn class(mut self, up_to: u32, require: Require) -> Self {
        self.classes.push(Class { up_to, require });
        self.classes.sort_by_key(|c| c.up_to);
        self
    }

    /// The routing of a request described by `info`, with `draw` in `[0, 1)` choosing among
    /// an alias's variants.
    pub fn decide(&self, info: &RequestInfo, draw: f64) -> Routing {
        let tokens = info.prompt_tokens.saturating_add(info.max_tokens);
        let mut require = self
            .classes
            .iter()
            .find(|c| tokens <= c.up_to)
            .map(|c| c.require.clone())
            .unwrap_or_default();
        require.context = Some(tokens);
        if let Some(model) = info.model.as_deref() {
            match self.aliases.iter().find(|a| &*a.name == model) {
                Some(alias) if !alias.variants.is_empty() => {
                    require.model = Some(alias.draw(draw));
                    require.fallback = Some(Arc::clone(&alias.by_weight));
                    require.alias = Some(Arc::clone(&alias.name));
                }
                _ => require.model = Some(model.into()),
            }
        }
        Routing {
            require: Some(require),
            cost: Some(u64::from(tokens.max(1))),
            tokens: Some(Tokens::new(
                u64::from(info.prompt_tokens),
                u64::from(info.max_tokens),
            )),
            refuse: None,
        }
    }
}

impl Alias {
    /// The variant `draw` (in `[0, 1)`) falls on, in proportion to the weights.
    fn draw(&self, draw: f64) -> Arc<str> {
        let total: f64 = self.variants.iter().map(|(_, w)| w).sum();
        let mut x = draw * total;
        for (m, w) in &self.variants {
            if x < *w {
                return Arc::clone(m);
            }
            x -= w;
        }
        let (last, _) = self.variants.last().expect("an alias with variants");
        Arc::clone(last)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn aliases_split_by_weight_and_classes_add_requirements() {
        let rules = Rules::new()
            .alias("chat", [("llama-70b", 3.0), ("qwen-72b", 1.0)])
            .class(512, Require::default().hardware("a10"))
            .class(u32::MAX, Require::default().hardware("h100"));
        let info = |model: &str, prompt, max| RequestInfo {
            model: Some(model.into()),
            prompt_tokens: prompt,
            max_tokens: max,
        };
        let short = rules.decide(&info("chat", 100, 10), 0.5);
        let r = short.require.unwrap();
        assert_eq!(
            (r.model.as_deref(), r.hardware.as_deref(), r.context),
            (Some("llama-70b"), Some("a10"), Some(110))
        );
        assert_eq!(short.cost, Some(110));
        let long = rules
            .decide(&info("chat", 4000, 1000), 0.9)
            .require
            .unwrap();
        assert_eq!(
            (long.model.as_deref(), long.hardware.as_deref()),
            (Some("qwen-72b"), Some("h100"))
        );
        let other = rules.decide(&info("gpt-x", 1, 1), 0.1).require.unwrap();
        assert_eq!(
            other.model.as_deref(),
            Some("gpt-x"),
            "no alias: the model itself"
        );
        let n = 10_000;
        let llama = (0..n)
            .filter(|i| {
                let r = rules
                    .decide(&info("chat", 1, 1), *i as f64 / n as f64)
                    .require
                    .unwrap();
                r.model.as_deref() == Some("llama-70b")
            })
            .count();
        assert_eq!(llama, 7_500, "three quarters to the variant of weight 3");
    }
}
