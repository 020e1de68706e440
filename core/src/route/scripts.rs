//! Finding, compiling and hot-reloading route scripts.
//!
//! A script is chosen for an event by its provider and type, most specific first:
//! `<provider>/<type>.rhai`, then `<provider>/_default.rhai`, then `_default.rhai`.
//! Scripts come from a directory, watched for changes (and reloaded on demand, e.g. on
//! SIGHUP), or from the set embedded in the binary. A script that fails to compile keeps
//! its last good version running; the error, with file, line and column, is kept for
//! `/readyz` and the admin API.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::SystemTime,
};

use rhai::{AST, Engine};

/// A script that failed to compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError {
    /// The script, relative to the routes directory (`pomelo/tokenization_otp.rhai`).
    pub file: String,
    /// 1-based line, if known.
    pub line: Option<usize>,
    /// 1-based column, if known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.file, self.message),
            (Some(l), None) => write!(f, "{}:{l}: {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Which script handles an event.
#[derive(Clone)]
pub enum Resolved {
    /// This one: its relative path, its compiled form and its text (for a worker process,
    /// which compiles it again).
    Script(String, Arc<AST>, Arc<str>),
    /// The most specific script that exists does not compile and has no good version.
    Broken(CompileError),
    /// No script exists for it.
    Missing,
}

impl Resolved {
    /// The script's relative path, if one exists.
    pub fn name(&self) -> Option<&str> {
        match self {
            Resolved::Script(n, _, _) => Some(n),
            Resolved::Broken(e) => Some(&e.file),
            Resolved::Missing => None,
        }
    }
}

/// Where scripts come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A directory on disk.
    Dir(PathBuf),
    /// Scripts compiled into the binary: (relative path, text).
    Embedded(&'static [(&'static str, &'static str)]),
}

type Stamp = (Option<SystemTime>, u64);

#[derive(Default)]
struct State {
    asts: BTreeMap<String, (Arc<AST>, Arc<str>)>,
    errors: BTreeMap<String, CompileError>,
    stamps: BTreeMap<String, Stamp>,
    /// Files seen changed by the last poll, with the stamp they had then: a poll loads a
    /// file only once its stamp held still since the one before, so that a file caught
    /// in the middle of being written (truncated, half there) is never compiled and kept
    /// as the last good version.
    settling: BTreeMap<String, Stamp>,
}

/// The current scripts.
pub struct Scripts {
    engine: Arc<Engine>,
    source: Source,
    state: RwLock<State>,
}

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Scripts compiled (new or changed).
    pub compiled: Vec<String>,
    /// Scripts removed.
    pub removed: Vec<String>,
    /// Scripts that failed to compile (their last good version stays).
    pub failed: Vec<CompileError>,
}

impl Reloaded {
    /// Whether anything changed.
    pub fn is_empty(&self) -> bool {
        self.compiled.is_empty() && self.removed.is_empty() && self.failed.is_empty()
    }
}

fn compile_error(file: &str, e: &rhai::ParseError) -> CompileError {
    let pos = e.position();
    CompileError {
        file: file.to_owned(),
        line: pos.line(),
        column: pos.position(),
        message: e.err_type().to_string(),
    }
}

/// Every `*.rhai` under `dir`, relative, with its stamp.
fn scan(dir: &Path) -> BTreeMap<String, (PathBuf, Stamp)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rhai") {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(rel, (path, (meta.modified().ok(), meta.len())));
            }
        }
    }
    out
}

impl Scripts {
    /// Loads every script of `source`.
    pub fn load(engine: Arc<Engine>, source: Source) -> Arc<Scripts> {
        let s = Arc::new(Scripts {
            engine,
            source,
            state: RwLock::new(State::default()),
        });
        let r = s.reload();
        for e in &r.failed {
            tracing::error!(error = %e, "route script does not compile");
        }
        s
    }

    /// The engine scripts run in.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Where scripts come from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Compiles what changed since the last load (at once: start-up, SIGHUP, an operator
    /// who says the edit is done). A script that fails keeps its last good version.
    pub fn reload(&self) -> Reloaded {
        self.reload_when(false)
    }

    /// What the poller calls: like [`Scripts::reload`], but a changed file is loaded
    /// only once it stayed the same (size and modification time) since the previous poll.
    pub fn reload_settled(&self) -> Reloaded {
        self.reload_when(true)
    }

