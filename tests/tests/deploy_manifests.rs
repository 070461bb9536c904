//! The Kubernetes material in `deploy/`: every YAML document parses and is a
//! well-formed object, every kustomization names files that exist, the
//! broker's ConfigMap holds a configuration the broker accepts, the
//! init-data documents are valid TOML with the guest configurations inside,
//! the example pods decrypt models only into memory and present the NVIDIA
//! GPUs they request (`--gpus all`), and the alert rules and Grafana
//! dashboard in `deploy/monitoring` query only metrics (and label values)
//! the broker exports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
    out.sort();
}

fn documents(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap();
    let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn str_at<'a>(doc: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    let mut node = doc;
    for key in path {
        node = &node[*key];
    }
    node.as_str()
}

fn all_objects() -> Vec<(PathBuf, Yaml)> {
    let mut yamls = Vec::new();
    files(&deploy_dir(), "yaml", &mut yamls);
    assert!(yamls.len() >= 15, "{yamls:?}");
    yamls.into_iter().flat_map(|p| documents(&p).into_iter().map(move |d| (p.clone(), d))).collect()
}

#[test]
fn every_manifest_is_a_well_formed_object() {
    for (path, doc) in all_objects() {
        let where_ = path.display();
        let api = str_at(&doc, &["apiVersion"]).unwrap_or_else(|| panic!("{where_}: no apiVersion"));
        let kind = str_at(&doc, &["kind"]).unwrap_or_else(|| panic!("{where_}: no kind"));
        assert!(api.contains('v'), "{where_}: apiVersion {api}");
        assert!(kind.chars().next().is_some_and(|c| c.is_ascii_uppercase()), "{where_}: kind {kind}");
        if kind == "Kustomization" {
            continue;
        }
        let name = str_at(&doc, &["metadata", "name"]).unwrap_or_else(|| panic!("{where_}: {kind} has no name"));
        assert!(
            name.len() <= 253
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b)),
            "{where_}: bad name {name:?}"
        );
        if let Some(ns) = str_at(&doc, &["metadata", "namespace"]) {
            assert!(ns.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'), "{where_}");
        }
        // Workloads: selector matches the template labels, containers have images.
        if ["Deployment", "StatefulSet"].contains(&kind) {
            let selector = doc["spec"]["selector"]["matchLabels"].as_hash().unwrap();
            let labels = doc["spec"]["template"]["metadata"]["labels"].as_hash().unwrap();
            for (k, v) in selector {
                assert_eq!(labels.get(k), Some(v), "{where_}: selector {k:?} not in template labels");
            }
        }
        if let Some(spec) = pod_spec(&doc, kind) {
            for c in
                spec["containers"].as_vec().unwrap().iter().chain(spec["initContainers"].as_vec().into_iter().flatten())
            {
                assert!(c["name"].as_str().is_some() && c["image"].as_str().is_some(), "{where_}: container");
            }
        }
    }
}

fn pod_spec<'a>(doc: &'a Yaml, kind: &str) -> Option<&'a Yaml> {
    match kind {
        "Pod" => Some(&doc["spec"]),
        "Deployment" | "StatefulSet" => Some(&doc["spec"]["template"]["spec"]),
        _ => None,
    }
}

#[test]
fn kustomizations_name_files_that_exist() {
    let mut yamls = Vec::new();
    files(&deploy_dir(), "yaml", &mut yamls);
    let kustomizations: Vec<&PathBuf> = yamls.iter().filter(|p| p.ends_with("kustomization.yaml")).collect();
    assert!(kustomizations.len() >= 5);
    for k in kustomizations {
        let doc = &documents(k)[0];
        let dir = k.parent().unwrap();
        for r in doc["resources"].as_vec().unwrap() {
            let target = dir.join(r.as_str().unwrap());
            assert!(target.is_file() || target.join("kustomization.yaml").is_file(), "{}: {target:?}", k.display());
        }
    }
}

