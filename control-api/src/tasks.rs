//! The replica's background tasks (change and flow-notice listeners, flow writers, cache
//! invalidation, identity collection, partition maintenance), owned by one handle: every
//! task is started through it, and [`Tasks::shutdown`] stops and joins them all. Dropping
//! the last handle (a test's state going away) stops them too.

use std::future::Future;
use std::sync::Mutex;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Tasks {
    stop: CancellationToken,
    running: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Starts `task`; it ends when it returns or when the tasks are stopped, whichever
    /// comes first (at its next `.await`).
    pub fn spawn(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        let handle = tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = task => {}
            }
        });
        self.push(name, handle);
    }

    fn push(&self, name: &'static str, handle: JoinHandle<()>) {
        let mut running = self.lock();
        // Forget the ones that ended on their own.
        running.retain(|(_, h)| !h.is_finished());
        running.push((name, handle));
    }

    /// Starts `task`, which watches [`Tasks::stopping`] itself and ends when it may
    /// (e.g. between two writes); [`Tasks::shutdown`] waits for it.
    pub fn spawn_until_idle(
        &self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.push(name, tokio::spawn(task));
    }

    /// A token that is cancelled when the tasks are told to stop: for a task that must
    /// finish a step before it stops (it selects on this itself).
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops every task and waits until each has ended.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let running = std::mem::take(&mut *self.lock());
        for (name, handle) in running {
            if let Err(e) = handle.await {
                tracing::warn!(task = name, error = %e, "background task failed");
            }
        }
    }

    /// Tasks started and not yet ended.
    pub fn running(&self) -> usize {
        self.lock().iter().filter(|(_, h)| !h.is_finished()).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(&'static str, JoinHandle<()>)>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_stops_and_joins_every_task() {
        let tasks = Tasks::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("forever", async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        tasks.spawn("done", async {});
        tasks.shutdown().await;
        assert_eq!(tasks.running(), 0);
        // The task's future was dropped: its end of the channel is gone.
        assert!(rx.await.is_err());
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_the_tasks() {
        let tasks = Tasks::new();
        let stopping = tasks.stopping();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("forever", async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(tasks);
        assert!(stopping.is_cancelled());
        assert!(rx.await.is_err());
    }
}
