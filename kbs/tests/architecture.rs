//! The import rules of ARCHITECTURE.md, checked by reading the source tree.
//!
//! 1. Verifier modules are pure: no network, file system or clock, no
//!    transport (tonic), no store, API or server code, and neither the
//!    modules that fetch and cache collateral nor the fetch toolkit.
//! 2. `attester-client` does not depend on `kbs`.
//! 3. The top-level modules of `kbs/src` import each other without cycles.
//! 4. Each top-level module imports only modules of lower layers
//!    ([`LAYERS`], the rooms of ARCHITECTURE.md).
//! 5. Reason codes, names and the error type know no transport: the gRPC
//!    and HTTP maps live with the front ends.
//!
//! Code under `#[cfg(test)]` is not checked. A break of rule 1 or 4 that
//! cannot be fixed at once is listed below as a named exception with the
//! issue that removes it; the test fails for any break not listed and for a
//! listed one that is gone, so the lists can only shrink. Both lists are
//! empty today (issue 15 removed the last ones).
//!
//! The scan is lexical: comments, strings and character literals are
//! dropped, `use` trees are expanded (groups, `self`, `super`, `crate`),
//! and every other `a::b` path in the code is read as written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The verifiers: evidence and certificates in, verified claims out.
const VERIFIERS: &[&str] = &[
    "evidence",
    "evidence::snp",
    "evidence::tdx",
    "evidence::certtable",
    "evidence::anchors",
    "evidence::amd_crl",
    "evidence::bounded",
    "evidence::tdx_collateral",
    "evidence::gpu",
    "evidence::gpu::chain",
    "evidence::gpu::der",
    "evidence::gpu::ocsp",
    "evidence::gpu::reader",
    "evidence::gpu::rim",
    "evidence::gpu::set",
    "evidence::gpu::spdm",
];

/// What a verifier must not reach, as path segments anywhere in a path
/// (`std::fs`, `crate::store::vault::x`, `time::OffsetDateTime::now_utc`).
const VERIFIER_FORBIDDEN: &[&str] = &[
    "reqwest",
    "tokio::fs",
    "tokio::net",
    "std::fs",
    "std::net",
    "tonic",
    "axum",
    "crate::store",
    "crate::api",
    "crate::server",
    "crate::release",
    "crate::config",
    "crate::evidence::collateral",
    "crate::evidence::pcs",
    "crate::fetch",
    "SystemTime::now",
    "Instant::now",
    "OffsetDateTime::now_utc",
];

/// Known breaks of rule 1 (module, forbidden path), each with the issue
/// that removes it. None today.
const VERIFIER_EXCEPTIONS: &[(&str, &str)] = &[];

/// The layers of `kbs/src`, lowest first: a top-level module may import
/// only modules of lower layers. A new top-level module must be placed here
/// (and in ARCHITECTURE.md).
const LAYERS: &[&[&str]] = &[
    // Leaves: vocabulary and helpers every layer shares.
    &["reason", "names", "fetch", "keyfile", "rate", "telemetry"],
    // The domain: challenges, verification, secret storage, the audit log;
    // the metrics every layer above records; TLS session tickets; the
    // admission of inbound connections (which asks the rate limits).
    &["audit", "challenge", "evidence", "store", "metrics", "tickets", "connections"],
    // The error type that composes theirs.
    &["error"],
    // Sealing and the release policy.
    &["seal", "policy"],
    // The release flow every front end shares; configuration.
    &["release", "config"],
    // Front ends: gRPC services, the CoCo REST front end.
    &["api"],
    // Wiring: building and serving; `kbs dev-init`.
    &["server", "dev"],
];

/// Known imports against [`LAYERS`] (from, to), each with the issue that
/// removes it. None today.
const LAYER_EXCEPTIONS: &[(&str, &str)] = &[];

