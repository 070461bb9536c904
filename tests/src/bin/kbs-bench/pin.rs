//! `--pin`: a spawned broker on a CPU of its own (Linux).
//!
//! On a machine with few cores the broker, the simulated guests and the
//! flooding peer otherwise share every core, and a latency then measures
//! the machine's contention as much as the broker. With `--pin` the
//! broker's threads (`kbs-broker*`, `kbs-audit*`) may run on the first CPU
//! this process was allowed only and every other thread on the others, where the flooding
//! peer's threads run at the lowest priority: they get what the guests
//! leave. What the broker spends on the flood then competes with the
//! guests' releases on the broker's own CPU, as in a deployment where the
//! flood comes from another machine.
//!
//! Threads are assigned by name; threads started later are assigned when
//! [`threads`] is called again (before each phase, and after the flooding
//! peer starts).

use std::sync::OnceLock;

use anyhow::{Context, bail};
use rustix::io::Errno;
use rustix::process::{Pid, setpriority_process};
use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// Name prefixes of the broker's threads.
const BROKER: &[&str] = &["kbs-broker", "kbs-audit"];

/// What [`threads`] did: the broker's threads, the others, and how many of
/// those run at the lowest priority.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pinned {
    pub broker: usize,
    pub others: usize,
    pub lowest_priority: usize,
}

/// Puts this process's threads named `kbs-broker*` or `kbs-audit*` on the
/// first CPU it was allowed and the rest on the others, those named with a prefix in `lowest` at
/// the lowest priority (nice 19).
pub fn threads(lowest: &[&str]) -> anyhow::Result<Pinned> {
    let cpus = allowed()?;
    let (Some(&first), rest) = (cpus.first(), cpus.get(1..).unwrap_or_default()) else {
        bail!("--pin: this process may use no CPU");
    };
    if rest.is_empty() {
        bail!("--pin needs at least 2 CPUs, this process may use 1");
    }
    let (broker_set, others_set) = (cpu_set(&[first]), cpu_set(rest));
    let mut pinned = Pinned::default();
    for entry in std::fs::read_dir("/proc/self/task").context("listing this process's threads")?.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()).and_then(Pid::from_raw) else {
            continue;
        };
        // A thread may end between the listing and here: skip it.
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else { continue };
        let broker = BROKER.iter().any(|p| comm.starts_with(p));
        match sched_setaffinity(Some(tid), if broker { &broker_set } else { &others_set }) {
            Ok(()) => {}
            Err(Errno::SRCH) => continue,
            Err(e) => bail!("sched_setaffinity({tid:?}): {e}"),
        }
        if broker {
            pinned.broker += 1;
            continue;
        }
        pinned.others += 1;
        if lowest.iter().any(|p| comm.starts_with(p)) {
            // On Linux a thread id names that thread alone.
            match setpriority_process(Some(tid), 19) {
                Ok(()) => pinned.lowest_priority += 1,
                Err(Errno::SRCH) => {}
                Err(e) => bail!("setpriority({tid:?}): {e}"),
            }
        }
    }
    Ok(pinned)
}

/// The CPUs this process was allowed when first asked (before any pinning).
fn allowed() -> anyhow::Result<&'static [usize]> {
    static ALLOWED: OnceLock<Vec<usize>> = OnceLock::new();
    if let Some(cpus) = ALLOWED.get() {
        return Ok(cpus);
    }
    let set = sched_getaffinity(None).context("sched_getaffinity")?;
    let cpus = (0..CpuSet::MAX_CPU).filter(|&cpu| set.is_set(cpu)).collect();
    Ok(ALLOWED.get_or_init(|| cpus))
}

fn cpu_set(cpus: &[usize]) -> CpuSet {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu);
    }
    set
}
