//! What an endpoint can serve, and what a request needs.
//!
//! [`Capabilities`] describe an endpoint: the models it serves, its context window, its
//! hardware, provider and region, and its price. A [`Require`] hint says what a request needs;
//! [`Balance`](crate::balance::Balance) sends it only where every requirement holds, and when
//! no endpoint can, fails with [`Unsatisfiable`], naming the requirement no endpoint meets.
//! Nothing is silently mis-routed.

use std::{fmt, sync::Arc};

pub use crate::endpoint::Capabilities;
use crate::endpoint::Endpoint;

/// What a request needs of the endpoint that serves it. Set by a user function or by the
/// [`route`](crate::route) layer.
///
/// A request that several models will do (a model alias and its variants) names the one it
/// prefers in `model` and the others in `fallback`: [`Balance`](crate::balance::Balance)
/// takes an endpoint of the preferred model if one can take the request now, else one of the
/// next model in `fallback`, and so on, and tells the endpoint's service which model it serves
/// the request as ([`ServeAs`](crate::hints::ServeAs)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Require {
    /// A model the endpoint must serve: with `fallback`, the preferred one.
    pub model: Option<Arc<str>>,
    /// Other models that will do, in order of preference, when no endpoint of `model` can
    /// take the request now (none healthy with room). `model` may be among them; it is not
    /// tried twice. Each is held to the other requirements.
    pub fallback: Option<Arc<[Arc<str>]>>,
    /// The name the request asked for when `model` and `fallback` stand for it (an alias):
    /// the request must then be sent as the model of the endpoint that takes it, whatever it
    /// names itself (see [`serve_as`](Self::serve_as)).
    pub alias: Option<Arc<str>>,
    /// The context window it must have: prompt plus maximum output tokens.
    pub context: Option<u32>,
    /// Its hardware class.
    pub hardware: Option<Arc<str>>,
    /// Its provider.
    pub provider: Option<Arc<str>>,
    /// Its region.
    pub region: Option<Arc<str>>,
}

/// The requirement no endpoint met.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unmet {
    /// No endpoint serves the model.
    Model(Arc<str>),
    /// No endpoint has a context window this long.
    Context(u32),
    /// No endpoint has the hardware.
    Hardware(Arc<str>),
    /// No endpoint is run by the provider.
    Provider(Arc<str>),
    /// No endpoint is in the region.
    Region(Arc<str>),
    /// Each requirement is met somewhere, but never all on one endpoint.
    Combination,
}

fn matches(want: &Option<Arc<str>>, have: &Option<Arc<str>>) -> bool {
    match (want, have) {
        (None, _) => true,
        (Some(w), Some(h)) => w == h,
        (Some(_), None) => false,
    }
}

impl Require {
    /// Needs `model`.
    pub fn model(model: impl Into<Arc<str>>) -> Self {
        Self {
            model: Some(model.into()),
            ..Self::default()
        }
    }

    /// Also takes `models`, in this order of preference, when no endpoint of the preferred
    /// model can take the request now.
    pub fn fallback<M: Into<Arc<str>>>(mut self, models: impl IntoIterator<Item = M>) -> Self {
        self.fallback = Some(models.into_iter().map(Into::into).collect());
        self
    }

    /// Stands for `alias`, the name the request gave: the request is sent as the model of
    /// the endpoint that takes it.
    pub fn alias(mut self, alias: impl Into<Arc<str>>) -> Self {
        self.alias = Some(alias.into());
        self
    }