#[test]
fn the_broker_deployment_is_what_the_docs_say() {
    let objects = all_objects();
    let find = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|(_, d)| str_at(d, &["kind"]) == Some(kind) && str_at(d, &["metadata", "name"]) == Some(name))
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let deployment = find("Deployment", "kbs");
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(3));
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    for probe in ["readinessProbe", "livenessProbe"] {
        let cmd = container[probe]["exec"]["command"].as_vec().unwrap();
        assert_eq!(cmd[1].as_str(), Some("health"), "{probe} uses `kbs health`");
    }
    assert!(container["resources"]["requests"]["cpu"].as_str().is_some());
    let ports: Vec<&str> = container["ports"].as_vec().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for service in ["kbs", "kbs-admin"] {
        for p in find("Service", service)["spec"]["ports"].as_vec().unwrap() {
            assert!(ports.contains(&p["targetPort"].as_str().unwrap()), "{service}: {p:?}");
        }
    }
    find("PodDisruptionBudget", "kbs");
    find("NetworkPolicy", "kbs");
    find("StatefulSet", "openbao");
    find("RuntimeClass", "kata-cc");

    // The configuration in the ConfigMap is one the broker accepts.
    let config = find("ConfigMap", "kbs-config");
    let toml = config["data"]["kbs.toml"].as_str().unwrap();
    let parsed = kbs::config::Config::from_toml(toml, Path::new("/etc/kbs/config")).unwrap();
    assert_eq!(parsed.coco.as_ref().unwrap().listen.port(), 8445);
    // The metrics listener is on, on the port the pod and its scrape
    // annotations name, and the NetworkPolicy lets scrapes reach it.
    let metrics_port = parsed.metrics.as_ref().unwrap().listen.port();
    assert!(
        container["ports"].as_vec().unwrap().iter().any(|p| p["containerPort"].as_i64() == Some(metrics_port.into()))
    );
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some(metrics_port.to_string().as_str()));
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    let policy = find("NetworkPolicy", "kbs");
    let admitted = policy["spec"]["ingress"]
        .as_vec()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_vec().unwrap())
        .any(|p| p["port"].as_i64() == Some(metrics_port.into()));
    assert!(admitted, "the NetworkPolicy admits no scrape of port {metrics_port}");
    assert!(!parsed.insecure_simulated_tee);
    // Audit records are MAC-chained.
    assert_eq!(parsed.audit_key_file.as_deref(), Some(Path::new("/etc/kbs/keys/audit.key")));
    // Production refuses SNP reports without a current AMD CRL.
    assert_eq!(parsed.snp.revocation, kbs::evidence::amd_crl::Revocation::Require);
}

