//! [`Model`]: what a request says of the model it is sent for, kept until its answer names
//! the endpoint that took it.

use std::sync::Arc;

use crate::capability::Require;

/// What a request says of its model: the one it needs, or all that will do when it is sent
/// as the model of the endpoint that takes it.
#[derive(Debug, Clone, Default)]
pub(crate) enum Model {
    #[default]
    Unnamed,
    Named(Arc<str>),
    ServedAs(Box<Require>),
}

impl Model {
    pub(crate) fn of(require: Option<&Require>) -> Self {
        match require {
            Some(r) if r.renames() => Self::ServedAs(Box::new(r.clone())),
            Some(Require {
                model: Some(model), ..
            }) => Self::Named(Arc::clone(model)),
            _ => Self::Unnamed,
        }
    }
}
