//! Long jobs (benchmarks now; pulls, quantizations and experiments share the shape): each runs
//! on its own thread, reports progress, can be cancelled, and is listed at `/api/jobs` while it
//! runs and after it ends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

/// Finished jobs kept for the list.
const KEEP_FINISHED: usize = 100;

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: u64,
    pub kind: String,
    pub title: String,
    /// running | done | failed | cancelled
    pub state: &'static str,
    /// 0 to 1.
    pub progress: f64,
    pub message: String,
    pub created_at: f64,
    pub finished_at: Option<f64>,
    pub result: Option<Value>,
    pub error: Option<String>,
    /// What the job is producing right now (an experiment's output as it streams).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<Value>,
}

/// What the job's code holds: where it reports, and the cancel flag it checks.
#[derive(Clone)]
pub struct JobHandle {
    view: Arc<Mutex<JobView>>,
    cancel: Arc<AtomicBool>,
}

impl JobHandle {
    pub fn progress(&self, fraction: f64, message: &str) {
        let mut v = lock(&self.view);
        v.progress = fraction.clamp(0.0, 1.0);
        v.message = message.to_string();
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Show (Some) or clear (None) what the job is producing right now.
    pub fn live(&self, value: Option<Value>) {
        lock(&self.view).live = value;
    }
}

impl crate::devices::bench::Observer for &JobHandle {
    fn progress(&mut self, fraction: f64, message: &str) {
        JobHandle::progress(self, fraction, message)
    }
    fn cancelled(&self) -> bool {
        JobHandle::cancelled(self)
    }
}

struct Entry {
    view: Arc<Mutex<JobView>>,
    cancel: Arc<AtomicBool>,
}

/// Every job of this process; cheap to clone.
#[derive(Clone, Default)]
pub struct Jobs {
    entries: Arc<Mutex<BTreeMap<u64, Entry>>>,
    next: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Jobs {
    /// Start `work` on its own thread; its Ok value becomes the job's result.
    pub fn spawn(
        &self,
        kind: &str,
        title: &str,
        work: impl FnOnce(&JobHandle) -> Result<Value, String> + Send + 'static,
    ) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let view = Arc::new(Mutex::new(JobView {
            id,
            kind: kind.into(),
            title: title.into(),
            state: "running",
            progress: 0.0,
            message: "starting".into(),
            created_at: crate::clock::unix_seconds(),
            finished_at: None,
            result: None,
            error: None,
            live: None,
        }));
        let cancel = Arc::new(AtomicBool::new(false));
        {
            let mut entries = lock(&self.entries);
            entries.insert(
                id,
                Entry {
                    view: view.clone(),
                    cancel: cancel.clone(),
                },
            );
            let finished: Vec<u64> = entries
                .iter()
                .filter(|(_, e)| lock(&e.view).state != "running")
                .map(|(id, _)| *id)
                .collect();
            for old in finished
                .iter()
                .take(finished.len().saturating_sub(KEEP_FINISHED))
            {
                entries.remove(old);
            }
        }
        let handle = JobHandle { view, cancel };
        std::thread::Builder::new()
            .name(format!("lantern-job-{id}"))
            .spawn(move || {
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&handle)))
                        .unwrap_or_else(|_| Err("the job panicked (see the server's log)".into()));
                let mut v = lock(&handle.view);
                v.finished_at = Some(crate::clock::unix_seconds());
                match outcome {
                    Ok(result) => {
                        v.state = "done";
                        v.progress = 1.0;
                        v.result = Some(result);
                    }
                    Err(_) if handle.cancelled() => v.state = "cancelled",
                    Err(e) => {
                        v.state = "failed";
                        v.error = Some(e);
                    }
                }
            })
            .expect("a thread can be spawned");
        id
    }

    /// Every job, newest first.
    pub fn list(&self) -> Vec<JobView> {
        lock(&self.entries)
            .values()
            .rev()
            .map(|e| lock(&e.view).clone())
            .collect()
    }

    pub fn get(&self, id: u64) -> Option<JobView> {
        lock(&self.entries).get(&id).map(|e| lock(&e.view).clone())
    }

    /// Ask every job to stop (the server is shutting down).
    pub fn cancel_all(&self) {
        for e in lock(&self.entries).values() {
            e.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// Ask a running job to stop; false when there is no such job.
    pub fn cancel(&self, id: u64) -> bool {
        match lock(&self.entries).get(&id) {
            Some(e) => {
                e.cancel.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(jobs: &Jobs, id: u64) -> JobView {
        for _ in 0..500 {
            let v = jobs.get(id).unwrap();
            if v.state != "running" {
                return v;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("job {id} did not finish");
    }

    #[test]
    fn jobs_finish_fail_and_cancel() {
        let jobs = Jobs::default();
        let ok = jobs.spawn("test", "adds", |h| {
            h.progress(0.5, "half way");
            Ok(serde_json::json!(2 + 2))
        });
        let failed = jobs.spawn("test", "fails", |_| Err("no".into()));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let stopped = jobs.spawn("test", "waits", move |h| {
            rx.recv().unwrap();
            if h.cancelled() {
                Err("cancelled".into())
            } else {
                Ok(Value::Null)
            }
        });
        assert!(jobs.cancel(stopped));
        tx.send(()).unwrap();
        let v = wait(&jobs, ok);
        assert_eq!(
            (v.state, v.progress, v.result),
            ("done", 1.0, Some(serde_json::json!(4)))
        );
        let v = wait(&jobs, failed);
        assert_eq!((v.state, v.error.as_deref()), ("failed", Some("no")));
        assert_eq!(wait(&jobs, stopped).state, "cancelled");
        assert_eq!(
            jobs.list().iter().map(|j| j.id).collect::<Vec<_>>(),
            [stopped, failed, ok]
        );
        assert!(!jobs.cancel(999));
    }
}
