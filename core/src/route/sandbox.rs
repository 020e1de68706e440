//! Guards on the functions of Rhai's packages that could make one call cost without
//! bound, registered over the packages' own versions (functions of the engine's global
//! namespace are found before those of its packages).
//!
//! - **Nesting.** Printing (`print`, `debug`, `to_string`, `to_debug`, interpolation,
//!   `+` with a string), comparing (`==`, `!=`, and so `contains`, `in`, `index_of`) and
//!   `to_json` of arrays and maps recurse once per level: a value nested 1,500 deep
//!   overflowed the stack. Here they first check the depth (at most
//!   `routes.max_value_depth`), without recursing deeper than that limit.
//! - **Size.** `replace` computes the length of its result before it allocates it (a
//!   16 KiB string with every character replaced by 16 KiB asked for 256 MiB in one call);
//!   `split` and `to_chars` count their pieces before they make them; printing stops at
//!   `routes.max_string_size`. (`pad` checks its length itself; `+` and `+=` of strings,
//!   arrays and maps make at most twice the limit before Rhai checks it; Rhai has no
//!   `join`, `repeat` or `sprintf`.)
//!
//! Printing cannot fail a run directly (Rhai falls back to the value's own `Display`,
//! which recurses, when a print function fails), so the printing functions write a short
//! placeholder and [`api::trip`] ends the run at its next operation with the reason.

use std::fmt::Write as _;

use rhai::{
    Array, Dynamic, Engine, EvalAltResult, ImmutableString, Map, NativeCallContext, Position,
};

use super::api;

/// Whether `v` has no more than `max` levels of arrays and maps (a scalar has 0, `[1]`
/// has 1). Recurses at most `max` levels.
pub fn depth_within(v: &Dynamic, max: usize) -> bool {
    if v.is_array() {
        if max == 0 {
            return false;
        }
        return v
            .as_array_ref()
            .map(|a| a.iter().all(|x| depth_within(x, max - 1)))
            .unwrap_or(true);
    }
    if v.is_map() {
        if max == 0 {
            return false;
        }
        return v
            .as_map_ref()
            .map(|m| m.values().all(|x| depth_within(x, max - 1)))
            .unwrap_or(true);
    }
    true
}

/// The message of a value nested too deeply for `what`.
pub fn too_deep(what: &str, max: usize) -> String {
    format!("{what}: the value is nested deeper than {max} levels (routes.max_value_depth)")
}

/// Writes `v` the way Rhai prints arrays and maps (`[1, "a"]`, `#{"k": [2]}`), stopping
/// once `out` is longer than `max_len`. `Err` names the limit that was hit.
fn write_value(
    v: &Dynamic,
    top: bool,
    out: &mut String,
    max_len: usize,
    depth_left: usize,
) -> Result<(), &'static str> {
    if let Ok(a) = v.as_array_ref() {
        write_array(&a, out, max_len, depth_left)
    } else if let Ok(m) = v.as_map_ref() {
        write_map(&m, out, max_len, depth_left)
    } else {
        if top {
            let _ = write!(out, "{v}");
        } else {
            let _ = write!(out, "{v:?}");
        }
        if out.len() > max_len {
            return Err("size");
        }
        Ok(())
    }
}

fn write_array(
    a: &Array,
    out: &mut String,
    max_len: usize,
    depth_left: usize,
) -> Result<(), &'static str> {
    let depth_left = depth_left.checked_sub(1).ok_or("depth")?;
    out.push('[');
    for (i, x) in a.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_value(x, false, out, max_len, depth_left)?;
    }
    out.push(']');
    if out.len() > max_len {
        return Err("size");
    }
    Ok(())
}

fn write_map(
    m: &Map,
    out: &mut String,
    max_len: usize,
    depth_left: usize,
) -> Result<(), &'static str> {
    let depth_left = depth_left.checked_sub(1).ok_or("depth")?;
    out.push_str("#{");
    for (i, (k, x)) in m.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{:?}: ", k.as_str());
        write_value(x, false, out, max_len, depth_left)?;
    }
    out.push('}');
    if out.len() > max_len {
        return Err("size");
    }
    Ok(())
}

