//! The threads that serve L7 client connections: each runs a current-thread tokio runtime,
//! and each accepted connection goes to the next thread in turn and stays there, with its
//! requests and the upstream connections they open.
//!
//! Why not the caller's multi-thread runtime: a request that wakes an upstream HTTP/2
//! connection task runs it at once there (the scheduler's LIFO slot), so every request is
//! written to the backend in a syscall of its own. On a current-thread runtime the woken
//! connection task queues behind the other client connections that are ready, and writes
//! all of their requests in one syscall; answers come back batched the same way. That and
//! the absence of cross-thread wake-ups make each request cheaper.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// A set of L7 threads; dropping it stops them (their connections are dropped with them).
#[derive(Debug)]
pub(crate) struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `threads` threads (at least one).
    pub(crate) fn start(threads: usize) -> io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(threads.max(1));
        for index in 0..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let stopped = stop.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("switchyard-l7-{index}"))
                .spawn(move || {
                    runtime.block_on(stopped.cancelled());
                    debug!(index, "L7 thread stopped");
                });
            if let Err(error) = spawned {
                stop.cancel();
                return Err(error);
            }
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// The thread the next connection goes to.
    pub(crate) fn next(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.handles.len()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_each_thread_in_turn_and_threads_stop_on_drop() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.len(), 2);
        let names: Vec<String> = (0..4)
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::channel();
                workers.next().spawn(async move {
                    tx.send(std::thread::current().name().unwrap_or("").to_owned())
                        .unwrap();
                });
                rx.recv().unwrap()
            })
            .collect();
        assert_eq!(
            names,
            [
                "switchyard-l7-0",
                "switchyard-l7-1",
                "switchyard-l7-0",
                "switchyard-l7-1"
            ]
        );
        let handle = workers.next().clone();
        drop(workers);
        // A stopped runtime drops what is spawned on it without running it.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(handle.spawn(async move {
            tx.send(()).unwrap();
        }));
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err()
        );
    }
}
