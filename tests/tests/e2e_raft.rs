//! The production store in HA: a broker backed by a real 3-node OpenBao
//! Raft cluster on loopback (support/raft.rs), its leader killed with
//! SIGKILL while guests fetch a secret and 50 check-and-set writers rotate
//! it.
//!
//! What must hold: no acknowledged write is lost (each acknowledged version
//! is in the store afterwards with its value); no version exists, or is
//! served, that no writer was told about; releases during the election fail
//! closed with `store_unavailable`; the same broker process serves again
//! once a new leader is elected. The unavailability window (kill to the
//! first successful release after it) is printed; docs/performance.md
//! records it. Nothing is timed except a generous bound that catches a hang.
//!
//! Needs `bao` on PATH (or `KBS_BAO_BIN`); without it the test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attester_client::client::{ClientConfig, KbsClient};
use attester_client::simulated::{Generation, SimulatedSnp};
use base64::Engine;
use kbs_proto::v1::{GetSecretMetadataRequest, PutSecretRequest};

#[path = "support/app.rs"]
mod app;
#[path = "support/bao.rs"]
mod bao;
#[path = "support/raft.rs"]
mod raft;

use app::{Options, TestApp};
use raft::RaftCluster;

const MEASUREMENT: [u8; 48] = [0x5a; 48];
const NAME: &str = "raft/key";
const PREFIX: &str = "kbs-raft";
const GUESTS: usize = 4;
const WRITERS: usize = 50;
/// KV keeps this many versions, more than the test can write, so that
/// every acknowledged version can be read back.
const MAX_VERSIONS: u64 = 100_000;
/// A new leader and a successful release must follow the kill within this;
/// only a hang exceeds it.
const RECOVERY_BOUND: Duration = Duration::from_secs(60);

/// One release attempt by a guest.
struct Release {
    started: Instant,
    ended: Instant,
    /// The version and value served, or the refusal's reason code (`None`
    /// for an error without one).
    result: Result<(u64, Vec<u8>), Option<String>>,
}

/// What the writers were told.
#[derive(Default)]
struct Writes {
    /// Acknowledged versions and their values.
    acked: BTreeMap<u64, Vec<u8>>,
    /// When each acknowledgement arrived.
    acked_at: Vec<Instant>,
    /// Refusals by reason code.
    refused: BTreeMap<String, usize>,
    /// What the writer of each refused value was told.
    told: BTreeMap<Vec<u8>, String>,
}

/// Standbys forward every request to the active node
/// (`disable_standby_reads`): no read is stale, and nothing is served while
/// there is no leader, so releases during the election must fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_raft_leader_loses_no_acknowledged_write_and_releases_recover() {
    if bao::skip_requested() {
        eprintln!("KBS_SKIP_VAULT_TESTS=1: skipping the OpenBao Raft test");
        return;
    }
    let failed_after_kill = leader_killed_under_load(false).await;
    assert!(failed_after_kill > 0, "no release failed during the election: the kill was not seen");
}

/// OpenBao's default: standbys serve reads themselves (possibly a moment
/// behind the leader) and forward writes. Releases may go on through the
/// election; whatever fails must fail closed, and the check-and-set writes
/// must stay exact although the reads they check with may lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_raft_leader_with_standby_reads_loses_no_acknowledged_write() {
    if bao::skip_requested() {
        eprintln!("KBS_SKIP_VAULT_TESTS=1: skipping the OpenBao Raft test");
        return;
    }
    leader_killed_under_load(true).await;
}