    /// The models that will do, in order of preference, each once: `model`, then `fallback`.
    pub fn models(&self) -> impl Iterator<Item = &Arc<str>> + Clone + '_ {
        let fallback = self.fallback.as_deref().unwrap_or_default();
        self.model.iter().chain(
            fallback
                .iter()
                .enumerate()
                .filter(move |&(i, m)| self.model.as_ref() != Some(m) && !fallback[..i].contains(m))
                .map(|(_, m)| m),
        )
    }

    /// Whether the request must be sent as the model of the endpoint that takes it: it
    /// stands for an alias, or other models will do.
    #[inline]
    pub fn renames(&self) -> bool {
        self.alias.is_some() || self.fallback.is_some()
    }

    /// The model to send the request as when `endpoint` takes it: the first of its
    /// [`models`](Self::models) the endpoint serves. `None` when the request is sent as it is
    /// (it does not [`rename`](Self::renames)), or the endpoint serves none of them.
    pub fn serve_as(&self, endpoint: &Endpoint) -> Option<&Arc<str>> {
        if !self.renames() {
            return None;
        }
        let caps = endpoint.capabilities();
        self.models().find(|m| caps.serves_model(m))
    }

    /// The same requirements for one of the models alone.
    pub(crate) fn only(&self, model: &Arc<str>) -> Self {
        Self {
            model: Some(Arc::clone(model)),
            fallback: None,
            alias: None,
            context: self.context,
            hardware: self.hardware.clone(),
            provider: self.provider.clone(),
            region: self.region.clone(),
        }
    }

    /// Also needs a context window of `tokens`.
    pub fn context(mut self, tokens: u32) -> Self {
        self.context = Some(tokens);
        self
    }

    /// Also needs this hardware class.
    pub fn hardware(mut self, hardware: impl Into<Arc<str>>) -> Self {
        self.hardware = Some(hardware.into());
        self
    }

    /// Also needs this provider.
    pub fn provider(mut self, provider: impl Into<Arc<str>>) -> Self {
        self.provider = Some(provider.into());
        self
    }

    /// Also needs this region.
    pub fn region(mut self, region: impl Into<Arc<str>>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Whether `endpoint` meets every requirement (it serves one of the models that will do).
    /// No allocation.
    #[inline]
    pub fn admits(&self, endpoint: &Endpoint) -> bool {
        let caps = endpoint.capabilities();
        self.model.as_deref().map_or(true, |m| {
            caps.serves_model(m)
                || self
                    .fallback
                    .as_deref()
                    .is_some_and(|f| f.iter().any(|m| caps.serves_model(m)))
        }) && self
            .context
            .map_or(true, |c| caps.max_context.map_or(true, |max| max >= c))
            && matches(&self.hardware, &caps.hardware)
            && matches(&self.provider, &caps.provider)
            && matches(&self.region, &caps.region)
    }

    /// The requirement none of `endpoints` meets (the cold path after a failed pick). For a
    /// request that several models will do: what the endpoints of the first of them that some
    /// endpoint serves lack, or, when none is served at all, the model (by its alias, if it
    /// has one).
    pub fn unmet<'a>(&self, endpoints: impl Iterator<Item = &'a Endpoint> + Clone) -> Unmet {
        if self.fallback.is_none() {
            return self.unmet_alone(endpoints);
        }
        let served = |m: &Arc<str>| endpoints.clone().any(|e| e.capabilities().serves_model(m));
        match self.models().find(|m| served(m)) {
            // Judged among that model's endpoints: what they lack, not what the endpoints
            // of other models happen to have.
            Some(m) => self
                .only(m)
                .unmet_alone(endpoints.filter(|e| e.capabilities().serves_model(m))),
            None => match self.alias.as_ref().or(self.model.as_ref()) {
                Some(name) => Unmet::Model(Arc::clone(name)),
                None => self.unmet_alone(endpoints),
            },
        }
    }

    fn unmet_alone<'a>(&self, endpoints: impl Iterator<Item = &'a Endpoint> + Clone) -> Unmet {
        let none = |check: &dyn Fn(&Capabilities) -> bool| {
            !endpoints.clone().any(|e| check(&e.capabilities()))
        };
        if let Some(m) = &self.model {
            if none(&|c| c.serves_model(m)) {
                return Unmet::Model(Arc::clone(m));
            }
        }
        if let Some(t) = self.context {
            if none(&|c| c.max_context.map_or(true, |max| max >= t)) {
                return Unmet::Context(t);
            }
        }
        for (want, unmet, field) in [
            (&self.hardware, Unmet::Hardware as fn(Arc<str>) -> Unmet, 0),
            (&self.provider, Unmet::Provider, 1),
            (&self.region, Unmet::Region, 2),
        ] {
            if let Some(w) = want {
                let have = |c: &Capabilities| match field {
                    0 => c.hardware.clone(),
                    1 => c.provider.clone(),
                    _ => c.region.clone(),
                };
                if none(&|c| have(c).as_ref() == Some(w)) {
                    return unmet(Arc::clone(w));
                }
            }
        }
        Unmet::Combination
    }
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Model(m) => write!(f, "no endpoint serves model {m:?}"),
            Self::Context(t) => write!(f, "no endpoint has a context window of {t} tokens"),
            Self::Hardware(h) => write!(f, "no endpoint has hardware {h:?}"),
            Self::Provider(p) => write!(f, "no endpoint is run by {p:?}"),
            Self::Region(r) => write!(f, "no endpoint is in region {r:?}"),
            Self::Combination => f.write_str("no endpoint meets every requirement at once"),
        }
    }
}

/// No endpoint in the pool can serve the request: it names the requirement none meets.
#[derive(Debug, Clone)]
pub struct Unsatisfiable {
    unmet: Unmet,
}

impl Unsatisfiable {
    pub(crate) fn new(unmet: Unmet) -> Self {
        Self { unmet }
    }

    /// The requirement no endpoint meets.
    pub fn unmet(&self) -> &Unmet {
        &self.unmet
    }
}

impl fmt::Display for Unsatisfiable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unsatisfiable: {}", self.unmet)
    }
}

impl std::error::Error for Unsatisfiable {}
