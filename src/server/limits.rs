//! Limits on the data queries, so that one API client cannot slow down the others.
//!
//! Every data request runs its DuckDB work through [`QueryLimits::run`]:
//! - at most `per_key` queries of one API key at once; one more waits for its key's place
//!   until its deadline (then 429): a burst of one client queues behind itself;
//! - at most `global` queries at once in all; one more waits for a place until its deadline
//!   (then 503);
//! - a deadline per request (`timeout`, from its arrival): past it, or when the request is
//!   dropped because its client went away, DuckDB is interrupted and the query stops.
//!
//! A query's place is held until DuckDB has really stopped, so an interrupted query still
//! counts until its thread is free again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default deadline of one data request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of the most data queries at once, in all.
pub const DEFAULT_GLOBAL: usize = 8;
/// Default of the most data queries at once for one API key.
pub const DEFAULT_PER_KEY: usize = 4;

/// Why a query did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The key had its most queries running until the deadline.
    #[error(
        "this API key had as many queries running as it may have at once ({limit}) until this one's deadline: send fewer at a time"
    )]
    KeyBusy {
        /// The per-key limit.
        limit: usize,
    },
    /// No place freed up before the deadline.
    #[error("the server is busy with other queries: retry in a moment")]
    ServerBusy,
    /// The query ran past its deadline and was stopped.
    #[error(
        "the query took longer than {secs} s and was stopped: narrow it (fewer or sharper comparisons, a smaller pageSize)"
    )]
    TimedOut {
        /// The deadline, in seconds.
        secs: u64,
    },
    /// The query's thread panicked.
    #[error("the query failed: {0}")]
    Panicked(String),
}

/// The limits, and the queries running now.
pub struct QueryLimits {
    /// Deadline of one request.
    pub timeout: Duration,
    /// Most queries at once per key.
    pub per_key: usize,
    global: Arc<Semaphore>,
    keys: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits::new(DEFAULT_TIMEOUT, DEFAULT_GLOBAL, DEFAULT_PER_KEY)
    }
}

/// Interrupts a DuckDB connection when dropped, unless disarmed: a query whose request
/// timed out or was dropped stops instead of running on.
struct InterruptOnDrop(Option<Arc<duckdb::InterruptHandle>>);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.interrupt();
        }
    }
}

