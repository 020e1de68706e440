//! What the admin and system endpoints need from the running server, handed to them as
//! request data: the route scripts, the providers' re-parsers, and what trying a script
//! needs. Lives apart from
//! [`crate::app`] so that the endpoints do not import the assembly that imports them.

use std::sync::Arc;

use switchboard_core::{
    config::RoutesConfig,
    route::{Lookup, router::Router, scripts::Scripts},
};
use switchboard_plugins::providers::Reparsers;

/// What admin endpoints need beyond the store.
#[derive(Clone)]
pub struct AdminCtx {
    /// The route scripts.
    pub scripts: Arc<Scripts>,
    /// Every running provider's re-parser, by name: a quarantined body is parsed again on
    /// replay by the provider it came from (Verestro's decrypts it with today's keys).
    pub providers: Reparsers,
    /// The route settings (engine limits, deadline, lookups), for trying a script.
    pub routes: RoutesConfig,
    /// The named services, for a try's live lookups.
    pub lookups: Arc<dyn Lookup>,
    /// The router: a try runs where its runs go (its worker processes).
    pub router: Arc<Router>,
}