#[test]
fn init_data_documents_are_valid_toml() {
    let dir = deploy_dir().join("kata/initdata");
    for name in ["aa.toml", "cdh.toml"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        text.parse::<toml::Table>().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let initdata: toml::Table = std::fs::read_to_string(dir.join("initdata.toml")).unwrap().parse().unwrap();
    assert_eq!(initdata["version"].as_str(), Some("0.1.0"));
    assert_eq!(initdata["algorithm"].as_str(), Some("sha384"));
    let data = initdata["data"].as_table().unwrap();
    let aa: toml::Table = data["aa.toml"].as_str().unwrap().parse().unwrap();
    assert!(aa["token_configs"]["kbs"]["url"].as_str().unwrap().starts_with("https://"));
    let cdh: toml::Table = data["cdh.toml"].as_str().unwrap().parse().unwrap();
    assert_eq!(cdh["kbc"]["name"].as_str(), Some("cc_kbc"));
}

/// Every example pod whose init container decrypts a model writes the
/// plaintext to a memory-backed emptyDir, and reads the encrypted files
/// read-only.
#[test]
fn model_decryption_examples_write_only_to_memory() {
    let mut found = 0;
    for (path, doc) in all_objects() {
        let Some(spec) = str_at(&doc, &["kind"]).and_then(|kind| pod_spec(&doc, kind)) else { continue };
        for init in spec["initContainers"].as_vec().into_iter().flatten() {
            let args: Vec<&str> = init["args"].as_vec().into_iter().flatten().filter_map(|a| a.as_str()).collect();
            if args.first() != Some(&"model") || args.get(1) != Some(&"decrypt") {
                continue;
            }
            found += 1;
            let flag = |name: &str| args.iter().find_map(|a| a.strip_prefix(name)).unwrap();
            let (input, out) = (flag("--in="), flag("--out="));
            assert!(!args.contains(&"--allow-persistent-disk"), "{}", path.display());
            let mounts = init["volumeMounts"].as_vec().unwrap();
            let volume_at = |dir: &str| {
                let mount = mounts.iter().find(|m| m["mountPath"].as_str() == Some(dir)).unwrap();
                let name = mount["name"].as_str().unwrap();
                (
                    mount.clone(),
                    spec["volumes"]
                        .as_vec()
                        .unwrap()
                        .iter()
                        .find(|v| v["name"].as_str() == Some(name))
                        .unwrap()
                        .clone(),
                )
            };
            let (_, plain) = volume_at(out);
            assert_eq!(
                plain["emptyDir"]["medium"].as_str(),
                Some("Memory"),
                "{}: --out must be in memory",
                path.display()
            );
            let (mount, _) = volume_at(input);
            assert_eq!(mount["readOnly"].as_bool(), Some(true), "{}", path.display());
        }
    }
    assert!(found >= 1, "no example decrypts a model");
}

/// The NVIDIA GPU resources (`nvidia.com/...`, e.g. `nvidia.com/pgpu`,
/// `nvidia.com/gpu`) a container asks for, with their counts.
fn nvidia_resources(container: &Yaml) -> std::collections::BTreeMap<String, i64> {
    let mut out = std::collections::BTreeMap::new();
    for section in ["limits", "requests"] {
        for (name, count) in container["resources"][section].as_hash().into_iter().flatten() {
            let Some(name) = name.as_str().filter(|n| n.starts_with("nvidia.com/")) else { continue };
            let count = count.as_i64().or_else(|| count.as_str().and_then(|c| c.parse().ok())).unwrap();
            let entry = out.entry(name.to_owned()).or_insert(0);
            *entry = (*entry).max(count);
        }
    }
    out
}

/// Every example pod that requests NVIDIA GPUs presents them to the
/// broker: an init container that asks for the same GPUs runs `kbs-attester
/// model decrypt --gpus all` (so a model key labelled `gpus=N` is released
/// only with the GPUs attested and bound) and decrypts into a memory-backed
/// emptyDir.
#[test]
fn gpu_examples_present_their_gpus_and_decrypt_into_memory() {
    let mut found = 0;
    for (path, doc) in all_objects() {
        let Some(spec) = str_at(&doc, &["kind"]).and_then(|kind| pod_spec(&doc, kind)) else { continue };
        let where_ = path.display();
        let mut wanted = std::collections::BTreeMap::new();
        for c in spec["containers"].as_vec().unwrap() {
            for (name, count) in nvidia_resources(c) {
                let entry = wanted.entry(name).or_insert(0);
                *entry = (*entry).max(count);
            }
        }
        if wanted.is_empty() {
            continue;
        }
        found += 1;
        let presenter = spec["initContainers"]
            .as_vec()
            .into_iter()
            .flatten()
            .find(|init| {
                let args: Vec<&str> = init["args"].as_vec().into_iter().flatten().filter_map(|a| a.as_str()).collect();
                args.starts_with(&["model", "decrypt"])
                    && (args.contains(&"--gpus=all") || args.windows(2).any(|w| w == ["--gpus", "all"]))
            })
            .unwrap_or_else(|| panic!("{where_}: requests NVIDIA GPUs but no init container presents them"));
        assert_eq!(nvidia_resources(presenter), wanted, "{where_}: the init container must see the same GPUs");
        let args: Vec<&str> = presenter["args"].as_vec().unwrap().iter().filter_map(|a| a.as_str()).collect();
        assert!(!args.iter().any(|a| a.starts_with("--sim-") || *a == "--allow-persistent-disk"), "{where_}");
        let out = args.iter().find_map(|a| a.strip_prefix("--out=")).unwrap();
        let mount = presenter["volumeMounts"].as_vec().unwrap().iter().find(|m| m["mountPath"].as_str() == Some(out));
        let name = mount.and_then(|m| m["name"].as_str()).unwrap();
        let volume = spec["volumes"].as_vec().unwrap().iter().find(|v| v["name"].as_str() == Some(name)).unwrap();
        assert_eq!(volume["emptyDir"]["medium"].as_str(), Some("Memory"), "{where_}: --out must be in memory");
        let runtime = spec["runtimeClassName"].as_str().unwrap_or_default();
        assert!(runtime.starts_with("kata-") && runtime.contains("nvidia-gpu"), "{where_}: runtime class {runtime}");
    }
    assert!(found >= 1, "no example pod requests NVIDIA GPUs");
}

/// The metric families the broker exports, from its own exposition.
fn exported_families() -> std::collections::BTreeSet<String> {
    let text = kbs::metrics::Metrics::default().encode();
    text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split(' ').next().unwrap().to_owned()).collect()
}

