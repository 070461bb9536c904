//! The Admin listener and `kbsctl` against a real broker on loopback:
//! secret management, roles, bearer tokens, client certificates (mTLS),
//! config-file and environment settings, output formats and exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use sha2::{Digest, Sha256};
use support::{serve, token_entry};

mod support;

struct Broker {
    dir: tempfile::TempDir,
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

struct ClientPki {
    ca_pem: String,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

impl ClientPki {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "kbs admin client CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self { ca_pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// Writes a client certificate with this CN to DIR/NAME.{pem,key}.
    fn client(&self, dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (dir.join(format!("{cn}.pem")), dir.join(format!("{cn}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// A dev broker's files, with its listeners on loopback ports of the
/// system's choosing.
fn dev_files(dir: &Path) -> kbs::dev::DevFiles {
    let options = kbs::dev::DevOptions {
        guest_listen: "127.0.0.1:0".into(),
        admin_listen: "127.0.0.1:0".into(),
        ..Default::default()
    };
    kbs::dev::init(dir, &options).unwrap()
}

async fn start(pki: &ClientPki) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let files = dev_files(dir.path());
    std::fs::write(dir.path().join("client-ca.pem"), &pki.ca_pem).unwrap();
    let mut text = std::fs::read_to_string(&files.config).unwrap();
    text.push_str(&token_entry("up", "uploader-token", "uploader"));
    text.push_str(&token_entry("aud", "auditor-token", "auditor"));
    text = text.replace("[[admin.tokens]]\nname = \"dev-admin\"", "[admin]\nclient_ca = \"client-ca.pem\"\n\n[[admin.clients]]\nname = \"ops\"\ncommon_name = \"ops.example\"\nrole = \"admin\"\n\n[[admin.clients]]\nname = \"reader\"\ncommon_name = \"reader.example\"\nrole = \"auditor\"\n\n[[admin.tokens]]\nname = \"dev-admin\"");
    std::fs::write(&files.config, text).unwrap();
    let (url, stop) = serve(&files.config).await;
    Broker { dir, url, _stop: stop }
}

impl Broker {
    fn ca(&self) -> String {
        self.dir.path().join("tls/ca.pem").display().to_string()
    }

    fn token_file(&self, token: &str) -> String {
        let path = self.dir.path().join(format!("{}.tok", &hex::encode(Sha256::digest(token))[..8]));
        std::fs::write(&path, token).unwrap();
        path.display().to_string()
    }

    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("admin.token")).unwrap()
    }

    /// Runs kbsctl with `--url/--ca` set and HOME pointing at an empty dir.
    async fn kbsctl(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kbsctl"));
        cmd.env_clear()
            .env("HOME", self.dir.path())
            .args(["--url", &self.url, "--ca", &self.ca()])
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let input = stdin.map(<[u8]>::to_vec);
        tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn().unwrap();
            if let Some(input) = input {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(&input).unwrap();
            }
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn secret_lifecycle_with_json_output() {
    let pki = ClientPki::new();
    let b = start(&pki).await;
    let admin = b.token_file(&b.admin_token());
    let value: Vec<u8> = (0..=255u8).rev().collect();
    let put = b
        .kbsctl(
            &[
                "--token-file",
                &admin,
                "--output",
                "json",
                "secret",
                "put",
                "m/k/a",
                "--from-file",
                "-",
                "--label",
                "team=ml",
            ],
            Some(&value),
        )
        .await;
    assert_eq!(put.status.code(), Some(0), "{}", stderr(&put));
    let meta: serde_json::Value = serde_json::from_str(&stdout(&put)).unwrap();
    assert_eq!(meta[0]["size"], 256);
    assert_eq!(meta[0]["labels"]["team"], "ml");

    let gen_ = b
        .kbsctl(&["--token-file", &admin, "--output", "json", "secret", "generate", "m/k/a", "--bytes", "48"], None)
        .await;
    assert_eq!(gen_.status.code(), Some(0), "{}", stderr(&gen_));
    let meta: serde_json::Value = serde_json::from_str(&stdout(&gen_)).unwrap();
    assert_eq!((meta[0]["version"].as_u64(), meta[0]["size"].as_u64()), (Some(2), Some(48)));

    // Check-and-set: a stale expected version is refused with exit 2.
    let stale =
        b.kbsctl(&["--token-file", &admin, "secret", "generate", "m/k/a", "--expected-version", "1"], None).await;
    assert_eq!(stale.status.code(), Some(2));
    assert!(stderr(&stale).contains("version_conflict"), "{}", stderr(&stale));

    let list = b.kbsctl(&["--token-file", &admin, "secret", "list", "--prefix", "m/"], None).await;
    assert_eq!(list.status.code(), Some(0));
    assert!(stdout(&list).contains("m/k/a"));

    // Destroying an old version leaves the newest served.
    let destroy = b
        .kbsctl(&["--token-file", &admin, "--output", "json", "secret", "destroy", "m/k/a", "--version", "1"], None)
        .await;
    assert_eq!(destroy.status.code(), Some(0), "{}", stderr(&destroy));
    let meta: serde_json::Value = serde_json::from_str(&stdout(&destroy)).unwrap();
    assert_eq!(meta[0]["version"], 2);
    // Destroying the newest: nothing is served (no fallback).
    let destroy = b
        .kbsctl(&["--token-file", &admin, "--output", "json", "secret", "destroy", "m/k/a", "--version", "2"], None)
        .await;
    assert_eq!(destroy.status.code(), Some(0), "{}", stderr(&destroy));
    let out: serde_json::Value = serde_json::from_str(&stdout(&destroy)).unwrap();
    assert_eq!(out["served"], false);
    let show = b.kbsctl(&["--token-file", &admin, "secret", "show", "m/k/a"], None).await;
    assert_eq!(show.status.code(), Some(2));
    assert!(stderr(&show).contains("secret_not_found"));

    let rm = b.kbsctl(&["--token-file", &admin, "secret", "rm", "m/k/a"], None).await;
    assert_eq!(rm.status.code(), Some(0));
    let show = b.kbsctl(&["--token-file", &admin, "secret", "show", "m/k/a"], None).await;
    assert_eq!(show.status.code(), Some(2));
    assert!(stderr(&show).contains("secret_not_found"));
}

#[tokio::test]
async fn roles_and_credentials() {
    let pki = ClientPki::new();
    let b = start(&pki).await;
    let uploader = b.token_file("uploader-token");
    let auditor = b.token_file("auditor-token");
    let v = b"v".as_slice();
    let up = b.kbsctl(&["--token-file", &uploader, "secret", "put", "a/b", "--from-file", "-"], Some(v)).await;
    assert_eq!(up.status.code(), Some(0), "{}", stderr(&up));
    let up_rm = b.kbsctl(&["--token-file", &uploader, "secret", "rm", "a/b"], None).await;
    assert_eq!(up_rm.status.code(), Some(2));
    assert!(stderr(&up_rm).contains("permission_denied"));
    let aud_put = b.kbsctl(&["--token-file", &auditor, "secret", "put", "a/c", "--from-file", "-"], Some(v)).await;
    assert!(stderr(&aud_put).contains("permission_denied"));
    let aud_list = b.kbsctl(&["--token-file", &auditor, "secret", "list"], None).await;
    assert_eq!(aud_list.status.code(), Some(0));
    let bogus = b.token_file("not-a-token");
    let bad = b.kbsctl(&["--token-file", &bogus, "secret", "list"], None).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("unauthenticated"));
    // No credential at all is a usage error before any connection.
    let none = b.kbsctl(&["secret", "list"], None).await;
    assert_eq!(none.status.code(), Some(1), "{}", stderr(&none));
    // Reserved names are refused.
    let admin = b.token_file(&b.admin_token());
    let reserved = b.kbsctl(&["--token-file", &admin, "secret", "put", "_kbs/x", "--from-file", "-"], Some(v)).await;
    assert!(stderr(&reserved).contains("invalid_request"));
}

#[tokio::test]
async fn client_certificates_map_to_roles() {
    let pki = ClientPki::new();
    let b = start(&pki).await;
    let (ops_c, ops_k) = pki.client(b.dir.path(), "ops.example");
    let (rd_c, rd_k) = pki.client(b.dir.path(), "reader.example");
    let (un_c, un_k) = pki.client(b.dir.path(), "stranger.example");
    let v = b"v".as_slice();
    let cert = |c: &PathBuf, k: &PathBuf| {
        vec!["--client-cert".to_owned(), c.display().to_string(), "--client-key".to_owned(), k.display().to_string()]
    };
    let ops = cert(&ops_c, &ops_k);
    let mut args: Vec<&str> = ops.iter().map(String::as_str).collect();
    args.extend(["secret", "put", "c/d", "--from-file", "-"]);
    let out = b.kbsctl(&args, Some(v)).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let reader = cert(&rd_c, &rd_k);
    let mut args: Vec<&str> = reader.iter().map(String::as_str).collect();
    args.extend(["secret", "rm", "c/d"]);
    let out = b.kbsctl(&args, None).await;
    assert!(stderr(&out).contains("permission_denied"), "{}", stderr(&out));

    let stranger = cert(&un_c, &un_k);
    let mut args: Vec<&str> = stranger.iter().map(String::as_str).collect();
    args.extend(["secret", "list"]);
    let out = b.kbsctl(&args, None).await;
    assert!(stderr(&out).contains("unauthenticated"), "{}", stderr(&out));

    // A certificate from another CA does not get through TLS at all.
    let other = ClientPki::new();
    let other_dir = tempfile::tempdir().unwrap();
    let (oc, ok) = other.client(other_dir.path(), "ops.example");
    let foreign = cert(&oc, &ok);
    let mut args: Vec<&str> = foreign.iter().map(String::as_str).collect();
    args.extend(["secret", "list"]);
    let out = b.kbsctl(&args, None).await;
    assert_ne!(out.status.code(), Some(0));
}

#[tokio::test]
async fn settings_come_from_the_config_file() {
    let pki = ClientPki::new();
    let b = start(&pki).await;
    let admin = b.token_file(&b.admin_token());
    let cfg = b.dir.path().join(".config/kbsctl");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("config.toml"),
        format!("url = \"{}\"\nca = \"{}\"\ntoken_file = \"{admin}\"\n", b.url, b.ca()),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kbsctl"));
    cmd.env_clear().env("HOME", b.dir.path()).args(["--output", "json", "secret", "list"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "[]");
    // A broken config file is a usage error.
    std::fs::write(cfg.join("config.toml"), "url = 3\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kbsctl"));
    cmd.env_clear().env("HOME", b.dir.path()).args(["secret", "list"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    // An unreachable broker is exit 3.
    std::fs::remove_file(cfg.join("config.toml")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kbsctl"));
    cmd.env_clear().env("HOME", b.dir.path()).args([
        "--url",
        "https://127.0.0.1:1",
        "--ca",
        &b.ca(),
        "--token-file",
        &admin,
        "secret",
        "list",
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

/// Each role against each Admin call, plus no credential and a bad one.
#[tokio::test]
async fn authorization_matrix() {
    use kbs_proto::v1::*;
    use tonic::Code;

    let pki = ClientPki::new();
    let b = start(&pki).await;
    let admin = admin_client(&b).await;
    let admin_token = b.admin_token();
    let creds: [(&str, Option<&str>); 5] = [
        ("admin", Some(admin_token.as_str())),
        ("uploader", Some("uploader-token")),
        ("auditor", Some("auditor-token")),
        ("none", None),
        ("bogus", Some("bogus-token")),
    ];
    // The code each caller gets for each call, in this order: put, generate,
    // metadata, list, delete, destroy, set policy, get policy, list policies,
    // delete policy, test policy, put refvals, get refvals, list refvals,
    // delete refvals, query audit. `Ok` means the call was authorized (it may
    // still fail for another reason, which is never an auth code).
    const W: bool = true;
    // The 17th call is a dry run of the stored policy (no Rego given), which
    // auditors may make; the 11th gives its own Rego, which only admins may.
    let allowed: [[bool; 17]; 3] = [
        [W; 17],
        [W, W, W, W, false, false, false, false, false, false, false, false, false, false, false, false, false],
        [false, false, W, W, false, false, false, W, W, false, false, false, W, W, false, W, W],
    ];
    for (who, token) in creds {
        let mut client = admin.clone();
        macro_rules! call {
            ($method:ident, $msg:expr) => {{
                let mut req = tonic::Request::new($msg);
                if let Some(t) = token {
                    req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
                }
                client.$method(req).await.err().map(|s| s.code())
            }};
        }
        let codes = [
            call!(put_secret, PutSecretRequest { name: format!("m/{who}/a"), value: vec![1], ..Default::default() }),
            call!(
                generate_secret,
                GenerateSecretRequest { name: format!("m/{who}/b"), bytes: 16, ..Default::default() }
            ),
            call!(get_secret_metadata, GetSecretMetadataRequest { name: "m/x/y".into() }),
            call!(list_secrets, ListSecretsRequest::default()),
            call!(delete_secret, DeleteSecretRequest { name: "m/x/y".into() }),
            call!(destroy_secret_versions, DestroySecretVersionsRequest { name: "m/x/y".into(), versions: vec![1] }),
            call!(
                set_policy,
                SetPolicyRequest { scope: "m/".into(), rego: "package kbs.release\nallow := false\n".into() }
            ),
            call!(get_policy, GetPolicyRequest { scope: "m/".into() }),
            call!(list_policies, ListPoliciesRequest {}),
            call!(delete_policy, DeletePolicyRequest { scope: "zz/".into() }),
            call!(
                test_policy,
                TestPolicyRequest {
                    rego: "package kbs.release\nallow := false\n".into(),
                    secret_name: "m/x/y".into(),
                    input: Some(test_policy_request::Input::ClaimsJson("{}".into()))
                }
            ),
            call!(put_reference_values, PutReferenceValuesRequest { name: "prod".into(), json: "{}".into() }),
            call!(get_reference_values, GetReferenceValuesRequest { name: "prod".into() }),
            call!(list_reference_values, ListReferenceValuesRequest {}),
            call!(delete_reference_values, DeleteReferenceValuesRequest { name: "zz".into() }),
            call!(query_audit, QueryAuditRequest::default()),
            call!(
                test_policy,
                TestPolicyRequest {
                    rego: String::new(),
                    secret_name: "m/x/y".into(),
                    input: Some(test_policy_request::Input::ClaimsJson("{}".into()))
                }
            ),
        ];
        for (i, code) in codes.iter().enumerate() {
            let expect_auth_failure = match who {
                "none" | "bogus" => Some(Code::Unauthenticated),
                _ => {
                    let row = ["admin", "uploader", "auditor"].iter().position(|r| *r == who).unwrap();
                    (!allowed[row][i]).then_some(Code::PermissionDenied)
                }
            };
            match expect_auth_failure {
                Some(expected) => assert_eq!(*code, Some(expected), "{who} call #{i}"),
                None => assert!(
                    !matches!(code, Some(Code::Unauthenticated | Code::PermissionDenied)),
                    "{who} call #{i} was refused: {code:?}"
                ),
            }
        }
    }
    // Every call without a valid credential (17 with none, 17 with a bogus
    // token) is an audit record, with the reason and never the token.
    // Refusals before any effect are queued, not waited for: the last ones
    // may reach the file just after their answers.
    let count = |log: &str| {
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["action"] == "admin.auth" && r["decision"] == "deny" && r["reason"] == "unauthenticated")
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut log = std::fs::read_to_string(b.dir.path().join("audit.jsonl")).unwrap();
    while count(&log) < 34 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        log = std::fs::read_to_string(b.dir.path().join("audit.jsonl")).unwrap();
    }
    assert!(log.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "{log}");
    assert_eq!(count(&log), 34, "{log}");
    assert!(!log.contains("bogus-token"), "{log}");
}

/// A dry run of caller-supplied Rego that asks for terabytes: an auditor may
/// not run its own Rego at all, and an admin's is refused by the policy
/// bounds; either way the broker keeps serving.
#[tokio::test]
async fn no_dry_run_stops_the_broker() {
    use kbs_proto::v1::*;
    use tonic::Code;

    let pki = ClientPki::new();
    let b = start(&pki).await;
    let mut client = admin_client(&b).await;
    let bomb = || TestPolicyRequest {
        rego: "package kbs.release\nallow if count(numbers.range(0, 1000000000000)) > 0\n".into(),
        secret_name: "m/x/y".into(),
        input: Some(test_policy_request::Input::ClaimsJson(
            r#"{"tee":"snp","measurement":"00","debug":false,"report_data":"00","init_data_digest":""}"#.into(),
        )),
    };
    let status = client.test_policy(bearer("auditor-token", bomb())).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let admin_token = b.admin_token();
    let decision = client.test_policy(bearer(&admin_token, bomb())).await.unwrap().into_inner();
    assert!(!decision.allow);
    assert!(decision.reasons.iter().any(|r| r.contains("kbs policy bound")), "{:?}", decision.reasons);

    // Still serving.
    client.list_secrets(bearer(&admin_token, ListSecretsRequest::default())).await.unwrap();
}

/// The process's peak resident memory, in KiB, since the last reset.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// An unauthenticated caller cannot make the admin listener read (and
/// decode) a large message: the call is refused from its headers. Before,
/// a 60 MB PutSecret with a bogus token was decoded whole, then refused.
#[tokio::test]
async fn unauthenticated_calls_are_refused_before_their_message_is_read() {
    let pki = ClientPki::new();
    let b = start(&pki).await;
    let big = b.dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 60 << 20]).unwrap();
    let bogus = b.token_file("bogus-token");
    // The peak from here on (the client is another process).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = peak_rss_kib();
    let out =
        b.kbsctl(&["--token-file", &bogus, "secret", "put", "m/big", "--from-file", big.to_str().unwrap()], None).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unauthenticated"), "{}", stderr(&out));
    let grown = peak_rss_kib().saturating_sub(before);
    assert!(grown < 16 << 10, "the broker's peak memory grew by {grown} KiB");

    // An admin's message past the largest secret (plus room for the rest
    // of the request) is refused too, without storing anything.
    let admin = b.token_file(&b.admin_token());
    let out =
        b.kbsctl(&["--token-file", &admin, "secret", "put", "m/big", "--from-file", big.to_str().unwrap()], None).await;
    assert!(!out.status.success(), "{}", stdout(&out));
    let out = b.kbsctl(&["--token-file", &admin, "secret", "list"], None).await;
    assert!(!stdout(&out).contains("m/big"), "{}", stdout(&out));
}

/// An Admin client of `b` (credentials go on each request, see [`bearer`]).
async fn admin_client(b: &Broker) -> kbs_proto::v1::admin_client::AdminClient<tonic::transport::Channel> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let ca = std::fs::read(b.ca()).unwrap();
    let channel = Channel::from_shared(b.url.clone())
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    kbs_proto::v1::admin_client::AdminClient::new(channel)
}

fn bearer<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// Paging through the secrets never shows the broker's own records under
/// `_kbs/`, in a page or in a page token.
#[tokio::test]
async fn page_tokens_do_not_reveal_reserved_names() {
    use kbs_proto::v1::*;
    let pki = ClientPki::new();
    let b = start(&pki).await;
    let admin = b.admin_token();
    let mut client = admin_client(&b).await;
    // Reserved records sort before `a/`, between `A/` and `a/`, and the
    // policy scope names them.
    for scope in ["*", "a/", "zz/"] {
        let rego = "package kbs.release\nallow := false\n".to_owned();
        client.set_policy(bearer(&admin, SetPolicyRequest { scope: scope.into(), rego })).await.unwrap();
    }
    client
        .put_reference_values(bearer(&admin, PutReferenceValuesRequest { name: "prod".into(), json: "{}".into() }))
        .await
        .unwrap();
    for name in ["A/s", "a/s", "zz/s"] {
        let put = PutSecretRequest { name: name.into(), value: vec![1], ..Default::default() };
        client.put_secret(bearer(&admin, put)).await.unwrap();
    }
    for page_size in [1, 2, 3, 100] {
        let (mut names, mut token) = (Vec::new(), String::new());
        loop {
            let req = ListSecretsRequest { prefix: String::new(), page_size, page_token: token.clone() };
            let page = client.list_secrets(bearer(&admin, req)).await.unwrap().into_inner();
            assert!(!page.next_page_token.starts_with("_kbs/"), "token {:?}", page.next_page_token);
            names.extend(page.secrets.into_iter().map(|s| s.name));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(names, ["A/s", "a/s", "zz/s"], "page size {page_size}");
    }
}

/// An uploader adds versions but cannot change who may receive an existing
/// secret: the allow-list and labels an admin set are carried over, and a
/// version that gives others is refused.
#[tokio::test]
async fn uploaders_cannot_change_release_conditions() {
    use kbs_proto::v1::*;
    use tonic::Code;
    let pki = ClientPki::new();
    let b = start(&pki).await;
    let admin = b.admin_token();
    let mut client = admin_client(&b).await;
    let (m1, m2) = ("ab".repeat(48), "cd".repeat(48));
    let labels = std::collections::HashMap::from([("refvals".to_owned(), "prod".to_owned())]);
    let first = PutSecretRequest {
        name: "m/key".into(),
        value: vec![1],
        labels: labels.clone(),
        allowed_measurements: vec![m1.clone()],
        ..Default::default()
    };
    client.put_secret(bearer(&admin, first)).await.unwrap();

    // Another allow-list, other labels, or both: refused, by put and generate.
    let put = |allowed: Vec<String>, labels: std::collections::HashMap<String, String>| PutSecretRequest {
        name: "m/key".into(),
        value: vec![2],
        labels,
        allowed_measurements: allowed,
        ..Default::default()
    };
    let lax = std::collections::HashMap::from([("refvals".to_owned(), "lax".to_owned())]);
    for req in [
        put(vec![m2.clone()], labels.clone()),
        put(vec![m1.clone()], lax.clone()),
        put(vec![m2.clone()], Default::default()),
    ] {
        let status = client.put_secret(bearer("uploader-token", req)).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    let generate = GenerateSecretRequest {
        name: "m/key".into(),
        bytes: 32,
        allowed_measurements: vec![m2.clone()],
        ..Default::default()
    };
    let status = client.generate_secret(bearer("uploader-token", generate)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // None given: the admin's carry over. The same given: accepted.
    let meta = client.put_secret(bearer("uploader-token", put(vec![], Default::default()))).await.unwrap().into_inner();
    assert_eq!((meta.version, &meta.allowed_measurements, &meta.labels), (2, &vec![m1.clone()], &labels));
    let generate = GenerateSecretRequest { name: "m/key".into(), bytes: 32, ..Default::default() };
    let meta = client.generate_secret(bearer("uploader-token", generate)).await.unwrap().into_inner();
    assert_eq!((meta.version, &meta.allowed_measurements, &meta.labels), (3, &vec![m1.clone()], &labels));
    let meta =
        client.put_secret(bearer("uploader-token", put(vec![m1.clone()], labels.clone()))).await.unwrap().into_inner();
    assert_eq!(meta.version, 4);

    // A new secret is the uploader's to describe; an admin may change any.
    let own = PutSecretRequest {
        name: "m/own".into(),
        value: vec![3],
        allowed_measurements: vec![m2.clone()],
        ..Default::default()
    };
    client.put_secret(bearer("uploader-token", own)).await.unwrap();
    let meta = client.put_secret(bearer(&admin, put(vec![m2.clone()], lax))).await.unwrap().into_inner();
    assert_eq!(meta.allowed_measurements, vec![m2]);
}

/// Rewrites an audit file as someone who can write it but lacks the key
/// would: one decision changed, every later `prev` recomputed.
fn forge(text: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut line = if i == 1 { line.replacen("\"deny\"", "\"allow\"", 1) } else { line.to_owned() };
        if let Some(previous) = out.last() {
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            let old = value["prev"].as_str().unwrap().to_owned();
            line = line.replace(&old, &hex::encode(Sha256::digest(previous.as_bytes())));
        }
        out.push(line);
    }
    out.join("\n") + "\n"
}

#[tokio::test]
async fn audit_verify_checks_macs_with_the_key() {
    let pki = ClientPki::new();
    let b = start(&pki).await;
    let admin = b.token_file(&b.admin_token());
    let uploader = b.token_file("uploader-token");
    let put = b.kbsctl(&["--token-file", &admin, "secret", "put", "a/b", "--from-file", "-"], Some(b"v")).await;
    assert_eq!(put.status.code(), Some(0), "{}", stderr(&put));
    // A refusal (a `deny` record to forge into an `allow`), then a third record.
    let rm = b.kbsctl(&["--token-file", &uploader, "secret", "rm", "a/b"], None).await;
    assert_eq!(rm.status.code(), Some(2), "{}", stderr(&rm));
    let list = b.kbsctl(&["--token-file", &admin, "secret", "list"], None).await;
    assert_eq!(list.status.code(), Some(0));

    let log = b.dir.path().join("audit.jsonl");
    let key = b.dir.path().join("audit.key").display().to_string();
    let file = log.display().to_string();
    let plain = b.kbsctl(&["audit", "verify", &file], None).await;
    assert_eq!(plain.status.code(), Some(0), "{}", stderr(&plain));
    assert!(stdout(&plain).contains("MACs not checked (give --key)"), "{}", stdout(&plain));
    let keyed = b.kbsctl(&["--output", "json", "audit", "verify", &file, "--key", &key], None).await;
    assert_eq!(keyed.status.code(), Some(0), "{}", stderr(&keyed));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&keyed)).unwrap();
    assert_eq!((summary["ok"].as_bool(), summary["macs_checked"].as_bool()), (Some(true), Some(true)));
    let text = std::fs::read_to_string(&log).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(summary["head_mac"], last["mac"]);
    assert_eq!(summary["records"].as_u64(), Some(text.lines().count() as u64));

    // Rewritten with a recomputed hash chain: passes without the key only.
    let forged_text = forge(&text);
    assert_ne!(forged_text, text);
    let forged = b.dir.path().join("forged.jsonl");
    std::fs::write(&forged, forged_text).unwrap();
    let forged = forged.display().to_string();
    let plain = b.kbsctl(&["audit", "verify", &forged], None).await;
    assert_eq!(plain.status.code(), Some(0), "{}", stderr(&plain));
    let keyed = b.kbsctl(&["audit", "verify", &forged, "--key", &key], None).await;
    assert_eq!(keyed.status.code(), Some(2), "{}", stdout(&keyed));
    assert!(stderr(&keyed).contains("line 2: MAC does not verify"), "{}", stderr(&keyed));

    // The last record removed: both chains still verify; only the head
    // (the count and last MAC the broker logs) shows it.
    let n = text.lines().count().to_string();
    let head = last["mac"].as_str().unwrap();
    let cut: Vec<&str> = text.lines().collect();
    let cut = cut[..cut.len() - 1].join("\n") + "\n";
    let truncated = b.dir.path().join("truncated.jsonl");
    std::fs::write(&truncated, cut).unwrap();
    let truncated = truncated.display().to_string();
    let anchored =
        |f: &str| ["audit", "verify", f, "--key", &key, "--expect-count", &n, "--expect-head", head].map(str::to_owned);
    let out = b.kbsctl(&["audit", "verify", &truncated, "--key", &key], None).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let args = anchored(&truncated);
    let out = b.kbsctl(&args.iter().map(String::as_str).collect::<Vec<_>>(), None).await;
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));
    let args = anchored(&file);
    let out = b.kbsctl(&args.iter().map(String::as_str).collect::<Vec<_>>(), None).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// `audit query` prints a table by default and, with `--output json`, a
/// JSON array of the records as the broker wrote them.
#[tokio::test]
async fn audit_query_prints_a_table_or_json() {
    let pki = ClientPki::new();
    let b = start(&pki).await;
    let admin = b.token_file(&b.admin_token());
    let put = b.kbsctl(&["--token-file", &admin, "secret", "put", "q/a", "--from-file", "-"], Some(b"v")).await;
    assert_eq!(put.status.code(), Some(0), "{}", stderr(&put));
    let query: [&str; 6] = ["--token-file", &admin, "audit", "query", "--action", "secret.put"];

    let json_args: Vec<&str> = ["--output", "json"].into_iter().chain(query).collect();
    let json = b.kbsctl(&json_args, None).await;
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let records: Vec<serde_json::Value> = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(record["action"], "secret.put");
    assert_eq!(record["secrets"][0]["name"], "q/a");
    assert!(record["prev"].is_string() && record["time"].is_string(), "{record}");

    let table = b.kbsctl(&query, None).await;
    assert_eq!(table.status.code(), Some(0), "{}", stderr(&table));
    let text = stdout(&table);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["TIME", "ACTION", "DECISION", "REASON", "TEE", "SECRETS", "CALLER"]);
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    let time = record["time"].as_str().unwrap();
    assert!(row[0].ends_with('Z') && time.starts_with(row[0].trim_end_matches('Z')), "{text}");
    assert_eq!(row[1..3], [record["action"].as_str().unwrap(), record["decision"].as_str().unwrap()], "{text}");
    assert!(row[5].starts_with("q/a"), "{text}");
    assert_eq!(row[6], record["caller"].as_str().unwrap(), "{text}");
}

/// `audit query` through the broker finds records from before a rotation:
/// a log rotated into several files before the broker starts is searched
/// through its rotated files, and the latest matches come back in order.
#[tokio::test]
async fn audit_query_reads_rotated_files() {
    let dir = tempfile::tempdir().unwrap();
    let files = dev_files(dir.path());
    let key = kbs::keyfile::read(&dir.path().join("audit.key")).unwrap();
    let rotation = kbs::audit::Rotation { max_file_bytes: Some(1500), ..Default::default() };
    let path = dir.path().join("audit.jsonl");
    let log = kbs::audit::AuditLog::open(&path, "r0", Some(kbs::audit::AuditKey::new(&key)), rotation).unwrap();
    for i in 0..20 {
        let event = kbs::audit::Event {
            decision: "allow",
            attestation_id: Some(format!("id-{i}")),
            ..kbs::audit::Event::new("release", "127.0.0.1:1".into())
        };
        log.record(&event).unwrap();
    }
    assert!(log.file_seq() >= 4, "rotated {} times", log.file_seq() - 1);
    drop(log);
    let (url, _stop) = serve(&files.config).await;
    let b = Broker { dir, url, _stop };
    let admin = b.token_file(&b.admin_token());
    let out =
        b.kbsctl(&["--output", "json", "--token-file", &admin, "audit", "query", "--action", "release"], None).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let records: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    let ids: Vec<&str> = records.iter().map(|r| r["attestation_id"].as_str().unwrap()).collect();
    assert_eq!(ids, (0..20).map(|i| format!("id-{i}")).collect::<Vec<_>>(), "every release, oldest first");
    assert!(!stderr(&out).contains("not read"), "{}", stderr(&out));
    let out = b
        .kbsctl(
            &["--output", "json", "--token-file", &admin, "audit", "query", "--action", "release", "--limit", "3"],
            None,
        )
        .await;
    let records: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    let ids: Vec<&str> = records.iter().map(|r| r["attestation_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["id-17", "id-18", "id-19"]);
}