#[test]
fn verifiers_are_pure() {
    let tree = SourceTree::read();
    let mut found: BTreeMap<(String, String), String> = BTreeMap::new();
    for file in &tree.files {
        if !VERIFIERS.contains(&file.module.as_str()) {
            continue;
        }
        for path in &file.paths {
            for forbidden in VERIFIER_FORBIDDEN {
                if contains_segments(path, forbidden) {
                    found.entry((file.module.clone(), (*forbidden).to_owned())).or_insert_with(|| path.clone());
                }
            }
        }
    }
    let known: BTreeSet<(String, String)> =
        VERIFIER_EXCEPTIONS.iter().map(|(m, f)| ((*m).to_owned(), (*f).to_owned())).collect();
    let new: Vec<String> = found
        .iter()
        .filter(|(key, _)| !known.contains(*key))
        .map(|((module, forbidden), path)| format!("{module} uses {forbidden} ({path})"))
        .collect();
    let gone: Vec<String> = known
        .iter()
        .filter(|key| !found.contains_key(*key))
        .map(|(module, forbidden)| format!("{module} no longer uses {forbidden}: remove the exception"))
        .collect();
    assert!(new.is_empty() && gone.is_empty(), "verifier purity:\n{}", [new, gone].concat().join("\n"));
}

/// Modules that must not name a transport, and the transports.
const TRANSPORT_FREE: &[&str] = &["reason", "names", "error"];
const TRANSPORTS: &[&str] = &["tonic", "axum", "http", "hyper"];

#[test]
fn reason_codes_and_errors_know_no_transport() {
    let tree = SourceTree::read();
    let mut checked = 0;
    let mut problems = Vec::new();
    for file in tree.files.iter().filter(|f| TRANSPORT_FREE.contains(&f.module.as_str())) {
        checked += 1;
        for path in &file.paths {
            if TRANSPORTS.iter().any(|t| path.split("::").next() == Some(*t)) {
                problems.push(format!("{} uses {path}", file.module));
            }
        }
    }
    assert_eq!(checked, TRANSPORT_FREE.len(), "a module of TRANSPORT_FREE is missing");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn attester_client_does_not_depend_on_kbs() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../attester-client/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let manifest: toml::Table = text.parse().unwrap();
    let mut tables = Vec::new();
    dependency_tables(&manifest, &mut tables);
    assert!(tables.len() >= 2, "no dependency tables found in {manifest:?}");
    for (section, deps) in tables {
        for (key, spec) in deps {
            let package = spec.get("package").and_then(toml::Value::as_str).unwrap_or(key.as_str());
            assert_ne!(package, "kbs", "attester-client [{section}] depends on kbs");
        }
    }
}