/// Checks that `expr` (PromQL) names only metrics the broker exports, and
/// only label values they take: a renamed metric or reason code breaks the
/// alert or panel, and so this test.
fn check_promql(expr: &str, families: &std::collections::BTreeSet<String>, what: &str) {
    assert_eq!(expr.matches('(').count(), expr.matches(')').count(), "{what}: {expr}");
    assert_eq!(expr.matches('{').count(), expr.matches('}').count(), "{what}: {expr}");
    let mut named = 0;
    for (at, _) in expr.match_indices("kbs_") {
        let name: String =
            expr[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
        assert!(
            families.contains(&name) || families.contains(family),
            "{what}: {name} is not a metric the broker exports"
        );
        named += 1;
    }
    assert!(named > 0, "{what}: names no kbs metric: {expr}");
    let reasons: Vec<&str> = kbs::reason::ReasonCode::ALL.iter().map(|r| r.as_str()).collect();
    for (label, allowed) in [("reason", reasons.as_slice()), ("decision", &["allow", "deny"][..])] {
        for op in ["=\"", "=~\""] {
            for (at, _) in expr.match_indices(&format!("{label}{op}")) {
                let value = expr[at + label.len() + op.len()..].split('"').next().unwrap();
                for v in value.split('|') {
                    assert!(allowed.contains(&v), "{what}: {label} {v:?} is not a value it takes");
                }
            }
        }
    }
}

#[test]
fn alert_rules_name_what_the_broker_exports() {
    let families = exported_families();
    let path = deploy_dir().join("monitoring/prometheus-rules.yaml");
    let docs = documents(&path);
    assert_eq!(docs.len(), 1);
    let doc = &docs[0];
    assert_eq!(str_at(doc, &["kind"]), Some("PrometheusRule"));
    let mut alerts = Vec::new();
    for group in doc["spec"]["groups"].as_vec().unwrap() {
        assert!(group["name"].as_str().is_some());
        for rule in group["rules"].as_vec().unwrap() {
            let alert = rule["alert"].as_str().expect("every rule is an alert");
            assert!(alert.starts_with("Kbs") && alert.chars().all(|c| c.is_ascii_alphanumeric()), "{alert}");
            check_promql(rule["expr"].as_str().unwrap(), &families, alert);
            let severity = rule["labels"]["severity"].as_str().unwrap();
            assert!(["critical", "warning"].contains(&severity), "{alert}: {severity}");
            for key in ["summary", "description"] {
                assert!(rule["annotations"][key].as_str().is_some_and(|s| !s.is_empty()), "{alert}: {key}");
            }
            if !rule["for"].is_badvalue() {
                let d = rule["for"].as_str().unwrap();
                assert!(d.ends_with('m') && d.trim_end_matches('m').parse::<u32>().is_ok(), "{alert}: for {d}");
            }
            alerts.push(alert.to_owned());
        }
    }
    for wanted in ["KbsAuditWriteFailures", "KbsStoreUnavailable", "KbsReleaseRefusalSpike"] {
        assert!(alerts.iter().any(|a| a == wanted), "no {wanted} in {alerts:?}");
    }
    let mut sorted = alerts.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), alerts.len(), "alert names repeat");
}

#[test]
fn the_grafana_dashboard_queries_what_the_broker_exports() {
    let families = exported_families();
    let text = std::fs::read_to_string(deploy_dir().join("monitoring/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40));
    assert!(dashboard["title"].as_str().is_some());
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let mut ids = std::collections::BTreeSet::new();
    let mut queried = std::collections::BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "{title}: id repeats");
        for key in ["x", "y", "w", "h"] {
            assert!(panel["gridPos"][key].as_u64().is_some(), "{title}: gridPos.{key}");
        }
        assert!(panel["gridPos"]["x"].as_u64().unwrap() + panel["gridPos"]["w"].as_u64().unwrap() <= 24, "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            check_promql(expr, &families, title);
            queried.extend(families.iter().filter(|f| expr.contains(f.as_str())).cloned());
        }
    }
    // Every metric the broker exports is on the dashboard, but for the
    // same counts under trustee's names (for trustee's dashboards).
    let own: std::collections::BTreeSet<String> =
        families.iter().filter(|f| !kbs::metrics::TRUSTEE_NAMES.contains(&f.as_str())).cloned().collect();
    assert_eq!(own.len() + kbs::metrics::TRUSTEE_NAMES.len(), families.len());
    assert_eq!(queried, own);
}
