//! The HTTP/2 streams of one client connection, run inside that connection's own task.
//!
//! hyper's HTTP/2 server hands every stream to its executor; with tokio's, that is a task per
//! request, scheduled again when the backend's answer comes, which then wakes the
//! connection's task to write it. Here the executor only queues the stream, and the
//! connection's task polls its streams itself, right before it polls the connection, so an
//! answer is written in the same turn that produced it, and no task is made per request.
//! A connection's streams never ran in parallel anyway: its L7 thread has one worker.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use parking_lot::Mutex;

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor hyper is given: it keeps the streams hyper starts for [`Streams`] to run.
#[derive(Clone, Default)]
pub(crate) struct StreamQueue(Arc<Queue>);

#[derive(Default)]
struct Queue {
    /// Set with every stream queued: an HTTP/1.1 connection, which never queues one, costs
    /// one load per poll.
    queued: AtomicBool,
    streams: Mutex<Vec<StreamFuture>>,
}

impl<F> hyper::rt::Executor<F> for StreamQueue
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        self.0.streams.lock().push(Box::pin(stream));
        self.0.queued.store(true, Ordering::Release);
    }
}

/// The streams of one connection, and the queue its executor fills.
#[derive(Default)]
pub(crate) struct Streams {
    queue: StreamQueue,
    running: FuturesUnordered<StreamFuture>,
}

impl Streams {
    /// The executor for the connection's builder.
    pub(crate) fn executor(&self) -> StreamQueue {
        self.queue.clone()
    }

    /// Polls the streams, then the connection, and the streams that poll started (each
    /// once, so that it sends its request before the turn ends). When the connection ends,
    /// streams still running are dropped: nobody is left to answer.
    pub(crate) fn poll_connection<C: Future>(
        &mut self,
        mut connection: Pin<&mut C>,
        cx: &mut Context<'_>,
    ) -> Poll<C::Output> {
        loop {
            if !self.running.is_empty() {
                while let Poll::Ready(Some(())) = self.running.poll_next_unpin(cx) {}
            }
            let polled = connection.as_mut().poll(cx);
            if polled.is_ready() {
                return polled;
            }
            if !self.queue.0.queued.swap(false, Ordering::Acquire) {
                return Poll::Pending;
            }
            self.running.extend(self.queue.0.streams.lock().drain(..));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.running.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor as _;

    #[tokio::test]
    async fn queued_streams_run_in_the_connection_task_and_end_with_it() {
        let mut streams = Streams::default();
        let executor = streams.executor();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // A connection that starts two streams, then waits for `rx`.
        let started = Arc::clone(&done);
        let connection = async move {
            for _ in 0..2 {
                let done = Arc::clone(&started);
                executor.execute(async move {
                    tokio::task::yield_now().await;
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
            let _ = rx.await;
            "ended"
        };
        tokio::pin!(connection);
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            std::future::poll_fn(|cx| streams.poll_connection(connection.as_mut(), cx)),
        )
        .await;
        assert!(waiting.is_err(), "the connection waits for rx");
        assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(streams.len(), 0, "finished streams are gone");
        tx.send(()).unwrap();
        let ended =
            std::future::poll_fn(|cx| streams.poll_connection(connection.as_mut(), cx)).await;
        assert_eq!(ended, "ended");
    }
}