#[test]
fn top_level_modules_have_no_cycles() {
    let tree = SourceTree::read();
    let graph = tree.top_level_graph();
    assert!(graph.contains_key("evidence") && graph.contains_key("api"), "{graph:?}");
    let cycles: Vec<Vec<String>> = strongly_connected(&graph).into_iter().filter(|c| c.len() > 1).collect();
    let problems: Vec<String> = cycles
        .iter()
        .map(|cycle| {
            let edges: Vec<String> = cycle
                .iter()
                .flat_map(|from| {
                    graph[from]
                        .iter()
                        .filter(|(to, _)| cycle.contains(to))
                        .map(move |(to, why)| format!("  {from} -> {to} ({why})"))
                })
                .collect();
            format!("cycle {cycle:?}:\n{}", edges.join("\n"))
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn top_level_modules_import_only_lower_layers() {
    let tree = SourceTree::read();
    let graph = tree.top_level_graph();
    let layer_of = |module: &str| LAYERS.iter().position(|layer| layer.contains(&module));
    let mut problems = Vec::new();
    let mut found = BTreeSet::new();
    for (from, edges) in &graph {
        let Some(from_layer) = layer_of(from) else {
            problems.push(format!("top-level module {from} is in no layer: add it to LAYERS and ARCHITECTURE.md"));
            continue;
        };
        for (to, why) in edges {
            if layer_of(to).is_none_or(|to_layer| to_layer >= from_layer) {
                if LAYER_EXCEPTIONS.contains(&(from.as_str(), to.as_str())) {
                    found.insert((from.as_str(), to.as_str()));
                } else {
                    problems.push(format!("{from} may not import {to} ({why})"));
                }
            }
        }
    }
    for (from, to) in LAYER_EXCEPTIONS {
        if !found.contains(&(*from, *to)) {
            problems.push(format!("{from} no longer imports {to}: remove the exception"));
        }
    }
    for layer in LAYERS {
        for module in *layer {
            if !graph.contains_key(*module) {
                problems.push(format!("LAYERS names {module}, which is not a module of kbs/src"));
            }
        }
    }
    assert!(problems.is_empty(), "layers:\n{}", problems.join("\n"));
}

#[test]
fn the_scanner_reads_what_rust_means() {
    let file = SourceFile::parse(
        "evidence::snp",
        r##"
        //! use crate::store::nope;
        use std::{fs, io::{self, Read}};
        use super::{anchors::{self, X as Y}, Claims};
        pub(crate) use crate::api::admin::*;
        /* crate::server::block */
        fn f<'a>(x: &'a str) -> char {
            let _ = "crate::config::string";
            let _ = r#"crate::release::raw"#;
            let _ = std::time::SystemTime::now();
            crate::store::vault::is_loopback(x);
            '"'
        }
        #[cfg(test)]
        mod tests {
            use crate::policy::hidden;
        }
        #[cfg(test)]
        mod more_tests;
        "##,
    );
    let paths: BTreeSet<&str> = file.paths.iter().map(String::as_str).collect();
    for expected in [
        "std::fs",
        "std::io",
        "std::io::Read",
        "crate::evidence::anchors",
        "crate::evidence::anchors::X",
        "crate::evidence::Claims",
        "crate::api::admin::*",
        "std::time::SystemTime::now",
        "crate::store::vault::is_loopback",
    ] {
        assert!(paths.contains(expected), "{expected} not in {paths:?}");
    }
    for absent in ["store::nope", "server::block", "config::string", "release::raw", "policy::hidden"] {
        assert!(!paths.iter().any(|p| p.contains(absent)), "{absent} in {paths:?}");
    }
    assert_eq!(file.test_only_children, vec!["more_tests".to_owned()]);
    assert!(contains_segments("std::time::SystemTime::now", "SystemTime::now"));
    assert!(contains_segments("crate::store", "crate::store"));
    assert!(!contains_segments("crate::storefront", "crate::store"));
    let graph: BTreeMap<String, BTreeMap<String, String>> =
        [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")].into_iter().fold(BTreeMap::new(), |mut g, (from, to)| {
            g.entry(from.to_owned()).or_default().insert(to.to_owned(), String::new());
            g
        });
    assert_eq!(strongly_connected(&graph), vec![vec!["a".to_owned(), "b".into(), "c".into()], vec!["d".to_owned()]]);
}

/// Whether `path` holds the segments of `pattern` in a row.
fn contains_segments(path: &str, pattern: &str) -> bool {
    let path: Vec<&str> = path.split("::").collect();
    let pattern: Vec<&str> = pattern.split("::").collect();
    path.windows(pattern.len()).any(|w| w == pattern.as_slice())
}

/// Every `*dependencies` table of a manifest, target-specific ones included.
fn dependency_tables<'a>(table: &'a toml::Table, out: &mut Vec<(String, &'a toml::Table)>) {
    for (key, value) in table {
        if let toml::Value::Table(inner) = value {
            if key.ends_with("dependencies") {
                out.push((key.clone(), inner));
            } else {
                dependency_tables(inner, out);
            }
        }
    }
}

/// Tarjan's strongly connected components, each sorted, in sorted order.
fn strongly_connected(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g BTreeMap<String, BTreeMap<String, String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flat_map(BTreeMap::keys) {
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let low = s.low[v].min(s.low[w.as_str()]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w.as_str()) {
                let low = s.low[v].min(s.index[w.as_str()]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            component.sort();
            s.out.push(component);
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys().chain(graph.values().flat_map(BTreeMap::keys)) {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    let mut out = s.out;
    out.sort();
    out
}

/// The library's source files (not the binaries, not test-only modules).
struct SourceTree {
    files: Vec<SourceFile>,
}

impl SourceTree {
    fn read() -> Self {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut paths = Vec::new();
        collect_rs(&src, &mut paths);
        let mut files = Vec::new();
        for path in paths {
            let relative = path.strip_prefix(&src).unwrap();
            if relative.starts_with("bin") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            files.push(SourceFile::parse(&module_of(relative), &text));
        }
        let test_only: BTreeSet<String> =
            files.iter().flat_map(|f| f.test_only_children.iter().map(|c| join_module(&f.module, c))).collect();
        files.retain(|f| !test_only.contains(&f.module));
        // `use child::x` in a module resolves to its child module.
        let modules: BTreeSet<String> = files.iter().map(|f| f.module.clone()).collect();
        for file in &mut files {
            for path in &mut file.paths {
                let first = path.split("::").next().unwrap_or_default();
                if first != "crate" && modules.contains(&join_module(&file.module, first)) {
                    *path = format!("crate::{}", join_module(&file.module, path));
                }
            }
        }
        assert!(files.len() > 20, "found only {} source files under {}", files.len(), src.display());
        Self { files }
    }

    /// Top-level module -> (imported top-level module -> one example path).
    fn top_level_graph(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let top: BTreeSet<&str> =
            self.files.iter().filter_map(|f| f.module.split("::").next()).filter(|m| !m.is_empty()).collect();
        let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for file in &self.files {
            let Some(from) = file.module.split("::").next().filter(|m| !m.is_empty()) else { continue };
            let edges = graph.entry(from.to_owned()).or_default();
            for path in &file.paths {
                let Some(rest) = path.strip_prefix("crate::") else { continue };
                let to = rest.split("::").next().unwrap_or_default();
                if to != from && top.contains(to) {
                    edges.entry(to.to_owned()).or_insert_with(|| format!("{}: {path}", file.module));
                }
            }
        }
        graph
    }
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `api/coco/jwe.rs` -> `api::coco::jwe`; `evidence/mod.rs` -> `evidence`; `lib.rs` -> ``.
fn module_of(relative: &Path) -> String {
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" && stem != "lib" {
            parts.push(stem.to_owned());
        }
    }
    parts.join("::")
}

fn join_module(parent: &str, child: &str) -> String {
    if parent.is_empty() { child.to_owned() } else { format!("{parent}::{child}") }
}

/// One file: its module and every path it names outside test-only code,
/// with `crate`/`super`/`self` resolved to `crate::...`.
struct SourceFile {
    module: String,
    paths: Vec<String>,
    /// `#[cfg(test)] mod x;` children, whose files are test-only.
    test_only_children: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Punct(char),
}

impl SourceFile {
    fn parse(module: &str, text: &str) -> Self {
        let tokens = tokenize(text);
        let mut test_only_children = Vec::new();
        let tokens = drop_test_items(&tokens, &mut test_only_children);
        let mut raw_paths: Vec<Vec<String>> = Vec::new();
        let mut rest = Vec::new();
        let mut i = 0;
        while i < tokens.len() {
            if tokens[i] == Token::Ident("use".into()) {
                let end = tokens[i..].iter().position(|t| *t == Token::Punct(';')).map_or(tokens.len(), |p| i + p);
                let mut tree = &tokens[i + 1..end];
                if tree.first() == Some(&Token::PathSep) {
                    tree = &tree[1..];
                }
                expand_use(&[], tree, &mut raw_paths);
                i = end + 1;
            } else {
                rest.push(tokens[i].clone());
                i += 1;
            }
        }
        let mut i = 0;
        while i < rest.len() {
            if let Token::Ident(first) = &rest[i] {
                let mut path = vec![first.clone()];
                let mut j = i + 1;
                while let (Some(Token::PathSep), Some(Token::Ident(next))) = (rest.get(j), rest.get(j + 1)) {
                    path.push(next.clone());
                    j += 2;
                }
                if path.len() > 1 && !(i > 0 && rest[i - 1] == Token::PathSep) {
                    raw_paths.push(path);
                }
                i = j;
            } else {
                i += 1;
            }
        }
        let paths = raw_paths.into_iter().filter_map(|p| resolve(module, &p)).collect();
        Self { module: module.to_owned(), paths, test_only_children }
    }
}

/// Resolves `crate`, `self` and `super` against `module`; other paths are
/// kept as written.
fn resolve(module: &str, path: &[String]) -> Option<String> {
    let mut base: Vec<&str> = if module.is_empty() { Vec::new() } else { module.split("::").collect() };
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return Some(path.join("::")),
    }
    let mut out = vec!["crate"];
    out.extend(base);
    out.extend(rest.iter().map(String::as_str));
    Some(out.join("::"))
}

/// Expands a `use` tree (without `use` and `;`) into full paths.
fn expand_use(prefix: &[String], tree: &[Token], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    let mut i = 0;
    while i < tree.len() {
        match &tree[i] {
            Token::Ident(name) if name == "as" => break,
            Token::Ident(name) if name == "self" && !path.is_empty() && i + 1 == tree.len() => {}
            Token::Ident(name) => path.push(name.clone()),
            Token::Punct('*') => path.push("*".into()),
            Token::Punct('{') => {
                let close = matching(tree, i).unwrap_or(tree.len());
                for part in split_top_level(&tree[i + 1..close]) {
                    expand_use(&path, part, out);
                }
                return;
            }
            _ => {}
        }
        i += 1;
    }
    // (`self` in a group leaves the prefix itself.)
    if !path.is_empty() {
        out.push(path);
    }
}

fn split_top_level(tokens: &[Token]) -> Vec<&[Token]> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => depth = depth.saturating_sub(1),
            Token::Punct(',') if depth == 0 => {
                parts.push(&tokens[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&tokens[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// The index of the brace that closes the one at `open`.
fn matching(tokens: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Drops every item marked `#[cfg(test)]`; records test-only `mod x;`.
fn drop_test_items(tokens: &[Token], children: &mut Vec<String>) -> Vec<Token> {
    let cfg_test: Vec<Token> = vec![
        Token::Punct('#'),
        Token::Punct('['),
        Token::Ident("cfg".into()),
        Token::Punct('('),
        Token::Ident("test".into()),
        Token::Punct(')'),
        Token::Punct(']'),
    ];
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if !tokens[i..].starts_with(&cfg_test) {
            out.push(tokens[i].clone());
            i += 1;
            continue;
        }
        i += cfg_test.len();
        // Further attributes on the same item.
        while tokens.get(i) == Some(&Token::Punct('#')) && tokens.get(i + 1) == Some(&Token::Punct('[')) {
            let mut depth = 0usize;
            i += 1;
            while i < tokens.len() {
                match tokens[i] {
                    Token::Punct('[') => depth += 1,
                    Token::Punct(']') => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        // The item: up to a `;` outside brackets, or through its body.
        let start = i;
        let mut depth = 0usize;
        while i < tokens.len() {
            match tokens[i] {
                Token::Punct('(' | '[') => depth += 1,
                Token::Punct(')' | ']') => depth = depth.saturating_sub(1),
                Token::Punct(';') if depth == 0 => {
                    if let [.., Token::Ident(m), Token::Ident(name)] = &tokens[start..i]
                        && m == "mod"
                    {
                        children.push(name.clone());
                    }
                    i += 1;
                    break;
                }
                Token::Punct('{') if depth == 0 => {
                    i = matching(tokens, i).map_or(tokens.len(), |c| c + 1);
                    break;
                }
                _ => {}
            }
            i += 1;
        }
    }
    out
}

/// Identifiers, `::` and single punctuation; comments, strings, character
/// literals, lifetimes and numbers are dropped.
fn tokenize(text: &str) -> Vec<Token> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0usize;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = skip_string(&c, i);
        } else if (ch == 'r' || ch == 'b') && raw_string_start(&c, i).is_some() {
            i = skip_raw_string(&c, raw_string_start(&c, i).unwrap_or(i));
        } else if ch == 'b' && next == Some('"') {
            i = skip_string(&c, i + 1);
        } else if ch == '\'' {
            if next == Some('\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                // A lifetime or label: skip its name.
                i += 1;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
            }
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let mut ident: String = c[start..i].iter().collect();
            if ident == "r" && c.get(i) == Some(&'#') {
                // A raw identifier, r#name.
                i += 1;
                let start = i;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
                ident = c[start..i].iter().collect();
            }
            out.push(Token::Ident(ident));
        } else if ch == ':' && next == Some(':') {
            out.push(Token::PathSep);
            i += 2;
        } else {
            if !ch.is_whitespace() {
                out.push(Token::Punct(ch));
            }
            i += 1;
        }
    }
    out
}

/// Skips a `"..."` string starting at `i`; returns the index after it.
fn skip_string(c: &[char], mut i: usize) -> usize {
    i += 1;
    while i < c.len() {
        match c[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// If `r"`, `r#"`, `br"`, `br#"` starts at `i` (and is not inside an
/// identifier), the index of its `r`.
fn raw_string_start(c: &[char], i: usize) -> Option<usize> {
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return None;
    }
    let r = if c[i] == 'b' { i + 1 } else { i };
    if c.get(r) != Some(&'r') {
        return None;
    }
    let mut j = r + 1;
    while c.get(j) == Some(&'#') {
        j += 1;
    }
    (c.get(j) == Some(&'"')).then_some(r)
}

fn skip_raw_string(c: &[char], r: usize) -> usize {
    let mut j = r + 1;
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    j += 1;
    while j < c.len() {
        if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
            return j + 1 + hashes;
        }
        j += 1;
    }
    j
}
