//! The Kubernetes material in `deploy/`: every YAML document parses and is a
//! well-formed object, every kustomization names files that exist, the
//! broker's ConfigMap holds a configuration the broker accepts, and the
//! init-data documents are valid TOML with the guest configurations inside.
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