/// `v` as text, within the depth and size limits, or why not.
pub fn bounded_text(v: &Dynamic, max_len: usize, max_depth: usize) -> Result<String, String> {
    let mut out = String::new();
    explain(
        write_value(v, true, &mut out, max_len, max_depth),
        max_len,
        max_depth,
    )?;
    Ok(out)
}

fn explain(r: Result<(), &'static str>, max_len: usize, max_depth: usize) -> Result<(), String> {
    match r {
        Ok(()) => Ok(()),
        Err("depth") => Err(too_deep("printing", max_depth)),
        Err(_) => Err(format!(
            "printing: the value's text is longer than {max_len} bytes (routes.max_string_size)"
        )),
    }
}

/// Text for the printing functions: on a limit, a placeholder, and the run is tripped.
fn printed(
    ctx: &NativeCallContext,
    write: impl FnOnce(&mut String, usize) -> Result<(), &'static str>,
    max_depth: usize,
) -> ImmutableString {
    let max_len = ctx.engine().max_string_size().max(1);
    let mut out = String::new();
    match explain(write(&mut out, max_len), max_len, max_depth) {
        Ok(()) => out.into(),
        Err(why) => {
            api::trip(why);
            "<not printed: over a limit>".into()
        }
    }
}

/// Whether `a == b`, for arrays and maps compared element by element (scalars through
/// the engine's own `==`), recursing at most `depth_left` levels.
fn equal(
    ctx: &NativeCallContext,
    a: &Dynamic,
    b: &Dynamic,
    depth_left: usize,
) -> Result<bool, Box<EvalAltResult>> {
    if let (Ok(x), Ok(y)) = (a.as_array_ref(), b.as_array_ref()) {
        return arrays_equal(ctx, &x, &y, depth_left);
    }
    if let (Ok(x), Ok(y)) = (a.as_map_ref(), b.as_map_ref()) {
        return maps_equal(ctx, &x, &y, depth_left);
    }
    if a.is_array() || a.is_map() || b.is_array() || b.is_map() {
        return Ok(false);
    }
    let (mut p, mut q) = (a.clone(), b.clone());
    let r = ctx.call_native_fn_raw("==", true, &mut [&mut p, &mut q])?;
    Ok(r.as_bool().unwrap_or(false))
}

