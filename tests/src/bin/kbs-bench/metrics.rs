//! `--metrics-overhead`: what the broker's metrics cost per release.
//!
//! Two brokers run in this process, each on a runtime of its own: one
//! without `[metrics]` (it records nothing), on threads named
//! `kbs-broker`, and one with its metrics listener, on threads named
//! [`THREADS`], scraped every [`SCRAPE_EVERY`] as Prometheus would while
//! it is under load. Each round runs one phase against each broker at the
//! same concurrency, in alternating order (so that a drift of the machine
//! does not always favour one), and the difference of their broker CPU
//! per release is the cost of recording the metrics and serving the
//! scrapes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;

use super::{Args, CpuSource, Load, Spawned, print_phase, run_phase};

/// Name prefix of the threads of the broker with metrics.
pub const THREADS: &str = "kbs-mbroker";

/// How often the broker with metrics is scraped.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// The series a scrape must have, and whose value tells that the broker
/// under load recorded its releases.
const RELEASES_ALLOWED: &str = r#"kbs_releases_total{tee="snp",decision="allow",reason="ok"}"#;

/// The second broker's load and accounting.
pub struct OverheadRun {
    template: Load,
    cpu: CpuSource,
    url: String,
    http: reqwest::Client,
}

impl OverheadRun {
    /// The load of `template` (the broker without metrics) aimed at
    /// `with`, the broker with metrics.
    pub fn new(with: &Spawned, template: &Load) -> anyhow::Result<Self> {
        let url = with.metrics_url.clone().context("the second broker has no metrics listener")?;
        let mut load = template.with(template.deadline, 0);
        load.config = attester_client::client::ClientConfig::new(with.url.clone(), with.ca.clone());
        // Loopback only: no proxy from the environment.
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build()?;
        println!(
            "metrics overhead: without metrics on threads named kbs-broker*, with metrics on threads named {THREADS}*, {url} scraped every {} s",
            SCRAPE_EVERY.as_secs()
        );
        Ok(Self { template: load, cpu: CpuSource::Threads(&[THREADS]), url, http })
    }

    /// `rounds` pairs of phases at `concurrency`, then the median CPU per
    /// release of each broker and the median, smallest and largest
    /// difference of the rounds. True if a release or a scrape failed.
    #[allow(clippy::too_many_arguments)]
    pub async fn compare(
        &self,
        args: &Args,
        template: &Load,
        rounds: usize,
        concurrency: usize,
        cpu: &CpuSource,
        tick: f64,
        floor: Option<&(dyn Fn() -> anyhow::Result<f64> + Sync)>,
    ) -> anyhow::Result<bool> {
        let rounds = rounds.max(1);
        let (mut without, mut with, mut differences, mut floors) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut failed = false;
        let mut scrapes = 0;
        for round in 1..=rounds {
            let mut pair = [None, None];
            // Odd rounds start without metrics, even rounds with them.
            for metrics in [round % 2 == 0, round % 2 != 0] {
                let phase = match metrics {
                    false => {
                        println!("       round {round}: without metrics");
                        run_phase(args, template, concurrency, cpu, tick, floor).await?
                    }
                    true => {
                        println!("       round {round}: with metrics, scraped every {} s", SCRAPE_EVERY.as_secs());
                        let scraper = Scraper::start(self.http.clone(), self.url.clone());
                        let phase = run_phase(args, &self.template, concurrency, &self.cpu, tick, floor).await;
                        let (ok, bad, recorded) = scraper.stop();
                        let phase = phase?;
                        println!("       scrapes: {ok} answered, {bad} failed; {recorded} releases recorded so far");
                        failed |= bad > 0 || ok == 0 || recorded == 0;
                        scrapes += ok;
                        phase
                    }
                };
                print_phase(&phase);
                failed |= !phase.errors.is_empty() || phase.ok == 0;
                floors.extend(phase.floor());
                if let Some(slot) = pair.get_mut(usize::from(metrics)) {
                    *slot = phase.cpu_per_release_us;
                }
            }
            if let [Some(off), Some(on)] = pair {
                without.push(off);
                with.push(on);
                differences.push((on / off - 1.0) * 100.0);
                println!(
                    "       round {round}: {off:.0} us without, {on:.0} us with metrics: {:+.1}%",
                    (on / off - 1.0) * 100.0
                );
            }
        }
        let (off, on, difference, floor) =
            (median(&mut without), median(&mut with), median(&mut differences), median(&mut floors));
        let spread = |v: &[f64]| v.first().zip(v.last()).map(|(a, b)| format!("{a:+.1}% .. {b:+.1}%"));
        match (off, on, difference) {
            (Some(off), Some(on), Some(difference)) => println!(
                "{concurrency:>4} guests, {rounds} rounds: broker CPU per release {off:.0} us without metrics, {on:.0} us with metrics ({scrapes} scrapes): {difference:+.1}% (median; rounds {}){}",
                spread(&differences).unwrap_or_default(),
                floor.map(|f| format!("; floor {f:.0} us")).unwrap_or_default(),
            ),
            _ => println!("{concurrency:>4} guests: no broker CPU accounting, no comparison"),
        }
        Ok(failed)
    }
}

/// The median of `values` (sorted in place), if any.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

/// A scraper: `GET /metrics` every [`SCRAPE_EVERY`], the first at once.
struct Scraper {
    /// Scrapes answered with the releases series, and failed.
    counts: Arc<(AtomicU64, AtomicU64)>,
    /// The releases allowed in the last answered scrape.
    recorded: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Scraper {
    fn start(http: reqwest::Client, url: String) -> Self {
        let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let recorded = Arc::new(AtomicU64::new(0));
        let task = {
            let (counts, recorded) = (Arc::clone(&counts), Arc::clone(&recorded));
            tokio::spawn(async move {
                let mut every = tokio::time::interval(SCRAPE_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    match scrape(&http, &url).await {
                        Some(allowed) => {
                            recorded.store(allowed, Ordering::Relaxed);
                            counts.0.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {
                            counts.1.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        Self { counts, recorded, task }
    }

    /// Stops it: (scrapes answered, scrapes failed, releases recorded).
    fn stop(self) -> (u64, u64, u64) {
        self.task.abort();
        let (ok, bad) = &*self.counts;
        (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed), self.recorded.load(Ordering::Relaxed))
    }
}

/// One scrape: the releases allowed, if it was answered with them.
async fn scrape(http: &reqwest::Client, url: &str) -> Option<u64> {
    let response = http.get(url).send().await.ok()?.error_for_status().ok()?;
    let text = response.text().await.ok()?;
    let line = text.lines().find(|l| l.rsplit_once(' ').is_some_and(|(series, _)| series == RELEASES_ALLOWED))?;
    line.rsplit_once(' ')?.1.parse().ok()
}
