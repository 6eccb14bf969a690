//! The write side of an AMQP client's stream. fe2o3's connection engine writes and
//! flushes every frame by itself, one syscall each (perf showed it as the biggest cost
//! per message at credit 64). Here what it writes collects in a buffer, and a task of the
//! connection's own writes all that is there in one write and flush: frames the engine
//! sends while the socket is busy or the writer not yet scheduled (a run of transfers,
//! dispositions and flows) leave together. A lone frame waits for nothing: the writer is
//! woken with the first byte and runs as soon as a worker is free (no timer, no
//! threshold). The engine's flush returns at once: on TCP a flush never waited for the
//! peer anyway, only for the kernel to take the bytes, which the writer now does.
//!
//! Backpressure: the engine waits for room once [`LIMIT`] bytes wait (so at most about
//! twice that is held: the batch being written and the next one). An error of the socket
//! comes back to the engine on its next write, flush or shutdown; a shutdown (fe2o3's
//! close) returns once what was written before it has left and the socket's write side
//! is shut. Dropping the [`Outbox`] writes out what is left and shuts the write side too.

use parking_lot::Mutex;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// The bytes waiting before the engine's writes wait for room.
const LIMIT: usize = 256 * 1024;
/// A batch buffer larger than this after a burst is given back rather than kept.
const KEEP: usize = 1024 * 1024;

/// The engine's handle: an `AsyncWrite` that hands bytes to the writer task.
#[derive(Debug)]
pub struct Outbox {
    shared: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// Written by the engine, not yet taken by the writer.
    bytes: Vec<u8>,
    /// The engine shut the stream down or dropped it: write what is left, then shut.
    closing: bool,
    /// The writer is done (shut down, or failed).
    closed: bool,
    /// Why the socket failed: every later write, flush or shutdown returns it.
    failed: Option<(io::ErrorKind, String)>,
    /// The writer, parked with nothing to write.
    writer: Option<Waker>,
    /// The engine, waiting for room or for the shutdown.
    engine: Option<Waker>,
}

impl State {
    fn error(&self) -> Option<io::Error> {
        self.failed.as_ref().map(|(kind, message)| io::Error::new(*kind, message.clone()))
    }

    fn fail(&mut self, e: &io::Error) {
        if self.failed.is_none() {
            self.failed = Some((e.kind(), e.to_string()));
        }
    }
}

impl Outbox {
    /// The engine's side, and the writer task's future over `sink` (to spawn).
    pub fn new<W>(sink: W) -> (Outbox, impl std::future::Future<Output = ()> + Send + 'static)
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Mutex::new(State::default()));
        (Outbox { shared: Arc::clone(&shared) }, write_out(shared, sink))
    }
}