/// The scenario; returns how many releases failed after the kill.
async fn leader_killed_under_load(standby_reads: bool) -> usize {
    let cluster = RaftCluster::start(standby_reads, MAX_VERSIONS).await;
    let first_leader = cluster.active().await.expect("a leader after set-up");
    std::fs::write(cluster.dir.path().join("broker.token"), &cluster.root).unwrap();

    // The broker lists every node, the leader first (the worst case: its
    // node is the one to die); plain http is accepted on loopback only.
    let addresses: Vec<String> = cluster.nodes.iter().map(|n| format!("\"{}\"", n.addr)).collect();
    let store = format!(
        "[store]\nkind = \"vault\"\naddress = {}\nfallback_addresses = [{}]\nprefix = \"{PREFIX}\"\n\
         cache_ttl_ms = 0\nrequest_timeout_seconds = 2\n[store.auth]\nmethod = \"token\"\ntoken_file = \"{}\"\n",
        addresses[first_leader],
        addresses
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != first_leader)
            .map(|(_, a)| a.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        cluster.dir.path().join("broker.token").display(),
    );
    let app = Arc::new(TestApp::start_with(Options { store: Some(store), ..Default::default() }).await);
    let measurement = hex::encode(MEASUREMENT);
    let put = |value: Vec<u8>, expected_version: u64| {
        app.authed(PutSecretRequest {
            name: NAME.into(),
            value,
            allowed_measurements: vec![measurement.clone()],
            expected_version: Some(expected_version),
            ..Default::default()
        })
    };
    let first = app.admin().await.put_secret(put(b"initial".to_vec(), 0)).await.unwrap().into_inner();
    assert_eq!(first.version, 1);
    let writes = Arc::new(Mutex::new(Writes::default()));
    writes.lock().unwrap().acked.insert(1, b"initial".to_vec());

    let stop = Arc::new(AtomicBool::new(false));
    let releases = Arc::new(Mutex::new(Vec::<Release>::new()));

    // Guests fetching the secret in a loop.
    let mut tasks = Vec::new();
    for _ in 0..GUESTS {
        let (stop, releases) = (Arc::clone(&stop), Arc::clone(&releases));
        let config = ClientConfig::new(app.guest_url.clone(), app.ca.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = KbsClient::connect(&config).await.unwrap();
            let sim = Arc::new(SimulatedSnp::new(Generation::Genoa).measurement(MEASUREMENT));
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = match client.fetch(sim.clone(), &[NAME.to_owned()]).await {
                    Ok(got) => Ok((got[0].version, got[0].value.to_vec())),
                    Err(e) => {
                        if e.reason().is_none() {
                            eprintln!("release error without a reason code: {e:?}");
                        }
                        Err(e.reason().map(str::to_owned))
                    }
                };
                releases.lock().unwrap().push(Release { started, ended: Instant::now(), result });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    // Check-and-set writers: read the current version, write the next.
    let admin_channel = app.channel(&app.admin_url).await;
    for writer in 0..WRITERS {
        let (stop, writes, app) = (Arc::clone(&stop), Arc::clone(&writes), Arc::clone(&app));
        let mut admin = kbs_proto::v1::admin_client::AdminClient::new(admin_channel.clone());
        let measurement = measurement.clone();
        tasks.push(tokio::spawn(async move {
            let mut attempt = 0u32;
            while !stop.load(Ordering::Relaxed) {
                attempt += 1;
                let refused = |writes: &Mutex<Writes>, status: tonic::Status| {
                    let reason = status.metadata().get("kbs-reason").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    let reason = reason.unwrap_or_else(|| format!("no reason code: {status:?}"));
                    *writes.lock().unwrap().refused.entry(reason).or_default() += 1;
                };
                let current =
                    match admin.get_secret_metadata(app.authed(GetSecretMetadataRequest { name: NAME.into() })).await {
                        Ok(meta) => meta.into_inner().version,
                        Err(status) => {
                            refused(&writes, status);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                let value = format!("writer {writer} attempt {attempt}").into_bytes();
                let request = app.authed(PutSecretRequest {
                    name: NAME.into(),
                    value: value.clone(),
                    allowed_measurements: vec![measurement.clone()],
                    expected_version: Some(current),
                    ..Default::default()
                });
                match admin.put_secret(request).await {
                    Ok(meta) => {
                        let version = meta.into_inner().version;
                        let mut writes = writes.lock().unwrap();
                        let earlier = writes.acked.insert(version, value);
                        assert!(earlier.is_none(), "version {version} was acknowledged to two writers");
                        writes.acked_at.push(Instant::now());
                    }
                    Err(status) => {
                        writes.lock().unwrap().told.insert(value, format!("{status:?}"));
                        refused(&writes, status);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }

    // Both loads under way before the kill.
    let warm_deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < warm_deadline {
        let served = releases.lock().unwrap().iter().filter(|r| r.result.is_ok()).count();
        if served >= 5 && writes.lock().unwrap().acked.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(writes.lock().unwrap().acked.len() >= 5, "the writers made no progress before the kill");

    // SIGKILL the leader.
    let mut cluster = cluster;
    let killed_at = Instant::now();
    cluster.nodes[first_leader].kill();
    eprintln!("killed the leader, node {}", first_leader + 1);

    // Wait for a release and a write that both began after the kill.
    let recovered = loop {
        let release = releases
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.started > killed_at && r.result.is_ok())
            .map(|r| r.ended)
            .min();
        let wrote = writes.lock().unwrap().acked_at.iter().any(|t| *t > killed_at + Duration::from_millis(500));
        if let (Some(at), true) = (release, wrote) {
            break at;
        }
        assert!(
            killed_at.elapsed() < RECOVERY_BOUND,
            "no successful release and write within {RECOVERY_BOUND:?} of killing the leader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let window = recovered - killed_at;
    // Some more traffic on the new leader, then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let new_leader = cluster.active().await.expect("a new leader");
    assert_ne!(new_leader, first_leader);

    let releases = std::mem::take(&mut *releases.lock().unwrap());
    let writes = std::mem::take(&mut *writes.lock().unwrap());
    let failed: Vec<&Release> = releases.iter().filter(|r| r.result.is_err()).collect();
    let failed_after_kill = failed.iter().filter(|r| r.ended > killed_at).count();
    eprintln!(
        "standby reads {}: unavailability window: {} ms from the kill to the first successful release after it \
         ({} releases, {failed_after_kill} failed after the kill; {} writes acknowledged, refusals {:?})",
        if standby_reads { "on" } else { "off" },
        window.as_millis(),
        releases.len(),
        writes.acked.len(),
        writes.refused,
    );

    // Releases fail closed, with the store's reason code only.
    for r in &failed {
        assert_eq!(r.result.as_ref().err(), Some(&Some("store_unavailable".to_owned())));
    }
    assert!(failed.iter().all(|r| r.ended > killed_at), "a release failed before the kill");
    // Writers are told a conflict or an outage, nothing else.
    for reason in writes.refused.keys() {
        assert!(matches!(reason.as_str(), "version_conflict" | "store_unavailable"), "writer refused with {reason}");
    }

    // Every version served was acknowledged, with the value acknowledged.
    for r in &releases {
        if let Ok((version, value)) = &r.result {
            assert_eq!(
                writes.acked.get(version),
                Some(value),
                "version {version} served but not acknowledged; its writer was told {:?}",
                writes.told.get(value)
            );
        }
    }

    // The store holds exactly the acknowledged versions with their values:
    // none lost, none that no writer was told about.
    let path = format!("secret/metadata/{PREFIX}/{NAME}");
    let (status, meta) = cluster.call(new_leader, "GET", &path, None).await;
    assert_eq!(status, 200, "{meta}");
    let current = meta["data"]["current_version"].as_u64().unwrap();
    assert!(current < MAX_VERSIONS);
    let stored: BTreeMap<u64, Vec<u8>> = {
        let mut stored = BTreeMap::new();
        for version in 1..=current {
            let path = format!("secret/data/{PREFIX}/{NAME}?version={version}");
            let (status, body) = cluster.call(new_leader, "GET", &path, None).await;
            assert_eq!(status, 200, "version {version}: {body}");
            let value = body["data"]["data"]["value"].as_str().unwrap();
            stored.insert(version, base64::engine::general_purpose::STANDARD.decode(value).unwrap());
        }
        stored
    };
    for (version, value) in &stored {
        assert_eq!(
            writes.acked.get(version),
            Some(value),
            "version {version} is in the store but not acknowledged; its writer was told {:?}",
            writes.told.get(value)
        );
    }
    assert_eq!(stored, writes.acked, "the store's versions differ from the acknowledged ones");
    assert!(stored.len() > 5);

    // The same broker still serves the newest version.
    let mut client = KbsClient::connect(&ClientConfig::new(app.guest_url.clone(), app.ca.clone())).await.unwrap();
    let sim = Arc::new(SimulatedSnp::new(Generation::Genoa).measurement(MEASUREMENT));
    let got = client.fetch(sim, &[NAME.to_owned()]).await.unwrap();
    assert_eq!((got[0].version, got[0].value.to_vec()), (current, stored[&current].clone()));
    failed_after_kill
}

/// Standby reads on, node 3 cut off from the leader's Raft traffic (its
/// relay held) so that it lags for certain while it still answers reads.
/// A secret written through the active node (by an operator or another
/// replica) is missing on node 3 only; the broker, which asks node 3
/// first, must not refuse it as `secret_not_found`: a not-found stands only
/// when the active node confirms it, and is `store_unavailable` when no
/// active node it can reach confirms it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_standby_never_turns_a_written_secret_into_not_found() {
    if bao::skip_requested() {
        eprintln!("KBS_SKIP_VAULT_TESTS=1: skipping the OpenBao Raft test");
        return;
    }
    const LAG_PREFIX: &str = "kbs-lag";
    let cluster = &RaftCluster::start_relayed(true, 10).await;
    let leader = cluster.active().await.expect("a leader after set-up");
    assert_ne!(leader, 2, "node 3 joined last and cannot lead yet");
    std::fs::write(cluster.dir.path().join("broker.token"), &cluster.root).unwrap();
    let broker = |addresses: &[usize]| {
        let addresses: Vec<String> = addresses.iter().map(|i| format!("\"{}\"", cluster.nodes[*i].addr)).collect();
        format!(
            "[store]\nkind = \"vault\"\naddress = {}\nfallback_addresses = [{}]\nprefix = \"{LAG_PREFIX}\"\n\
             cache_ttl_ms = 0\nrequest_timeout_seconds = 2\n[store.auth]\nmethod = \"token\"\ntoken_file = \"{}\"\n",
            addresses[0],
            addresses[1..].join(", "),
            cluster.dir.path().join("broker.token").display(),
        )
    };
    // One broker that lists every node, node 3 first; one that knows node
    // 3 only.
    let other = 3 - leader - 2;
    // Policies are read again every second (the first read may come
    // before the store answers).
    let options = |store: String| Options {
        store: Some(store),
        extra_config: "[policy]\nrefresh_seconds = 1\n".into(),
        ..Default::default()
    };
    let all = TestApp::start_with(options(broker(&[2, leader, other]))).await;
    let lone = TestApp::start_with(options(broker(&[2]))).await;
    let fetch = |app: &TestApp, name: &str| {
        let config = ClientConfig::new(app.guest_url.clone(), app.ca.clone());
        let name = name.to_owned();
        async move {
            let mut client = KbsClient::connect(&config).await.unwrap();
            let sim = Arc::new(SimulatedSnp::new(Generation::Genoa).measurement(MEASUREMENT));
            match client.fetch(sim, &[name]).await {
                Ok(got) => Ok((got[0].version, got[0].value.to_vec())),
                Err(e) => Err(e.reason().map(str::to_owned)),
            }
        }
    };
    let write = |name: &str, value: &[u8]| {
        let data = serde_json::json!({"data": {
            "value": base64::engine::general_purpose::STANDARD.encode(value),
            "allowed_measurements": [hex::encode(MEASUREMENT)],
            "write_id": "",
        }});
        let path = format!("secret/data/{LAG_PREFIX}/{name}");
        async move { cluster.call(leader, "POST", &path, Some(data)).await }
    };
    let on_node3 = |name: &str| {
        let path = format!("secret/data/{LAG_PREFIX}/{name}");
        async move { cluster.call(2, "GET", &path, None).await }
    };
    let relay = cluster.relay.as_ref().unwrap();

    // Both brokers serve a secret all nodes have.
    assert_eq!(write("old", b"everywhere").await.0, 200);
    let replicated = Instant::now() + Duration::from_secs(10);
    while on_node3("old").await.0 != 200 {
        assert!(Instant::now() < replicated, "node 3 never received the first secret");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each broker reads its policies from the store in the background
    // after it starts: it refuses releases until then.
    for app in [&all, &lone] {
        let loaded = Instant::now() + Duration::from_secs(30);
        loop {
            match fetch(app, "old").await {
                Err(Some(reason)) if reason == "store_unavailable" && Instant::now() < loaded => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                served => {
                    assert_eq!(served, Ok((1, b"everywhere".to_vec())));
                    break;
                }
            }
        }
    }

    for round in 0..3 {
        let name = format!("fresh-{round}");
        relay.hold();
        let held = Instant::now();
        let (status, body) = write(&name, b"just written").await;
        assert_eq!(status, 200, "{body}");
        // Node 3 cannot have it: nothing reached it since the hold.
        assert_eq!(on_node3(&name).await.0, 404, "node 3 does not lag");
        // Served (from the active node), not refused as missing.
        assert_eq!(fetch(&all, &name).await, Ok((1, b"just written".to_vec())), "round {round}");
        // The same for the admin API.
        let mut admin = all.admin().await;
        let meta = admin.get_secret_metadata(all.authed(GetSecretMetadataRequest { name: name.clone() })).await;
        assert_eq!(meta.map(|m| m.into_inner().version).ok(), Some(1), "round {round}");
        // The broker that cannot reach an active node cannot tell: the
        // store is unavailable, not the secret missing.
        assert_eq!(fetch(&lone, &name).await, Err(Some("store_unavailable".to_owned())), "round {round}");
        // A secret nobody wrote is missing for the active node too.
        assert_eq!(fetch(&all, "never-written").await, Err(Some("secret_not_found".to_owned())), "round {round}");
        relay.release();
        // Well under a second, so node 3 does not call an election.
        eprintln!("round {round}: node 3 held back for {} ms", held.elapsed().as_millis());
        // Once node 3 caught up, both serve the secret.
        let caught_up = Instant::now() + Duration::from_secs(10);
        while on_node3(&name).await.0 != 200 {
            assert!(Instant::now() < caught_up, "node 3 did not catch up after the release");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(fetch(&lone, &name).await, Ok((1, b"just written".to_vec())), "round {round}");
    }
}
