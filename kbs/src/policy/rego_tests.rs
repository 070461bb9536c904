//! Runs the Rego tests of the shipped policies (`policies/*_test.rego`):
//! every `test_*` rule must evaluate to `true`; false or undefined fails.
//! Also checks that every shipped policy compiles for the broker.

use std::path::{Path, PathBuf};

use regorus::{Engine, Value};

use super::engine::CompiledRego;

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn shipped() -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(policies_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rego"))
        .filter(|p| !p.file_stem().unwrap().to_str().unwrap().ends_with("_test"))
        .map(|p| (p.file_stem().unwrap().to_str().unwrap().to_owned(), p))
        .collect();
    out.sort();
    out
}

fn test_rules(source: &str) -> Vec<String> {
    let mut names: Vec<String> = source
        .lines()
        .filter(|l| l.starts_with("test_"))
        .map(|l| l.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect())
        .collect();
    names.dedup();
    names
}

#[test]
fn shipped_policies_pass_their_rego_tests() {
    let policies = shipped();
    assert!(policies.iter().any(|(name, _)| name == "default"), "policies/default.rego is missing");
    let mut failures = Vec::new();
    let mut ran = 0;
    for (name, path) in &policies {
        let test_path = path.with_file_name(format!("{name}_test.rego"));
        let tests = std::fs::read_to_string(&test_path)
            .unwrap_or_else(|e| panic!("{name}.rego has no tests ({}): {e}", test_path.display()));
        let mut engine = Engine::new();
        engine.add_policy(path.display().to_string(), std::fs::read_to_string(path).unwrap()).unwrap();
        engine.add_policy(test_path.display().to_string(), tests.clone()).unwrap();
        let package = tests.lines().find_map(|l| l.strip_prefix("package ")).unwrap().trim().to_owned();
        let rules = test_rules(&tests);
        assert!(!rules.is_empty(), "{} has no test_ rules", test_path.display());
        for rule in rules {
            ran += 1;
            match engine.eval_rule(format!("data.{package}.{rule}")) {
                Ok(Value::Bool(true)) => {}
                Ok(other) => failures.push(format!("{name}: {rule} = {other}")),
                Err(e) => failures.push(format!("{name}: {rule} errs: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{} of {ran} Rego tests failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn shipped_policies_compile_for_the_broker() {
    for (name, path) in shipped() {
        if let Err(e) = CompiledRego::compile(&std::fs::read_to_string(&path).unwrap(), &Value::new_object()) {
            panic!("{name}.rego: {e}");
        }
    }
}
