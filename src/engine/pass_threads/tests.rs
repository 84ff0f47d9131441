use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::*;

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// Every index once, whoever runs it.
fn counts_of(n: usize) -> Vec<usize> {
    let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
    for_each(n, |i| {
        counts[i].fetch_add(1, Ordering::Relaxed);
    });
    counts.into_iter().map(AtomicUsize::into_inner).collect()
}

#[test]
fn every_task_runs_once_in_a_pass_outside_one_and_on_one_thread() {
    for threads in [1, 2, 4] {
        pool(threads).install(|| {
            for n in [0, 1, 2, 7, 1000] {
                assert_eq!(counts_of(n), vec![1; n], "outside a pass, n = {n}");
                let held = hold(|| (0..50).map(|_| counts_of(n)).collect::<Vec<_>>());
                assert!(held.iter().all(|c| *c == vec![1; n]), "in a pass, n = {n}");
            }
        });
    }
    assert_eq!(hold(|| counts_of(9)), vec![1; 9], "off any pool");
}

#[test]
fn map_keeps_order_and_chunks_cover_the_slice() {
    pool(3).install(|| {
        hold(|| {
            assert_eq!(
                map(100, |i| i * i),
                (0..100).map(|i| i * i).collect::<Vec<_>>()
            );
            let mut v = vec![0usize; 1001];
            for_each_chunk_mut(&mut v, 64, |c, part| {
                for (j, x) in part.iter_mut().enumerate() {
                    *x = c * 64 + j;
                }
            });
            assert_eq!(v, (0..1001).collect::<Vec<_>>());
        })
    });
}

#[test]
fn the_held_workers_take_tasks_and_nested_loops_stay_on_their_thread() {
    pool(2).install(|| {
        let threads = Mutex::new(std::collections::HashSet::new());
        hold(|| {
            // Tasks long enough that the second worker, spinning, takes some of them.
            for _ in 0..20 {
                for_each(8, |_| {
                    threads
                        .lock()
                        .unwrap()
                        .insert(rayon::current_thread_index());
                    let inner = std::thread::current().id();
                    for_each(4, |_| assert_eq!(std::thread::current().id(), inner));
                    std::thread::sleep(std::time::Duration::from_millis(1));
                });
            }
        });
        assert_eq!(
            threads.into_inner().unwrap().len(),
            2,
            "both threads worked"
        );
    });
}

#[test]
fn a_panicking_task_reaches_the_caller_and_the_pool_goes_on() {
    let pool = pool(2);
    let caught = pool.install(|| {
        std::panic::catch_unwind(|| {
            hold(|| {
                for_each(16, |i| assert!(i != 11, "task eleven fails"));
            })
        })
    });
    let message = caught.unwrap_err();
    let text = match message.downcast_ref::<&str>() {
        Some(s) => s.to_string(),
        None => message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default(),
    };
    assert!(text.contains("task eleven fails"), "{text}");
    pool.install(|| assert_eq!(hold(|| counts_of(5)), vec![1; 5]));
}

#[test]
fn passes_from_two_threads_on_one_pool_both_finish() {
    let pool = pool(2);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..200 {
                    let counts = pool.install(|| hold(|| counts_of(33)));
                    assert_eq!(counts, vec![1; 33]);
                }
            });
        }
    });
}

#[test]
fn rayon_inside_a_pass_still_finishes() {
    pool(2).install(|| {
        let sum: usize = hold(|| {
            use rayon::prelude::*;
            (0..10_000usize).into_par_iter().sum()
        });
        assert_eq!(sum, 10_000 * 9_999 / 2);
    });
}
