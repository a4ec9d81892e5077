//! [`MeteringLayer`]: wraps a service in [`Metering`].

use tower_layer::Layer;

use super::Metering;

/// Builds [`Metering`]: counts the tokens of each answer at the endpoint that gave it.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeteringLayer {
    _private: (),
}

impl MeteringLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for MeteringLayer {
    type Service = Metering<S>;

    fn layer(&self, inner: S) -> Metering<S> {
        Metering::new(inner)
    }
}
