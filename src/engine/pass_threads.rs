//! The compute pool's workers held through one forward pass, as ggml's thread pool holds its own.
//!
//! A decode step runs some 150 parallel loops (every matrix product, every attention layer) with
//! a few microseconds of serial work between them. On rayon each loop is a fork and a join, and a
//! worker that found nothing to do for a moment is parked and woken through the kernel: on two
//! cores Lantern's decode gained 1.1–1.5× from its second thread where llama.cpp's gains more.
//! Here, for the length of a pass, every other worker of the pool runs a loop that polls for the
//! pass's next parallel loop; the pass's own thread posts each loop, takes tasks from it like any
//! worker, and waits only for the last task. Between passes the workers go back to rayon, which
//! parks them. The pool stays the one pool: no thread is added beside `--threads`.
//!
//! Inside a task, a nested loop runs on its thread alone; outside a pass, loops run on rayon.
//! A held worker also takes rayon's jobs while it waits, so a kernel that still uses rayon
//! (candle's, for the weight types Lantern's own do not cover) keeps every thread.

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

/// Polls of the posted loop between two offers of the core to rayon and the system.
const SPINS_BEFORE_YIELD: u32 = 2048;

/// One parallel loop: tasks `0..n`, taken one at a time by whichever thread comes first.
struct Job<'a> {
    run: &'a (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Job<'_> {
    /// Take and run tasks until none is left.
    fn work(&self) {
        let outer = IN_TASK.replace(true);
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                break;
            }
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| (self.run)(i))) {
                let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(p);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
        IN_TASK.set(outer);
    }
}

/// What a pass's thread shares with the workers it holds.
#[derive(Default)]
struct Hold {
    /// Bumped before each loop is posted, so a worker polls one counter while nothing changes.
    posted: AtomicUsize,
    /// The loop now running (its lifetime erased: see `post`), or null.
    job: AtomicPtr<Job<'static>>,
    /// Workers between reading `job` and leaving it: the pass's thread waits for none before
    /// the loop's frame goes away.
    inside: AtomicUsize,
    closing: AtomicBool,
}

thread_local! {
    /// The hold this thread drives, while it runs a pass.
    static DRIVING: Cell<*const Hold> = const { Cell::new(std::ptr::null()) };
    /// Set while this thread runs a task of a loop.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// Run `pass` with the current rayon pool's other workers held for its parallel loops. Called
/// from a worker of that pool; elsewhere, or within a pass already held, it runs `pass` as is.
pub fn hold<R>(pass: impl FnOnce() -> R) -> R {
    let Some(me) = rayon::current_thread_index() else {
        return pass();
    };
    if rayon::current_num_threads() < 2 || !DRIVING.get().is_null() || IN_TASK.get() {
        return pass();
    }
    let hold = Hold::default();
    let mut out = None;
    rayon::in_place_scope(|scope| {
        scope.spawn_broadcast(|_, ctx| {
            if ctx.index() != me {
                serve(&hold);
            }
        });
        DRIVING.set(&hold);
        // Workers are released even when the pass panics.
        let result = catch_unwind(AssertUnwindSafe(pass));
        DRIVING.set(std::ptr::null());
        hold.closing.store(true, Ordering::Release);
        out = Some(result);
    });
    match out.expect("the scope ran the pass") {
        Ok(r) => r,
        Err(p) => resume_unwind(p),
    }
}

/// A held worker: run each posted loop's tasks until the pass ends.
fn serve(hold: &Hold) {
    let mut seen = 0;
    let mut spins = 0u32;
    while !hold.closing.load(Ordering::Acquire) {
        let posted = hold.posted.load(Ordering::Acquire);
        if posted != seen {
            let job = hold.job.load(Ordering::SeqCst);
            if !job.is_null() {
                hold.inside.fetch_add(1, Ordering::SeqCst);
                // Still posted after this worker counted itself in: the pass's thread has not
                // passed its wait for `inside`, so the job is alive until this worker leaves.
                if hold.job.load(Ordering::SeqCst) == job {
                    // SAFETY: see above; `post` clears `job` and then waits for `inside` to
                    // be 0 before the job's frame ends.
                    unsafe { &*job }.work();
                    seen = posted;
                }
                hold.inside.fetch_sub(1, Ordering::SeqCst);
                spins = 0;
                continue;
            }
        }
        spins += 1;
        if spins < SPINS_BEFORE_YIELD {
            std::hint::spin_loop();
        } else {
            spins = 0;
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::thread::yield_now();
            }
        }
    }
}

/// Post `job` to the held workers, work on it, and return once every task has run and no
/// worker can still read it.
fn post(hold: &Hold, job: &Job<'_>) {
    hold.posted.fetch_add(1, Ordering::SeqCst);
    // The lifetime is erased for the shared pointer; the job outlives every use (see `serve`).
    hold.job
        .store(job as *const Job<'_> as *mut Job<'static>, Ordering::SeqCst);
    job.work();
    while job.done.load(Ordering::Acquire) < job.n {
        std::hint::spin_loop();
    }
    hold.job.store(std::ptr::null_mut(), Ordering::SeqCst);
    while hold.inside.load(Ordering::SeqCst) != 0 {
        std::hint::spin_loop();
    }
}

/// Run `f(0..n)`: on the held workers during a pass, on this thread alone inside a task, else
/// on rayon. A panic in a task is raised here once every task has run.
pub fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    // One thread: no hand-off of any kind (rayon's splitting showed in a 1-thread profile).
    if n <= 1 || IN_TASK.get() || rayon::current_num_threads() == 1 {
        (0..n).for_each(f);
        return;
    }
    let driving = DRIVING.get();
    if driving.is_null() {
        (0..n).into_par_iter().for_each(&f);
        return;
    }
    let job = Job {
        run: &f,
        n,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        panic: Mutex::new(None),
    };
    // SAFETY: `DRIVING` points at the `Hold` on `hold`'s frame, which is below this one.
    post(unsafe { &*driving }, &job);
    if let Some(p) = job.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
        resume_unwind(p);
    }
}

/// `f(i)` for `i` in `0..n`, in order, computed as `for_each` runs tasks.
pub fn map<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    let slots = SendPtr(out.as_mut_ptr());
    for_each(n, |i| {
        let slots = &slots;
        // SAFETY: task i alone writes slot i, and `out` outlives the loop.
        unsafe { *slots.0.add(i) = Some(f(i)) };
    });
    out.into_iter()
        .map(|r| r.expect("every task ran"))
        .collect()
}

/// `f(index, chunk)` over `data` cut into chunks of `chunk` elements (the last may be shorter).
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunk = chunk.max(1);
    let len = data.len();
    let base = SendPtr(data.as_mut_ptr());
    for_each(len.div_ceil(chunk), |i| {
        let base = &base;
        let start = i * chunk;
        // SAFETY: the chunks are disjoint and within `data`, which outlives the loop.
        let part =
            unsafe { std::slice::from_raw_parts_mut(base.0.add(start), chunk.min(len - start)) };
        f(i, part);
    });
}

/// A pointer handed to tasks that each touch their own elements.
struct SendPtr<T>(*mut T);
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}

#[cfg(test)]
mod tests;
