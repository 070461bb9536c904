//! Rego compilation and evaluation with `regorus`.
//!
//! A policy is one Rego module in package `kbs.release` that defines
//! `allow` (true to release) and may define `reasons` (a set or array of
//! strings explaining a refusal). It is compiled once, when set or when the
//! reference values change: parsed, checked, analyzed and scheduled by
//! regorus, with the reference values as its data, once with `allow` as its
//! entry point and once with `reasons`. Each evaluation starts an
//! interpreter from that compiled form (no parsing, no analysis) with the
//! request's input, under a time limit: `allow` on every request, `reasons`
//! only to explain a refusal (or when a dry run asks for them). Anything
//! but `allow == true` is a refusal; an evaluation error is a refusal too.
//!
//! Builtins whose result can be far larger than their input are bounded
//! (see [`super::bounds`]), so that no policy, uploaded or dry-run, can ask
//! for one allocation that aborts the process. Growth over many small steps
//! (comprehensions, rules that each double a value) is bounded by the heap
//! ceiling ([`set_memory_limit`], `policy.max_memory_mib`): the global
//! allocator is regorus' mimalloc, which counts every allocation per thread,
//! and the interpreter compares the process's live heap with the ceiling as
//! it iterates, so an evaluation that pushes the heap past it stops with an
//! error (a refusal) and frees what it built. A panic inside the
//! interpreter is caught and refuses the request.
//!
//! regorus' register VM (`rvm`) is faster but, in 0.14, treats a call with
//! an undefined argument under `not` as true (`x := input.missing; not
//! f(x)` succeeds), which would let a policy fail open; the interpreter is
//! used instead.

use std::num::NonZeroU32;
use std::time::Duration;

use regorus::utils::limits::{ExecutionTimerConfig, set_fallback_execution_timer_config};
use regorus::{CompiledPolicy, Engine, LimitError, Value};

/// The package every policy must declare.
pub const PACKAGE: &str = "kbs.release";
/// Largest policy source accepted.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Wall-clock limit of one evaluation, by default (`policy.eval_time_limit_ms`).
pub const EVAL_TIME_LIMIT: Duration = Duration::from_millis(200);
/// Default heap ceiling of evaluations (`policy.max_memory_mib`), in MiB.
pub const DEFAULT_MAX_MEMORY_MIB: u64 = 1024;

/// The source name of the operator's module.
const MODULE: &str = "policy.rego";
const ALLOW_RULE: &str = "data.kbs.release.allow";
const REASONS_RULE: &str = "data.kbs.release.reasons";

/// A policy compiled for evaluation, with its data. Cheap to clone;
/// evaluations share it without locks.
#[derive(Clone)]
pub struct CompiledRego {
    allow: CompiledPolicy,
    /// `None` when the policy defines no `reasons`.
    reasons: Option<CompiledPolicy>,
}

impl std::fmt::Debug for CompiledRego {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRego").finish_non_exhaustive()
    }
}

/// What a policy answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// `allow` was exactly `true`.
    pub allow: bool,
    /// The policy's reasons, as it gave them.
    pub reasons: Vec<String>,
}

/// Bounds every regorus evaluation in this process (regorus applies its
/// time limit process-wide to evaluations of compiled policies), and sets
/// the default heap ceiling unless one is set already.
fn install_limits() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        apply_time_limit();
        #[cfg(feature = "policy-heap-limit")]
        if regorus::global_memory_limit().is_none() {
            set_memory_limit(DEFAULT_MAX_MEMORY_MIB);
        }
    });
}

/// The wall-clock limit of every evaluation in this process, in ms.
static TIME_LIMIT_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(EVAL_TIME_LIMIT.as_millis() as u64);

/// Sets the wall-clock limit of every policy evaluation in this process.
pub fn set_time_limit(limit: Duration) {
    let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
    TIME_LIMIT_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
    apply_time_limit();
}