fn arrays_equal(
    ctx: &NativeCallContext,
    x: &Array,
    y: &Array,
    depth_left: usize,
) -> Result<bool, Box<EvalAltResult>> {
    let depth_left = depth_left.saturating_sub(1);
    if x.len() != y.len() {
        return Ok(false);
    }
    for (p, q) in x.iter().zip(y.iter()) {
        if !equal(ctx, p, q, depth_left)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn maps_equal(
    ctx: &NativeCallContext,
    x: &Map,
    y: &Map,
    depth_left: usize,
) -> Result<bool, Box<EvalAltResult>> {
    let depth_left = depth_left.saturating_sub(1);
    if x.len() != y.len() {
        return Ok(false);
    }
    for (k, p) in x.iter() {
        match y.get(k) {
            Some(q) if equal(ctx, p, q, depth_left)? => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

fn fail(msg: String) -> Box<EvalAltResult> {
    msg.into()
}

fn items_within<'a>(mut items: impl Iterator<Item = &'a Dynamic>, max_depth: usize) -> bool {
    max_depth > 0 && items.all(|x| depth_within(x, max_depth - 1))
}

fn check_arrays(a: &Array, b: &Array, max_depth: usize) -> Result<(), Box<EvalAltResult>> {
    if items_within(a.iter(), max_depth) && items_within(b.iter(), max_depth) {
        Ok(())
    } else {
        Err(fail(too_deep("comparing", max_depth)))
    }
}

fn check_maps(a: &Map, b: &Map, max_depth: usize) -> Result<(), Box<EvalAltResult>> {
    if items_within(a.values(), max_depth) && items_within(b.values(), max_depth) {
        Ok(())
    } else {
        Err(fail(too_deep("comparing", max_depth)))
    }
}

/// The length of `s` with every `find` replaced by `sub_len` bytes (an empty `find`
/// matches before every character and at the end, as `str::replace` does).
fn replaced_len(s: &str, find: &str, sub_len: usize) -> usize {
    let n = if find.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(find).count()
    };
    (s.len() - n * find.len()).saturating_add(n.saturating_mul(sub_len))
}

fn replace_checked(
    ctx: &NativeCallContext,
    s: &mut ImmutableString,
    find: &str,
    sub: &str,
) -> Result<(), Box<EvalAltResult>> {
    if s.is_empty() {
        return Ok(());
    }
    let max = ctx.engine().max_string_size();
    if max > 0 && replaced_len(s, find, sub.len()) > max {
        return Err(EvalAltResult::ErrorDataTooLarge(
            "Length of string (replace)".into(),
            Position::NONE,
        )
        .into());
    }
    *s = s.replace(find, sub).into();
    Ok(())
}

/// An array of `n` pieces, if the engine allows that many: `make` runs only then.
fn pieces(
    ctx: &NativeCallContext,
    n: usize,
    make: impl FnOnce() -> Array,
) -> Result<Array, Box<EvalAltResult>> {
    let max = ctx.engine().max_array_size();
    if max > 0 && n > max {
        return Err(EvalAltResult::ErrorDataTooLarge(
            "Size of array (split)".into(),
            Position::NONE,
        )
        .into());
    }
    Ok(make())
}

/// Registers the guarded versions over the packages' functions.
pub fn register(e: &mut Engine, max_depth: usize) {
    for name in ["print", "to_string", "debug", "to_debug"] {
        e.register_fn(name, move |ctx: NativeCallContext, a: &mut Array| {
            printed(
                &ctx,
                |out, max| write_array(a, out, max, max_depth),
                max_depth,
            )
        });
        e.register_fn(name, move |ctx: NativeCallContext, m: &mut Map| {
            printed(
                &ctx,
                |out, max| write_map(m, out, max, max_depth),
                max_depth,
            )
        });
    }
    e.register_fn(
        "==",
        move |ctx: NativeCallContext, a: &mut Array, b: Array| {
            check_arrays(a, &b, max_depth)?;
            arrays_equal(&ctx, a, &b, max_depth)
        },
    );
    e.register_fn(
        "!=",
        move |ctx: NativeCallContext, a: &mut Array, b: Array| {
            check_arrays(a, &b, max_depth)?;
            arrays_equal(&ctx, a, &b, max_depth).map(|r| !r)
        },
    );
    e.register_fn("==", move |ctx: NativeCallContext, a: &mut Map, b: Map| {
        check_maps(a, &b, max_depth)?;
        maps_equal(&ctx, a, &b, max_depth)
    });
    e.register_fn("!=", move |ctx: NativeCallContext, a: &mut Map, b: Map| {
        check_maps(a, &b, max_depth)?;
        maps_equal(&ctx, a, &b, max_depth).map(|r| !r)
    });
    e.register_fn(
        "to_json",
        move |ctx: NativeCallContext, m: &mut Map| -> Result<String, Box<EvalAltResult>> {
            if !items_within(m.values(), max_depth) {
                return Err(fail(too_deep("to_json", max_depth)));
            }
            let json: serde_json::Value = rhai::serde::from_dynamic(&Dynamic::from_map(m.clone()))?;
            let text = json.to_string();
            let max = ctx.engine().max_string_size();
            if max > 0 && text.len() > max {
                return Err(EvalAltResult::ErrorDataTooLarge(
                    "Length of string (to_json)".into(),
                    Position::NONE,
                )
                .into());
            }
            Ok(text)
        },
    );
    // `split` and `to_chars` make one string per piece: counted before they are made (a
    // string as large as `max_string_size` allows could hold a billion pieces).
    e.register_fn(
        "split",
        |ctx: NativeCallContext, s: &mut ImmutableString, d: &str| {
            if s.is_empty() || (!d.is_empty() && !s.contains(d)) {
                return Ok(vec![s.clone().into()]);
            }
            let n = if d.is_empty() {
                s.chars().count() + 2
            } else {
                s.matches(d).count() + 1
            };
            pieces(&ctx, n, || s.split(d).map(Into::into).collect())
        },
    );
    e.register_fn(
        "split",
        |ctx: NativeCallContext, s: &mut ImmutableString, d: char| {
            if s.is_empty() || !s.contains(d) {
                return Ok(vec![s.clone().into()]);
            }
            let n = s.matches(d).count() + 1;
            pieces(&ctx, n, || s.split(d).map(Into::into).collect())
        },
    );
    e.register_fn(
        "split",
        |ctx: NativeCallContext, s: &mut ImmutableString| {
            if s.is_empty() {
                return Ok(vec![s.clone().into()]);
            }
            let n = s.split_whitespace().count();
            pieces(&ctx, n, || s.split_whitespace().map(Into::into).collect())
        },
    );
    e.register_fn("to_chars", |ctx: NativeCallContext, s: &str| {
        pieces(&ctx, s.chars().count(), || {
            s.chars().map(Into::into).collect()
        })
    });
    e.register_fn(
        "replace",
        |ctx: NativeCallContext, s: &mut ImmutableString, find: &str, sub: &str| {
            replace_checked(&ctx, s, find, sub)
        },
    );
    e.register_fn(
        "replace",
        |ctx: NativeCallContext, s: &mut ImmutableString, find: &str, sub: char| {
            replace_checked(&ctx, s, find, &sub.to_string())
        },
    );
    e.register_fn(
        "replace",
        |ctx: NativeCallContext, s: &mut ImmutableString, find: char, sub: &str| {
            replace_checked(&ctx, s, &find.to_string(), sub)
        },
    );
    e.register_fn(
        "replace",
        |ctx: NativeCallContext, s: &mut ImmutableString, find: char, sub: char| {
            replace_checked(&ctx, s, &find.to_string(), &sub.to_string())
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> Dynamic {
        let mut v = Dynamic::from_int(1);
        for _ in 0..depth {
            v = Dynamic::from_array(vec![v]);
        }
        v
    }

    #[test]
    fn depth_is_measured_without_recursing_past_the_limit() {
        assert!(depth_within(&Dynamic::from_int(1), 0));
        assert!(depth_within(&nested(3), 3));
        assert!(!depth_within(&nested(4), 3));
        // Deep enough to overflow a recursive walk; the check stops at the limit.
        assert!(!depth_within(&nested(2_000), 64));
    }

    #[test]
    fn printing_matches_rhai_and_stops_at_its_limits() {
        let mut m = Map::new();
        m.insert(
            "k".into(),
            Dynamic::from_array(vec![2.into(), "a\n".into()]),
        );
        let v = Dynamic::from_array(vec![1.into(), Dynamic::from_map(m)]);
        assert_eq!(
            bounded_text(&v, 1000, 8).unwrap(),
            r#"[1, #{"k": [2, "a\n"]}]"#
        );
        assert!(
            bounded_text(&nested(10), 1000, 8)
                .unwrap_err()
                .contains("deeper than 8")
        );
        let big = Dynamic::from_array(vec!["x".repeat(600).into(); 2]);
        assert!(
            bounded_text(&big, 1000, 8)
                .unwrap_err()
                .contains("longer than 1000")
        );
    }

    #[test]
    fn replace_knows_its_result_size_before_allocating() {
        assert_eq!(replaced_len("aaaa", "a", 3), 12);
        assert_eq!(replaced_len("abc", "", 1), 7);
        assert_eq!(replaced_len("abab", "ab", 0), 0);
        assert_eq!(replaced_len("xyz", "q", 100), 3);
        let s = "a".repeat(16 * 1024);
        assert_eq!(replaced_len(&s, "a", 16 * 1024), 256 << 20);
    }
}