/// Writes what the engine hands over, all that waits in one write and flush, until the
/// engine shuts down or drops its side (then what is left, and the shutdown) or the socket
/// fails.
async fn write_out<W: AsyncWrite + Unpin>(shared: Arc<Mutex<State>>, mut sink: W) {
    let mut batch = Vec::new();
    loop {
        let closing = std::future::poll_fn(|cx| {
            let mut state = shared.lock();
            if !state.bytes.is_empty() {
                std::mem::swap(&mut state.bytes, &mut batch);
                let engine = state.engine.take();
                drop(state);
                // Room again for an engine that waited for it.
                if let Some(engine) = engine {
                    engine.wake();
                }
                return Poll::Ready(false);
            }
            if state.closing {
                return Poll::Ready(true);
            }
            state.writer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let result = if closing {
            sink.shutdown().await
        } else {
            match sink.write_all(&batch).await {
                Ok(()) => sink.flush().await,
                Err(e) => Err(e),
            }
        };
        if batch.capacity() > KEEP {
            batch = Vec::new();
        }
        batch.clear();
        if closing || result.is_err() {
            let mut state = shared.lock();
            if let Err(e) = &result {
                state.fail(e);
            }
            state.closed = true;
            state.bytes = Vec::new();
            let engine = state.engine.take();
            drop(state);
            if let Some(engine) = engine {
                engine.wake();
            }
            return;
        }
    }
}

impl AsyncWrite for Outbox {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut state = self.shared.lock();
        if let Some(e) = state.error() {
            return Poll::Ready(Err(e));
        }
        if state.closing || state.closed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "the AMQP stream was shut down")));
        }
        if state.bytes.len() >= LIMIT {
            state.engine = Some(cx.waker().clone());
            return Poll::Pending;
        }
        state.bytes.extend_from_slice(buf);
        let writer = state.writer.take();
        drop(state);
        if let Some(writer) = writer {
            writer.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.shared.lock().error() {
            Some(e) => Poll::Ready(Err(e)),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        if state.closed {
            return Poll::Ready(state.error().map_or(Ok(()), Err));
        }
        state.closing = true;
        state.engine = Some(cx.waker().clone());
        let writer = state.writer.take();
        drop(state);
        if let Some(writer) = writer {
            writer.wake();
        }
        Poll::Pending
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closing = true;
        let writer = state.writer.take();
        drop(state);
        if let Some(writer) = writer {
            writer.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A socket that records each write it takes, and fails once told to.
    #[derive(Default)]
    struct Socket {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        shut: Arc<std::sync::atomic::AtomicBool>,
        fail: bool,
    }

    impl AsyncWrite for Socket {
        fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            if self.fail {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer")));
            }
            self.writes.lock().push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut.store(true, std::sync::atomic::Ordering::SeqCst);
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn given_frames_written_before_the_writer_runs_should_send_them_in_one_write() {
        let socket = Socket::default();
        let (writes, shut) = (Arc::clone(&socket.writes), Arc::clone(&socket.shut));
        let (mut outbox, writer) = Outbox::new(socket);
        let writer = tokio::spawn(writer);
        for frame in [&b"one"[..], b"two", b"three"] {
            outbox.write_all(frame).await.expect("write");
            outbox.flush().await.expect("flush");
        }
        // The writer runs once this task waits: all three in one write.
        tokio::task::yield_now().await;
        assert_eq!(*writes.lock(), vec![b"onetwothree".to_vec()]);
        outbox.write_all(b"four").await.expect("write");
        outbox.shutdown().await.expect("shutdown");
        assert_eq!(writes.lock().last().map(Vec::as_slice), Some(&b"four"[..]), "what was written before the shutdown left before it");
        assert!(shut.load(std::sync::atomic::Ordering::SeqCst));
        writer.await.expect("writer");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn given_a_failed_socket_should_return_its_error_on_the_next_write() {
        let (mut outbox, writer) = Outbox::new(Socket { fail: true, ..Socket::default() });
        outbox.write_all(b"frame").await.expect("taken before the writer ran");
        writer.await;
        let e = outbox.write_all(b"next").await.expect_err("the socket failed");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(outbox.shutdown().await.expect_err("failed").kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn given_a_dropped_outbox_should_write_what_is_left_and_shut_down() {
        let socket = Socket::default();
        let (writes, shut) = (Arc::clone(&socket.writes), Arc::clone(&socket.shut));
        let (mut outbox, writer) = Outbox::new(socket);
        outbox.write_all(b"close").await.expect("write");
        drop(outbox);
        writer.await;
        assert_eq!(*writes.lock(), vec![b"close".to_vec()]);
        assert!(shut.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn given_a_full_buffer_should_wait_for_the_writer_to_take_it() {
        let socket = Socket::default();
        let writes = Arc::clone(&socket.writes);
        let (mut outbox, writer) = Outbox::new(socket);
        let big = vec![7u8; LIMIT];
        outbox.write_all(&big).await.expect("write");
        let mut next = Box::pin(outbox.write_all(b"more"));
        assert!(futures::poll!(next.as_mut()).is_pending(), "no room until the writer takes the buffer");
        let writer = tokio::spawn(writer);
        next.await.expect("room again");
        drop(outbox);
        writer.await.expect("writer");
        assert_eq!(writes.lock().concat().len(), LIMIT + 4);
    }
}