impl QueryLimits {
    /// Limits with a deadline, a global and a per-key bound (each at least 1).
    pub fn new(timeout: Duration, global: usize, per_key: usize) -> Self {
        QueryLimits {
            timeout,
            per_key: per_key.max(1),
            global: Arc::new(Semaphore::new(global.max(1))),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// The semaphore of `key`'s places (keys with none taken are forgotten now and then).
    fn key_places(&self, key: &str) -> Arc<Semaphore> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if keys.len() >= 10_000 {
            keys.retain(|_, places| places.available_permits() < self.per_key);
        }
        keys.entry(key.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_key)))
            .clone()
    }

    /// A place for `key` and one in all, waited for until `deadline`.
    async fn places(
        &self,
        key: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), Refusal> {
        let slot = tokio::time::timeout_at(deadline, self.key_places(key).acquire_owned())
            .await
            .map_err(|_| Refusal::KeyBusy {
                limit: self.per_key,
            })?
            .map_err(|_| Refusal::ServerBusy)?;
        let permit = tokio::time::timeout_at(deadline, self.global.clone().acquire_owned())
            .await
            .map_err(|_| Refusal::ServerBusy)?
            .map_err(|_| Refusal::ServerBusy)?;
        Ok((slot, permit))
    }

    /// Runs `work` (no DuckDB in it: rows in memory) on a blocking thread, for `key`, within
    /// the same places as queries. Past the deadline the request is answered 503 and the work
    /// ends on its own (it is bounded by the rows in memory).
    pub async fn run_in_memory<T: Send + 'static>(
        &self,
        key: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Refusal> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let places = self.places(key, deadline).await?;
        let task = tokio::task::spawn_blocking(move || {
            let _places = places;
            work()
        });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => Err(Refusal::Panicked(e.to_string())),
            Err(_) => Err(Refusal::TimedOut {
                secs: self.timeout.as_secs_f64().ceil() as u64,
            }),
        }
    }

    /// Runs `work` on `conn` on a blocking thread, for `key`, within the limits.
    pub async fn run<T: Send + 'static>(
        &self,
        key: &str,
        conn: duckdb::Connection,
        work: impl FnOnce(&duckdb::Connection) -> duckdb::Result<T> + Send + 'static,
    ) -> Result<duckdb::Result<T>, Refusal> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let (slot, permit) = self.places(key, deadline).await?;
        let mut interrupt = InterruptOnDrop(Some(conn.interrupt_handle()));
        // the places go with the work: given back when DuckDB is done, not when the request is
        let task = tokio::task::spawn_blocking(move || {
            let _places = (slot, permit);
            work(&conn)
        });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(result)) => {
                interrupt.0 = None;
                Ok(result)
            }
            Ok(Err(e)) => Err(Refusal::Panicked(e.to_string())),
            Err(_) => Err(Refusal::TimedOut {
                secs: self.timeout.as_secs_f64().ceil() as u64,
            }),
        }
    }

    /// Queries running now, in all.
    pub fn running(&self) -> usize {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.values()
            .map(|places| self.per_key - places.available_permits())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query DuckDB needs tens of seconds for (finite, so that a broken interrupt makes
    /// the test fail rather than hang).
    const ENDLESS: &str = "SELECT count(*) FROM range(30000000000) a WHERE a.range % 7 = 3";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_query_past_its_deadline_is_interrupted_and_gives_its_place_back() {
        let limits = QueryLimits::new(Duration::from_millis(300), 1, 1);
        let conn = duckdb::Connection::open_in_memory().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let started = std::time::Instant::now();
        let refused = limits
            .run("key", conn, move |c| {
                let r = c.query_row(ENDLESS, [], |r| r.get::<_, i64>(0));
                let _ = tx.send(r.is_err());
                r
            })
            .await;
        assert!(
            matches!(refused, Err(Refusal::TimedOut { .. })),
            "{refused:?}"
        );
        // DuckDB stopped: the query's thread ends with an error soon after the deadline.
        let failed = rx
            .recv_timeout(Duration::from_secs(3))
            .expect("the query ran on after its deadline");
        assert!(failed);
        assert!(started.elapsed() < Duration::from_secs(4));
        // Its places are free again: another query of the same key runs.
        let conn = duckdb::Connection::open_in_memory().unwrap();
        let n = limits
            .run("key", conn, |c| {
                c.query_row("SELECT 42", [], |r| r.get::<_, i64>(0))
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 42);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_dropped_midway_interrupts_its_query() {
        let limits = QueryLimits::new(Duration::from_secs(600), 2, 2);
        let conn = duckdb::Connection::open_in_memory().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let request = limits.run("key", conn, move |c| {
            let r = c.query_row(ENDLESS, [], |r| r.get::<_, i64>(0));
            let _ = tx.send(r.is_err());
            r
        });
        // The client goes away after 200 ms: its request's future is dropped.
        let _ = tokio::time::timeout(Duration::from_millis(200), request).await;
        let failed = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(3)))
            .await
            .unwrap()
            .expect("the query ran on after its request was dropped");
        assert!(failed);
    }

    #[tokio::test]
    async fn a_key_at_its_limit_waits_then_is_refused_while_others_run() {
        let limits = Arc::new(QueryLimits::new(Duration::from_millis(500), 4, 1));
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let held = {
            let limits = limits.clone();
            tokio::spawn(async move {
                let conn = duckdb::Connection::open_in_memory().unwrap();
                limits
                    .run("busy", conn, move |_| {
                        let _ = hold_rx.recv();
                        Ok(())
                    })
                    .await
            })
        };
        while limits.running() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let conn = duckdb::Connection::open_in_memory().unwrap();
        let second = limits.run("busy", conn, |_| Ok(())).await;
        assert!(
            matches!(second, Err(Refusal::KeyBusy { limit: 1 })),
            "{second:?}"
        );
        let conn = duckdb::Connection::open_in_memory().unwrap();
        assert!(limits.run("other", conn, |_| Ok(())).await.is_ok());
        // The held query passed its deadline too, yet keeps its place until its work ends.
        let held = held.await.unwrap();
        assert!(matches!(held, Err(Refusal::TimedOut { .. })), "{held:?}");
        assert_eq!(limits.running(), 1);
        hold_tx.send(()).unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while limits.running() > 0 {
            assert!(
                std::time::Instant::now() < until,
                "the place was never given back"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