/// The clock is read at every step of the interpreter, not every 64th:
/// one step can be one arithmetic operation on integers of millions of
/// bits (each `x * x` doubles its length and costs about three times the
/// one before), so a policy of a few dozen such steps would run for hours
/// between two checks. Checked at every step, an evaluation overruns its
/// limit by at most its last step, about twice the time it had already
/// run. A clock read costs some 20 ns; see the `policy` benchmark.
fn apply_time_limit() {
    set_fallback_execution_timer_config(Some(ExecutionTimerConfig {
        limit: Duration::from_millis(TIME_LIMIT_MS.load(std::sync::atomic::Ordering::Relaxed)),
        check_interval: NonZeroU32::MIN,
    }));
}

/// Sets the heap ceiling, in MiB, of every policy compilation and
/// evaluation in this process: while the process's live heap (everything
/// the broker holds, not only the policy's values) is over it, an
/// evaluation stops with an error, which refuses its request. It is a
/// ceiling of the whole process because regorus compares one global
/// counter; the broker's own heap is a few tens of MiB at rest.
///
/// Without the `policy-heap-limit` feature (the fuzz targets) nothing is
/// counted and this does nothing.
#[cfg(feature = "policy-heap-limit")]
pub fn set_memory_limit(mib: u64) {
    regorus::set_global_memory_limit(Some(mib.saturating_mul(1 << 20)));
    // Each thread adds its count to the process's after this much change
    // (1 MiB by default); what a thread has not added when it exits is
    // lost, so a small step keeps the count close over thread churn.
    regorus::set_thread_flush_threshold_override(Some(FLUSH_BYTES));
}

/// See [`set_memory_limit`]: without the `policy-heap-limit` feature there
/// is no heap count to compare.
#[cfg(not(feature = "policy-heap-limit"))]
pub fn set_memory_limit(_mib: u64) {}

/// See [`set_memory_limit`].
#[cfg(feature = "policy-heap-limit")]
const FLUSH_BYTES: u64 = 64 * 1024;

/// An evaluation error as the refusal reports it: the heap ceiling is
/// named as a bound, anything else is regorus' message.
fn describe(e: &anyhow::Error) -> String {
    let limit = e.chain().find_map(|c| c.downcast_ref::<LimitError>());
    let text = format!("{e:#}");
    match limit {
        Some(LimitError::MemoryLimitExceeded { usage, limit }) => format!(
            "{}: the heap reached {} MiB, over policy.max_memory_mib = {} MiB",
            super::bounds::BOUND,
            usage >> 20,
            limit >> 20
        ),
        // regorus reports the limit in a rule's error as text.
        _ if text.contains("exceeded memory limit") => {
            format!("{}: the heap reached policy.max_memory_mib: {text}", super::bounds::BOUND)
        }
        _ => text,
    }
}

impl CompiledRego {
    /// Parses, checks and compiles `rego` with `data`. The error is the
    /// compiler's message, for the operator who uploaded the policy.
    pub fn compile(rego: &str, data: &Value) -> Result<Self, String> {
        install_limits();
        if rego.len() > MAX_POLICY_BYTES {
            return Err(format!("policy is {} bytes, at most {MAX_POLICY_BYTES}", rego.len()));
        }
        let mut engine = Engine::new();
        super::bounds::install(&mut engine)?;
        engine.add_policy(MODULE.into(), rego.into()).map_err(|e| format!("{e:#}"))?;
        let packages = engine.get_packages().map_err(|e| format!("{e:#}"))?;
        let wanted = format!("data.{PACKAGE}");
        if packages.iter().any(|p| p != &wanted) {
            return Err(format!("the policy must declare `package {PACKAGE}`, found {packages:?}"));
        }
        engine.add_data(data.clone()).map_err(|e| format!("{e:#}"))?;
        let defines = |rule: &str| engine.has_declared_rule_rooted_at(MODULE, rule).unwrap_or(false);
        if !defines("allow") {
            return Err(format!("the policy must define `allow` (package {PACKAGE})"));
        }
        let reasons_defined = defines("reasons");
        let allow = engine.compile_with_entrypoint(&ALLOW_RULE.into()).map_err(|e| format!("{e:#}"))?;
        let reasons = match reasons_defined {
            true => Some(engine.compile_with_entrypoint(&REASONS_RULE.into()).map_err(|e| format!("{e:#}"))?),
            false => None,
        };
        Ok(Self { allow, reasons })
    }

