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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Require {
    /// A model the endpoint must serve.
    pub model: Option<Arc<str>>,
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

    /// Whether `endpoint` meets every requirement. No allocation.
    #[inline]
    pub fn admits(&self, endpoint: &Endpoint) -> bool {
        let caps = endpoint.capabilities();
        self.model.as_deref().map_or(true, |m| caps.serves_model(m))
            && self
                .context
                .map_or(true, |c| caps.max_context.map_or(true, |max| max >= c))
            && matches(&self.hardware, &caps.hardware)
            && matches(&self.provider, &caps.provider)
            && matches(&self.region, &caps.region)
    }

    /// The requirement none of `endpoints` meets (the cold path after a failed pick).
    pub fn unmet<'a>(&self, endpoints: impl Iterator<Item = &'a Endpoint> + Clone) -> Unmet {
        let none = |check: &dyn Fn(&Capabilities) -> bool| {
            !endpoints.clone().any(|e| check(e.capabilities()))
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
