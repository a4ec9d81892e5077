//! The pick for a request that several models will do (a model alias and its variants): the
//! endpoints of each model in turn, the preferred model first, and the model the chosen
//! endpoint serves the request as.
//!
//! A request without an alias never comes here: `Chooser::try_pick` sends only requests whose
//! [`Require`] [renames](Require::renames) them, so the common pick is unchanged.

use http::Extensions;

use super::choose::{unsatisfiable, why_no_slot, Acquire, Choice, Chooser, How, NoSlot};
use crate::{hints::Require, load::LoadGuard, pick::Filter, pool::Snapshot};

impl<S: Clone> Chooser<S> {
    /// Picks for a request that several models will do, in the same stages as a request for
    /// one model, each stage trying the models in order of preference before the next stage:
    /// an endpoint that takes traffic and has room (lowest tier first within each model); then
    /// one held back by a soft ejection; then, if no endpoint in the pool could ever serve,
    /// [`Unsatisfiable`](crate::capability::Unsatisfiable); then, if health leaves none and
    /// panic mode is on, one whatever its health. So a model whose endpoints are all ejected
    /// or full gives way to the next, and only when none can serve does the request wait,
    /// fail or go to an unhealthy endpoint.
    ///
    /// `filter` holds the whole requirement, which admits an endpoint of any of the models;
    /// each model's own endpoints (its precomputed partition) are what each try draws from.
    #[cold]
    #[inline(never)]
    pub(super) fn try_variants(
        &self,
        all: &Snapshot<S>,
        hints: &Extensions,
        require: &Require,
        filter: Filter<'_>,
        how: How<'_>,
    ) -> Result<Choice<S>, NoSlot> {
        let acquire = LoadGuard::acquire_at as Acquire;
        if let Some(picked) = self.first_model(all, require, &filter, how, acquire) {
            self.pool.note_panic(false);
            return Ok(self.chosen(hints, require, picked));
        }
        let filter = filter.include_held();
        if let Some(picked) = self.first_model(all, require, &filter, how, acquire) {
            return Ok(self.chosen(hints, require, picked));
        }
        if let Some(unmet) = unsatisfiable(all, require) {
            return Err(NoSlot::Unavailable(unmet.into()));
        }
        match why_no_slot(all, &filter) {
            NoSlot::Unavailable(_) if self.config.panic_mode => {
                let filter = filter.ignore_health();
                let acquire = LoadGuard::acquire_any_at as Acquire;
                let picked = self.first_model(all, require, &filter, how, acquire);
                self.pool.note_panic(picked.is_some());
                picked
                    .map(|p| self.chosen(hints, require, p))
                    .ok_or_else(|| why_no_slot(all, &filter))
            }
            why => Err(why),
        }
    }

    /// A slot on an endpoint of the first model, in order of preference, that has one.
    fn first_model(
        &self,
        all: &Snapshot<S>,
        require: &Require,
        filter: &Filter<'_>,
        how: How<'_>,
        acquire: Acquire,
    ) -> Option<(S, LoadGuard)> {
        require
            .models()
            .find_map(|model| self.pick_in(all.for_model(model), filter, how, acquire))
    }

    /// The choice, with the model the chosen endpoint serves the request as.
    fn chosen(&self, hints: &Extensions, require: &Require, picked: (S, LoadGuard)) -> Choice<S> {
        let mut choice = self.picked(hints, picked);
        choice.serve_as = require.serve_as(choice.guard.endpoint()).cloned();
        choice
    }
}