    /// Evaluates with `input`. The reasons are computed for a refusal, and
    /// for an allowed release only when `reasons_if_allowed` is set.
    pub fn evaluate(&self, input: Value, reasons_if_allowed: bool) -> Result<Outcome, String> {
        // A panic inside the interpreter (a regorus bug reachable from a
        // policy's text) is a refusal of this request, not a lost worker.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.evaluate_inner(input, reasons_if_allowed)))
            .unwrap_or_else(|_| Err("the policy evaluation panicked".to_owned()))
    }

    fn evaluate_inner(&self, input: Value, reasons_if_allowed: bool) -> Result<Outcome, String> {
        let allow = self.allow.eval_with_input(input.clone()).map_err(|e| describe(&e))?;
        let allow = allow == Value::Bool(true);
        let reasons = match &self.reasons {
            Some(compiled) if !allow || reasons_if_allowed => {
                match compiled.eval_with_input(input).map_err(|e| describe(&e)).and_then(|r| reasons(&r)) {
                    Ok(reasons) => reasons,
                    // A refusal whose reasons cannot be had is an error (and
                    // so still a refusal); a dry run of an allowing policy
                    // reports the decision the release path would make.
                    Err(e) if !allow => return Err(e),
                    Err(e) => vec![format!("reasons_error: {e}")],
                }
            }
            _ => Vec::new(),
        };
        Ok(Outcome { allow, reasons })
    }
}

fn reasons(value: &Value) -> Result<Vec<String>, String> {
    let text = |r: &Value| match r.as_string() {
        Ok(s) => s.to_string(),
        // A reason that is not a string is written out, within the bounds
        // of the builtins that write values out.
        Err(_) => match super::bounds::expanded(r) {
            Ok(()) => r.to_json_str().unwrap_or_else(|_| "unprintable reason".into()),
            Err(e) => format!("{}: a reason: {e}", super::bounds::BOUND),
        },
    };
    match value {
        Value::Undefined => Ok(Vec::new()),
        Value::Set(set) => Ok(set.iter().map(text).collect()),
        Value::Array(list) => Ok(list.iter().map(text).collect()),
        _ => Err("reasons is neither a set nor an array".to_owned()),
    }
}

