//! One OS thread per connection. Each producer and each consumer connects, subscribes and
//! runs its loop on a thread of its own, named `producer-N` or `consumer-N` (as `top -H`
//! shows it), with a current-thread tokio runtime; the client library spawns its reader
//! and writer tasks onto that same runtime, so they never leave the thread either. On one
//! shared multi-thread runtime those tasks were moved between workers, and on a small VM
//! a wake-up that crosses CPUs costs 35 µs or more: a synchronous producer paid several
//! per message inside the load generator itself.
//!
//! The coordination (phases, stop tokens, progress, memory sampling, drain) stays on the
//! caller's runtime and meets these threads only through atomics, cancellation tokens and
//! the join handles here. This module knows nothing of what a connection does.

use anyhow::Context;
use std::future::Future;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A thread driving a current-thread runtime until the value is dropped.
struct ConnectionThread {
    name: String,
    runtime: Handle,
    /// Dropping it ends the thread's runtime: tasks still on it are cancelled, so their
    /// join handles resolve (with an error) instead of hanging the run.
    _shutdown: oneshot::Sender<()>,
}

impl ConnectionThread {
    fn start(name: String) -> anyhow::Result<ConnectionThread> {
        let runtime = Builder::new_current_thread()
            .enable_all()
            .build()
            .with_context(|| format!("failed to build the runtime of thread {name}"))?;
        let handle = runtime.handle().clone();
        let (shutdown, dropped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                // Tasks spawned through the handle run only while this thread is inside
                // `block_on`, so it stays there for the thread's whole life.
                runtime.block_on(async {
                    let _ = dropped.await;
                });
                // Readers of closed connections must not hold the thread up.
                runtime.shutdown_background();
            })
            .with_context(|| format!("failed to start thread {name}"))?;
        Ok(ConnectionThread { name, runtime: handle, _shutdown: shutdown })
    }

    /// Runs `work` on this thread's runtime.
    fn spawn<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> JoinHandle<T> {
        self.runtime.spawn(work)
    }

    async fn join<T>(&self, task: JoinHandle<T>) -> anyhow::Result<T> {
        task.await.with_context(|| format!("the task on thread {} failed", self.name))
    }
}

/// A connection made on its own thread, waiting for the work that will use it there.
pub struct OnThread<C> {
    thread: ConnectionThread,
    connection: C,
}

impl<C: Send + 'static> OnThread<C> {
    /// The connection, e.g. to read its CONNECTED headers or watch its events from the
    /// caller's runtime.
    pub fn connection(&self) -> &C {
        &self.connection
    }

    /// Runs `work` with the connection on the connection's thread. The thread ends when
    /// the returned task has been joined or dropped.
    pub fn run<T, F, Fut>(self, work: F) -> ThreadTask<T>
    where
        F: FnOnce(C) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let task = self.thread.spawn(work(self.connection));
        ThreadTask { task, thread: self.thread }
    }
}

/// Work running on a connection's thread.
pub struct ThreadTask<T> {
    task: JoinHandle<T>,
    thread: ConnectionThread,
}

impl<T> ThreadTask<T> {
    /// The work's result; an error when it panicked.
    pub async fn join(self) -> anyhow::Result<T> {
        self.thread.join(self.task).await
    }
}

/// Makes `count` connections concurrently, connection `i` on a new thread named
/// `{role}-{i}` by the future `connect(i)`, which runs there. Fails when any fails; the
/// threads of the others end then too.
pub async fn connect_all<C, F, Fut>(role: &str, count: u32, connect: F) -> anyhow::Result<Vec<OnThread<C>>>
where
    C: Send + 'static,
    F: Fn(u32) -> Fut,
    Fut: Future<Output = anyhow::Result<C>> + Send + 'static,
{
    futures::future::try_join_all((0..count).map(|i| {
        let thread = ConnectionThread::start(format!("{role}-{i}"));
        let work = connect(i);
        async move {
            let thread = thread?;
            let connection = thread.join(thread.spawn(work)).await??;
            Ok(OnThread { thread, connection })
        }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn given_connections_when_run_should_run_each_on_its_own_named_thread() -> anyhow::Result<()> {
        let on_threads = connect_all("producer", 2, |i| async move { Ok(i) }).await?;
        let mut tasks = Vec::new();
        for on_thread in on_threads {
            tasks.push(on_thread.run(|i| async move { (i, std::thread::current().name().map(str::to_string)) }));
        }
        let mut seen = Vec::new();
        for task in tasks {
            seen.push(task.join().await?);
        }
        assert_eq!(seen, vec![(0, Some("producer-0".to_string())), (1, Some("producer-1".to_string()))]);
        Ok(())
    }

    #[tokio::test]
    async fn given_work_that_panics_when_joined_should_fail_instead_of_hanging() -> anyhow::Result<()> {
        let mut on_threads = connect_all("consumer", 1, |_| async { Ok(()) }).await?;
        let task = on_threads.remove(0).run(|()| async { panic!("boom") });
        let error = task.join().await.expect_err("a panic must be an error");
        assert!(format!("{error:#}").contains("consumer-0"), "{error:#}");
        Ok(())
    }

    #[tokio::test]
    async fn given_a_failing_connect_should_return_its_error() {
        let result = connect_all("consumer", 2, |i| async move {
            if i == 1 {
                anyhow::bail!("refused");
            }
            Ok(i)
        })
        .await;
        assert!(result.is_err_and(|e| format!("{e:#}").contains("refused")));
    }
}