    fn reload_when(&self, settled: bool) -> Reloaded {
        let mut r = Reloaded::default();
        let Ok(mut st) = self.state.write() else {
            return r;
        };
        match &self.source {
            Source::Embedded(files) => {
                if !st.asts.is_empty() || !st.errors.is_empty() {
                    return r;
                }
                for (name, text) in files.iter().filter(|(n, _)| n.ends_with(".rhai")) {
                    match self.engine.compile(*text) {
                        Ok(ast) => {
                            st.asts
                                .insert((*name).to_owned(), (Arc::new(ast), Arc::from(*text)));
                            r.compiled.push((*name).to_owned());
                        }
                        Err(e) => {
                            let ce = compile_error(name, &e);
                            st.errors.insert((*name).to_owned(), ce.clone());
                            r.failed.push(ce);
                        }
                    }
                }
            }
            Source::Dir(dir) => {
                let found = scan(dir);
                let gone: Vec<String> = st
                    .stamps
                    .keys()
                    .filter(|k| !found.contains_key(*k))
                    .cloned()
                    .collect();
                st.settling.retain(|k, _| found.contains_key(k));
                for name in gone {
                    st.stamps.remove(&name);
                    st.asts.remove(&name);
                    st.errors.remove(&name);
                    r.removed.push(name);
                }
                for (name, (path, stamp)) in found {
                    if st.stamps.get(&name) == Some(&stamp) {
                        st.settling.remove(&name);
                        continue;
                    }
                    if settled && st.settling.insert(name.clone(), stamp) != Some(stamp) {
                        // Changed since the last poll: loaded by the next one if it holds.
                        continue;
                    }
                    st.settling.remove(&name);
                    st.stamps.insert(name.clone(), stamp);
                    let text = match std::fs::read_to_string(&path) {
                        Ok(t) => t,
                        Err(e) => {
                            let ce = CompileError {
                                file: name.clone(),
                                line: None,
                                column: None,
                                message: format!("cannot read: {e}"),
                            };
                            st.errors.insert(name.clone(), ce.clone());
                            r.failed.push(ce);
                            continue;
                        }
                    };
                    match self.engine.compile(&text) {
                        Ok(ast) => {
                            st.asts
                                .insert(name.clone(), (Arc::new(ast), Arc::from(text.as_str())));
                            st.errors.remove(&name);
                            r.compiled.push(name);
                        }
                        Err(e) => {
                            let ce = compile_error(&name, &e);
                            st.errors.insert(name, ce.clone());
                            r.failed.push(ce);
                        }
                    }
                }
            }
        }
        r
    }

    /// Reloads and logs what changed.
    pub fn reload_and_log(&self) {
        Self::log(self.reload());
    }

    /// [`Scripts::reload_settled`], and logs what changed.
    pub fn reload_settled_and_log(&self) {
        Self::log(self.reload_settled());
    }

    fn log(r: Reloaded) {
        for name in &r.compiled {
            tracing::info!(script = %name, "route script loaded");
        }
        for name in &r.removed {
            tracing::info!(script = %name, "route script removed");
        }
        for e in &r.failed {
            tracing::error!(file = %e.file, line = e.line, column = e.column, error = %e.message, "route script does not compile; the last good version stays");
        }
    }

    /// The script for an event, most specific first. A script file that exists but has
    /// never compiled is not skipped for a less specific one: the event must wait for it.
    pub fn resolve(&self, provider: &str, event_type: &str) -> Resolved {
        let Ok(st) = self.state.read() else {
            return Resolved::Missing;
        };
        for name in [
            format!("{provider}/{event_type}.rhai"),
            format!("{provider}/_default.rhai"),
            "_default.rhai".to_owned(),
        ] {
            if let Some((ast, source)) = st.asts.get(&name) {
                return Resolved::Script(name, ast.clone(), source.clone());
            }
            if let Some(e) = st.errors.get(&name) {
                return Resolved::Broken(e.clone());
            }
        }
        Resolved::Missing
    }

    /// Whether `file` has a compiled version running (false for a script that has never
    /// compiled).
    pub fn runs(&self, file: &str) -> bool {
        self.state.read().is_ok_and(|s| s.asts.contains_key(file))
    }

