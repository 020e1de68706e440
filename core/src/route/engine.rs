//! The sandboxed Rhai engine every route runs in.
//!
//! Built from `Engine::new_raw()` plus the packages routes need (arithmetic, logic,
//! strings, arrays, maps, math, iterators, function pointers). Not Rhai's
//! `LanguageCorePackage`: it brings `sleep` (which held a worker for as long as a script
//! asked), `exit` and `parse_json`, none of which a route needs. No module can be imported
//! (a dummy resolver, and `import` is disabled), `eval` is disabled, there is no clock.
//! Operations, call depth, expression depth, string, array and map sizes are limited, a
//! deadline is checked as the script runs, and the functions that could cost without
//! bound in one call are guarded ([`super::sandbox`]). `print` and `debug` go to the log,
//! with the event's secret values masked, up to `routes.max_output` bytes per run.

use rhai::{
    Dynamic, Engine, OptimizationLevel,
    module_resolvers::DummyModuleResolver,
    packages::{
        ArithmeticPackage, BasicArrayPackage, BasicFnPackage, BasicIteratorPackage,
        BasicMapPackage, BasicMathPackage, BasicStringPackage, LogicPackage, MoreStringPackage,
        Package,
    },
};

use super::{
    api::{self, Output},
    sandbox,
};
use crate::config::RoutesConfig;

/// The message a run is terminated with when its deadline passes.
pub const DEADLINE: &str = "deadline";

/// Builds the engine with the limits of `cfg` and the script API registered.
pub fn build(cfg: &RoutesConfig) -> Engine {
    let mut e = Engine::new_raw();
    e.register_global_module(ArithmeticPackage::new().as_shared_module());
    e.register_global_module(LogicPackage::new().as_shared_module());
    e.register_global_module(BasicStringPackage::new().as_shared_module());
    e.register_global_module(MoreStringPackage::new().as_shared_module());
    e.register_global_module(BasicIteratorPackage::new().as_shared_module());
    e.register_global_module(BasicArrayPackage::new().as_shared_module());
    e.register_global_module(BasicMapPackage::new().as_shared_module());
    e.register_global_module(BasicMathPackage::new().as_shared_module());
    e.register_global_module(BasicFnPackage::new().as_shared_module());
    e.set_module_resolver(DummyModuleResolver::new());
    e.disable_symbol("import");
    e.disable_symbol("eval");
    e.set_optimization_level(OptimizationLevel::Simple);

    e.set_max_operations(cfg.max_operations.max(1));
    e.set_max_call_levels(cfg.max_call_levels.max(1));
    e.set_max_expr_depths(64, 32);
    e.set_max_string_size(cfg.max_string_size.as_usize().max(1));
    e.set_max_array_size(cfg.max_collection_size.max(1));
    e.set_max_map_size(cfg.max_collection_size.max(1));
    e.set_max_variables(1_000);
    e.set_max_functions(256);

    e.on_progress(|ops| api::must_stop(ops).map(Dynamic::from));
    e.on_print(|s| api::output(Output::Print, s));
    e.on_debug(|s, _src, pos| {
        if pos.is_none() {
            api::output(Output::Debug, s);
        } else {
            api::output(Output::Debug, &format!("{s} ({pos})"));
        }
    });
    sandbox::register(&mut e, cfg.max_value_depth);
    api::register(&mut e);
    e
}
