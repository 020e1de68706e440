//! The sandboxed Rhai engine every route runs in.
//!
//! Built from `Engine::new_raw()` plus the packages routes need (core language,
//! arithmetic, logic, strings, arrays, maps, math, iterators); no module can be imported
//! (a dummy resolver, and `import` is disabled), `eval` is disabled, there is no `sleep`
//! or clock. Operations, call depth, expression depth, string, array and map sizes are
//! limited, and a deadline is checked as the script runs. `print` and `debug` go to the log,
//! with the event's secret values masked.

use rhai::{
    Dynamic, Engine, OptimizationLevel,
    module_resolvers::DummyModuleResolver,
    packages::{
        ArithmeticPackage, BasicArrayPackage, BasicFnPackage, BasicIteratorPackage,
        BasicMapPackage, BasicMathPackage, BasicStringPackage, LanguageCorePackage, LogicPackage,
        MoreStringPackage, Package,
    },
};

use super::api;
use crate::config::RoutesConfig;

/// The message a run is terminated with when its deadline passes.
pub const DEADLINE: &str = "deadline";

/// Builds the engine with the limits of `cfg` and the script API registered.
pub fn build(cfg: &RoutesConfig) -> Engine {
    let mut e = Engine::new_raw();
    e.register_global_module(LanguageCorePackage::new().as_shared_module());
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

    e.on_progress(|ops| {
        // Checking the clock every 256 operations keeps the cost negligible.
        if ops % 256 == 0 && api::past_deadline() {
            Some(Dynamic::from(DEADLINE))
        } else {
            None
        }
    });
    e.on_print(|s| tracing::info!(script = %api::current_script(), output = %api::mask_for_log(s), "script print"));
    e.on_debug(|s, _src, pos| {
        tracing::debug!(script = %api::current_script(), position = %pos, output = %api::mask_for_log(s), "script debug");
    });
    api::register(&mut e);
    e
}