    /// Scripts that do not compile now.
    pub fn errors(&self) -> Vec<CompileError> {
        self.state
            .read()
            .map(|s| s.errors.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Names of the scripts loaded.
    pub fn names(&self) -> Vec<String> {
        self.state
            .read()
            .map(|s| s.asts.keys().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoutesConfig;

    #[test]
    fn most_specific_script_wins_and_broken_edits_keep_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("p")).unwrap();
        std::fs::write(dir.path().join("_default.rhai"), "log::info(\"global\");").unwrap();
        std::fs::write(dir.path().join("p/_default.rhai"), "log::info(\"p\");").unwrap();
        std::fs::write(dir.path().join("p/t.rhai"), "log::info(\"t\");").unwrap();
        let engine = Arc::new(crate::route::engine::build(&RoutesConfig::default()));
        let s = Scripts::load(engine, Source::Dir(dir.path().to_path_buf()));
        assert_eq!(s.resolve("p", "t").name().unwrap(), "p/t.rhai");
        assert_eq!(s.resolve("p", "u").name().unwrap(), "p/_default.rhai");
        assert_eq!(s.resolve("q", "t").name().unwrap(), "_default.rhai");

        std::fs::write(dir.path().join("p/t.rhai"), "log::info(\"t\"\n  let = ;").unwrap();
        let r = s.reload();
        assert_eq!(r.failed.len(), 1);
        let e = &r.failed[0];
        assert_eq!(e.file, "p/t.rhai");
        assert_eq!(e.line, Some(2));
        assert!(e.column.is_some());
        assert!(
            matches!(s.resolve("p", "t"), Resolved::Script(n, _, _) if n == "p/t.rhai"),
            "the last good version stays"
        );
        assert_eq!(s.errors().len(), 1);

        std::fs::write(dir.path().join("p/t.rhai"), "log::info(\"fixed\");").unwrap();
        assert_eq!(s.reload().compiled, vec!["p/t.rhai".to_string()]);
        assert!(s.errors().is_empty());
        std::fs::remove_file(dir.path().join("p/t.rhai")).unwrap();
        assert_eq!(s.reload().removed, vec!["p/t.rhai".to_string()]);
        assert_eq!(s.resolve("p", "t").name().unwrap(), "p/_default.rhai");
    }

    /// An editor that truncates a file and then writes it: the poller must not compile the
    /// empty file it may catch in between and keep it as the last good version.
    #[test]
    fn the_poller_loads_a_file_only_once_it_holds_still() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("p")).unwrap();
        let file = dir.path().join("p/t.rhai");
        std::fs::write(&file, "log::info(\"v1\");").unwrap();
        let engine = Arc::new(crate::route::engine::build(&RoutesConfig::default()));
        let s = Scripts::load(engine, Source::Dir(dir.path().to_path_buf()));
        let text = |s: &Scripts| match s.resolve("p", "t") {
            Resolved::Script(_, _, source) => source.to_string(),
            _ => String::new(),
        };
        // Caught half-written (here: empty), then the whole new text.
        std::fs::write(&file, "").unwrap();
        assert!(s.reload_settled().is_empty(), "not loaded while it moves");
        std::fs::write(&file, "log::info(\"v2\"); // a longer text").unwrap();
        assert!(s.reload_settled().is_empty(), "it moved again");
        assert_eq!(text(&s), "log::info(\"v1\");", "v1 still runs");
        assert_eq!(s.reload_settled().compiled, vec!["p/t.rhai".to_string()]);
        assert_eq!(text(&s), "log::info(\"v2\"); // a longer text");
        // SIGHUP (an operator's "now") loads at once.
        std::fs::write(&file, "log::info(\"v3\");").unwrap();
        assert_eq!(s.reload().compiled, vec!["p/t.rhai".to_string()]);
    }

    #[test]
    fn a_script_that_never_compiled_holds_its_events_instead_of_falling_through() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("p")).unwrap();
        std::fs::write(dir.path().join("_default.rhai"), "log::info(\"global\");").unwrap();
        std::fs::write(dir.path().join("p/t.rhai"), "let = ;").unwrap();
        let engine = Arc::new(crate::route::engine::build(&RoutesConfig::default()));
        let s = Scripts::load(engine, Source::Dir(dir.path().to_path_buf()));
        match s.resolve("p", "t") {
            Resolved::Broken(e) => assert_eq!(e.file, "p/t.rhai"),
            _ => panic!("a broken p/t.rhai must not fall through to _default.rhai"),
        }
        assert!(!s.runs("p/t.rhai"));
        assert!(matches!(s.resolve("p", "u"), Resolved::Script(n, _, _) if n == "_default.rhai"));
        std::fs::remove_file(dir.path().join("p/t.rhai")).unwrap();
        s.reload();
        assert!(s.errors().is_empty(), "a removed file's error goes with it");
        assert!(matches!(s.resolve("p", "t"), Resolved::Script(n, _, _) if n == "_default.rhai"));
    }
}