/// Converts JSON to a regorus value.
pub fn to_value(json: serde_json::Value) -> Value {
    Value::from(json)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn eval(rego: &str, input: serde_json::Value) -> Result<Outcome, String> {
        CompiledRego::compile(rego, &Value::new_object())?.evaluate(to_value(input), true)
    }

    impl CompiledRego {
        fn compile_empty(rego: &str) -> Result<Self, String> {
            Self::compile(rego, &Value::new_object())
        }
    }

    #[test]
    fn compile_errors_carry_the_message() {
        let err = CompiledRego::compile_empty("package kbs.release\nallow if {").unwrap_err();
        assert!(!err.is_empty());
        let err = CompiledRego::compile_empty("package other\nallow := true").unwrap_err();
        assert!(err.contains("kbs.release"), "{err}");
        let err = CompiledRego::compile_empty("package kbs.release\nallow if input.x == undefined_var").unwrap_err();
        assert!(!err.is_empty());
        assert!(CompiledRego::compile_empty(&"#".repeat(MAX_POLICY_BYTES + 1)).is_err());
    }

    #[test]
    fn only_true_allows() {
        let allow = |rego: &str| eval(rego, serde_json::json!({})).unwrap().allow;
        assert!(allow("package kbs.release\nallow := true"));
        assert!(!allow("package kbs.release\nallow := \"yes\""));
        assert!(!allow("package kbs.release\nallow := 1"));
        assert!(!allow("package kbs.release\nallow if input.missing == 1"));
    }

    #[test]
    fn a_policy_without_allow_is_refused_at_upload() {
        let err = CompiledRego::compile_empty("package kbs.release\nx := 1").unwrap_err();
        assert!(err.contains("must define `allow`"), "{err}");
        // Rules whose names merely start with `allow` do not count.
        assert!(CompiledRego::compile_empty("package kbs.release\nallowed := true").is_err());
    }

    #[test]
    fn reasons_only_when_asked_or_refused() {
        let rego = "package kbs.release\nreasons contains \"note\" if true\nallow if input.ok";
        let compiled = CompiledRego::compile_empty(rego).unwrap();
        let yes = to_value(serde_json::json!({"ok": true}));
        assert_eq!(compiled.evaluate(yes.clone(), false).unwrap(), Outcome { allow: true, reasons: vec![] });
        assert_eq!(compiled.evaluate(yes, true).unwrap().reasons, vec!["note".to_owned()]);
        let no = compiled.evaluate(to_value(serde_json::json!({})), false).unwrap();
        assert_eq!(no, Outcome { allow: false, reasons: vec!["note".to_owned()] });
        // `reasons` that err: a refusal is an error; a dry run of an
        // allowing policy still allows and says why there are no reasons.
        let rego = "package kbs.release\nreasons := 1 / input.zero\nallow if input.ok";
        let compiled = CompiledRego::compile_empty(rego).unwrap();
        let allowed = compiled.evaluate(to_value(serde_json::json!({"ok": true, "zero": 0})), true).unwrap();
        assert!(allowed.allow && allowed.reasons[0].starts_with("reasons_error"), "{allowed:?}");
        assert!(compiled.evaluate(to_value(serde_json::json!({"ok": false, "zero": 0})), false).is_err());
        // No `reasons` rule at all: a refusal without reasons.
        let bare = CompiledRego::compile_empty("package kbs.release\nallow if input.ok").unwrap();
        assert_eq!(bare.evaluate(to_value(serde_json::json!({})), false).unwrap(), Outcome::default());
    }

    #[test]
    fn reasons_are_reported() {
        let rego = r#"package kbs.release
reasons contains "b_second" if true
reasons contains sprintf("a_first: %v", [input.n]) if true
allow if count(reasons) == 0
"#;
        let out = eval(rego, serde_json::json!({"n": 3})).unwrap();
        assert!(!out.allow);
        assert_eq!(out.reasons, vec!["a_first: 3".to_owned(), "b_second".to_owned()]);
    }

    /// A policy that runs far past the time limit without allocating much.
    pub(crate) const RUNAWAY: &str = "package kbs.release\nallow if count([1 | some x in numbers.range(1, 6000); some y in numbers.range(1, 6000); x == y + 7000]) > 0";

    #[test]
    fn runaway_policies_are_stopped() {
        // Tens of millions of iterations exceed the time limit: an error,
        // which the caller turns into a refusal.
        let rego = RUNAWAY;
        assert!(eval(rego, serde_json::json!({})).is_err());
    }

    /// Evaluates `rego` (which must define `allow`) and returns the error.
    fn refused(rego: &str) -> String {
        let full = format!("package kbs.release\n{rego}");
        match eval(&full, serde_json::json!({})) {
            Err(e) => e,
            Ok(out) => panic!("{rego}: evaluated to {out:?}"),
        }
    }

    #[test]
    fn builtins_that_would_allocate_without_bound_are_refused() {
        // Each of these aborted or panicked the process before: a single
        // allocation of terabytes, a division by zero, an arithmetic
        // overflow, or a non-ASCII digit in a format width.
        for rego in [
            "allow if count(numbers.range(0, 1000000000000)) > 0",
            "allow if count(numbers.range(1000000000000, 0)) > 0",
            "allow if count(numbers.range_step(0, 1000000000000, 1)) > 0",
            "allow if count(numbers.range_step(0, 10, 0)) > 0",
            "allow if count(numbers.range_step(0, 10, -1)) > 0",
            "allow if sprintf(\"%099999999999d\", [1]) != \"\"",
            "allow if sprintf(\"%0999999999d\", [1]) != \"\"",
            "allow if sprintf(\"%\u{b2}d\", [1]) != \"\"",
            "allow if sprintf(\"%.99999999d\", [1]) != \"\"",
        ] {
            let err = refused(rego);
            assert!(err.contains("kbs policy bound"), "{rego}: {err}");
        }
    }

    #[test]
    fn long_integers_are_refused_where_one_step_makes_or_writes_them() {
        // Each of these made an integer of hundreds of thousands of bits
        // in one builtin call, or wrote one out in decimal (time quadratic
        // in its length, which the time limit cannot interrupt): the same
        // calls with a larger exponent ran for minutes.
        let x = "x := bits.lsh(1, 3000)\n";
        for rego in [
            "allow if bits.lsh(1, 100000) > 0".to_owned(),
            "allow if bits.lsh(bits.lsh(1, 4000), 200) > 0".to_owned(),
            "allow if units.parse(\"1e100000\") > 0".to_owned(),
            "allow if units.parse(\"1.5E+2000Mi\") > 0".to_owned(),
            "allow if units.parse_bytes(\"1e100000\") > 0".to_owned(),
            "allow if to_number(concat(\"\", [\"9\" | some _ in numbers.range(1, 2000)])) > 0".to_owned(),
            format!("{x}allow if product([x, x]) > 0"),
            format!("{x}allow if count(format_int(x * x, 10)) > 0"),
            format!("{x}allow if count(sprintf(\"%d\", [x * x])) > 0"),
            format!("{x}allow if count(json.marshal({{\"k\": [x * x]}})) > 0"),
        ] {
            let err = refused(&rego);
            assert!(err.contains("kbs policy bound"), "{rego}: {err}");
        }
        // Within the bound, the same builtins answer.
        let ok =
            format!("package kbs.release\n{x}allow if product([x]) == x\nallow if count(sprintf(\"%d\", [x])) == 904");
        assert!(eval(&ok, serde_json::json!({})).unwrap().allow);
    }

    #[test]
    fn integers_squared_rule_after_rule_are_stopped_by_the_time_limit() {
        // Each rule squares the one before: 4,000 bits doubled 13 times is
        // 33 million bits, and the last squaring and the division take
        // seconds. The time limit was checked every 64 steps, and these 14
        // rules are fewer, so they ran to the end however long they took.
        let mut rego = String::from("package kbs.release\na0 := bits.lsh(1, 4000) + 12345\n");
        for i in 1..=13 {
            rego.push_str(&format!("a{i} := a{0} * a{0}\n", i - 1));
        }
        rego.push_str("allow if a13 % (a12 + 7) >= 0\n");
        let err = eval(&rego, serde_json::json!({})).unwrap_err();
        assert!(err.contains("time limit"), "{err}");
    }

    #[test]
    fn builtins_that_multiply_their_input_are_bounded() {
        // 64 KiB doubled by one concat is fine; the same string joined
        // 100 times, replaced into every character or split into
        // characters is past the bounds.
        let big = "s0 := concat(\"\", [\"x\" | some _ in numbers.range(1, 65536)])\n";
        let ok = format!("{big}allow if count(concat(\"\", [s0, s0])) == 131072");
        assert!(eval(&format!("package kbs.release\n{ok}"), serde_json::json!({})).unwrap().allow);
        for tail in [
            "allow if count(concat(s0, [\"a\" | some _ in numbers.range(1, 100)])) > 0",
            "allow if count(replace(s0, \"\", s0)) > 0",
            "allow if count(replace(s0, \"x\", s0)) > 0",
            "allow if count(split(concat(\"\", [s0, s0]), \"\")) > 0",
            "allow if count(sprintf(\"%v%v%v%v%v%v%v%v%v%v%v%v%v%v%v%v%v\", [s0, s0, s0, s0, s0, s0, s0, s0, s0, s0, s0, s0, s0, s0, s0, s0, s0])) > 0",
            "a0 := [1 | some _ in numbers.range(1, 60000)]\nallow if count(array.concat(a0, a0)) > 0",
            "allow if count(strings.replace_n({\"x\": s0}, s0)) > 0",
            "allow if count(json.marshal_with_options([s0], {\"indent\": s0})) > 0",
        ] {
            let err = refused(&format!("{big}{tail}"));
            assert!(err.contains("kbs policy bound"), "{tail}: {err}");
        }
    }

    #[test]
    fn values_shared_many_times_are_bounded_where_written_out() {
        // 2^22 leaves in 22 small arrays: little to hold, 75 MB written out
        // (small enough that an unguarded run cannot hurt the machine).
        let mut rules = String::from("a0 := [\"0123456789abcdef\"]\n");
        for i in 1..=22 {
            rules.push_str(&format!("a{i} := [a{0}, a{0}]\n", i - 1));
        }
        for tail in [
            "allow if count(sprintf(\"%v\", [a22])) > 0",
            "allow if count(json.marshal(a22)) > 0",
            "allow if count(object.union({\"k\": a22}, {\"k\": a22})) > 0",
            "allow if count(object.union_n([{\"k\": a22}])) > 0",
        ] {
            let err = refused(&format!("{rules}{tail}"));
            assert!(err.contains("kbs policy bound"), "{tail}: {err}");
        }
        // A reason that is such a value is not written out.
        let rego = format!("package kbs.release\n{rules}reasons contains a22 if true\nallow := false");
        let out = eval(&rego, serde_json::json!({})).unwrap();
        assert!(out.reasons[0].starts_with("kbs policy bound: a reason"), "{:?}", out.reasons);
        // Small values pass as before.
        let ok = "allow if json.marshal({\"a\": [1, \"x\"]}) == \"{\\\"a\\\":[1,\\\"x\\\"]}\"";
        assert!(eval(&format!("package kbs.release\n{ok}"), serde_json::json!({})).unwrap().allow);
    }

    #[test]
    fn bounded_builtins_answer_as_the_originals_do() {
        let cases = [
            ("numbers.range(1, 3)", serde_json::json!([1, 2, 3])),
            ("numbers.range(3, 1)", serde_json::json!([3, 2, 1])),
            ("numbers.range(2, 2)", serde_json::json!([2])),
            ("numbers.range_step(0, 10, 4)", serde_json::json!([0, 4, 8])),
            ("numbers.range_step(10, 0, 4)", serde_json::json!([10, 6, 2])),
            ("sprintf(\"%05d|%v|%s|%.2f\", [42, [1], \"a\", 1.5])", serde_json::json!("00042|[1]|a|1.50")),
            ("sprintf(\"%%\", [])", serde_json::json!("%")),
            ("concat(\", \", [\"a\", \"b\"])", serde_json::json!("a, b")),
            ("concat(\"-\", {\"b\", \"a\"})", serde_json::json!("a-b")),
            ("replace(\"aXbX\", \"X\", \"yy\")", serde_json::json!("ayybyy")),
            ("split(\"a,b\", \",\")", serde_json::json!(["a", "b"])),
            ("split(\"ab\", \"\")", serde_json::json!(["a", "b"])),
            ("array.concat([1], [2, 3])", serde_json::json!([1, 2, 3])),
            ("bits.lsh(3, 10)", serde_json::json!(3072)),
            ("product([2, 3, 4])", serde_json::json!(24)),
            ("product({2, 5})", serde_json::json!(10)),
            ("units.parse(\"1e3\")", serde_json::json!(1000)),
            ("units.parse(\"2K\")", serde_json::json!(2000)),
            ("units.parse_bytes(\"1KiB\")", serde_json::json!(1024)),
            ("to_number(\"12.5\")", serde_json::json!(12.5)),
            ("format_int(255, 16)", serde_json::json!("ff")),
            ("count(format_int(bits.lsh(1, 4000), 2))", serde_json::json!(4001)),
        ];
        for (call, want) in cases {
            let rego = format!("package kbs.release\nout := {call}\nallow if out == input.want");
            let out = eval(&rego, serde_json::json!({ "want": want })).unwrap();
            assert!(out.allow, "{call} did not give {want}");
        }
        // Undefined and type errors stay as they were.
        assert!(
            !eval("package kbs.release\nallow if count(numbers.range(1.5, 3)) > 0", serde_json::json!({}))
                .map(|o| o.allow)
                .unwrap_or(false)
        );
        assert!(
            eval("package kbs.release\nallow if concat(1, [\"a\"]) == \"a\"", serde_json::json!({}))
                .map(|o| !o.allow)
                .unwrap_or(true)
        );
    }
}
