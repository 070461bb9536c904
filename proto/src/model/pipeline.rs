//! The chunk pipeline under encryption and decryption: the calling thread
//! reads chunks into buffers and writes them out in order, `threads`
//! workers seal or open them in between.
//!
//! At most `2 × threads` chunk buffers exist (each in flight or free for
//! reuse), so memory is bounded by the chunk size and the thread count
//! whatever the file's size. Buffers are reused for every chunk, never
//! zero-filled between chunks (each is overwritten by the next read), and
//! zeroized when dropped, on success and on every error.
//!
//! Results are taken in chunk order, so the outcome is the one sequential
//! processing gives: chunks before the first failure are written, and the
//! error is that of the first chunk that failed (a read error of chunk `k`
//! surfaces only after chunks `0..k` were opened and written).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};

use zeroize::Zeroizing;

use super::Error;

/// One chunk buffer (plaintext at some point of its life).
type Buf = Zeroizing<Vec<u8>>;

/// Upper bound on worker threads.
pub(crate) const MAX_THREADS: usize = 256;

/// Chunks in flight per worker: one being processed, one queued, so a
/// worker never waits for the reading thread.
const DEPTH_PER_THREAD: usize = 2;

/// Runs chunks `0..count` through `fill` (read chunk `i` into the buffer,
/// replacing its contents), `crypt` (seal or open it in place) and `drain`
/// (write it out), with `crypt` on `threads` workers; `fill` and `drain`
/// run on the calling thread, `drain` in chunk order. Buffers are created
/// with `capacity` bytes, enough for a chunk and its tag.
pub(crate) fn run<F, C, D>(
    count: u64,
    threads: usize,
    capacity: usize,
    mut fill: F,
    crypt: C,
    mut drain: D,
) -> Result<(), Error>
where
    F: FnMut(u64, &mut Vec<u8>) -> Result<(), Error>,
    C: Fn(u64, &mut Vec<u8>) -> Result<(), Error> + Sync,
    D: FnMut(u64, &[u8]) -> Result<(), Error>,
{
    let threads = threads.clamp(1, MAX_THREADS);
    if threads == 1 || count <= 1 {
        let mut buf: Buf = Zeroizing::new(Vec::with_capacity(capacity));
        for index in 0..count {
            fill(index, &mut buf)?;
            crypt(index, &mut buf)?;
            drain(index, &buf)?;
        }
        return Ok(());
    }
    let (job_tx, job_rx) = channel::<(u64, Buf)>();
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = channel::<(u64, Buf, Result<(), Error>)>();
    let crypt = &crypt;
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let done_tx = done_tx.clone();
            let job_rx = &job_rx;
            scope.spawn(move || {
                loop {
                    // The lock is held only to take one job.
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((index, mut buf)) = job else { return };
                    let result = crypt(index, &mut buf);
                    if done_tx.send((index, buf, result)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        // `job_tx` moves in and is dropped on return, which stops the
        // workers; buffers still queued are dropped (zeroized) with the
        // channels.
        drive(count, threads * DEPTH_PER_THREAD, capacity, &mut fill, &mut drain, job_tx, &done_rx)
    })
}

/// The calling thread's side of [`run`]: keeps up to `depth` chunks in
/// flight and drains them in order.
fn drive<F, D>(
    count: u64,
    depth: usize,
    capacity: usize,
    fill: &mut F,
    drain: &mut D,
    jobs: Sender<(u64, Buf)>,
    done: &Receiver<(u64, Buf, Result<(), Error>)>,
) -> Result<(), Error>
where
    F: FnMut(u64, &mut Vec<u8>) -> Result<(), Error>,
    D: FnMut(u64, &[u8]) -> Result<(), Error>,
{
    let mut free: Vec<Buf> = Vec::with_capacity(depth);
    let mut finished: BTreeMap<u64, (Buf, Result<(), Error>)> = BTreeMap::new();
    let mut next_read = 0u64;
    let mut next_write = 0u64;
    let mut read_error = None;
    while next_write < count {
        while read_error.is_none() && next_read < count && next_read - next_write < depth as u64 {
            let mut buf = free.pop().unwrap_or_else(|| Zeroizing::new(Vec::with_capacity(capacity)));
            match fill(next_read, &mut buf) {
                Ok(()) => {
                    jobs.send((next_read, buf)).map_err(|_| Error::Crypto)?;
                    next_read += 1;
                }
                Err(e) => read_error = Some(e),
            }
        }
        if next_write == next_read {
            // Nothing in flight: every chunk before the failed read was
            // written.
            return Err(read_error.unwrap_or(Error::Crypto));
        }
        let (index, buf, result) = done.recv().map_err(|_| Error::Crypto)?;
        finished.insert(index, (buf, result));
        while let Some((buf, result)) = finished.remove(&next_write) {
            result?;
            drain(next_write, &buf)?;
            free.push(buf);
            next_write += 1;
        }
    }
    Ok(())
}
