//! The semantic cache's unit tests: scope, threshold, bound, and a restart.

use super::*;
use crate::scheduler::Usage;

fn answer(text: &str) -> Vec<Vec<GenEvent>> {
    vec![vec![
        GenEvent::Text(text.into()),
        GenEvent::Done(Usage::stopped(3, 1)),
    ]]
}

fn text(hit: &SemanticHit) -> &str {
    match &hit.choices[0][0] {
        GenEvent::Text(t) => t,
        _ => panic!("not text"),
    }
}

const A: ResponseKey = [1; 32];
const B: ResponseKey = [2; 32];

#[tokio::test]
async fn answers_near_questions_within_their_scope_only() {
    let cache = SemanticCache::open(1 << 20, None, None).await;
    assert!(cache.lookup(&A, &[1.0, 0.0, 0.0], 0.9).is_none());
    cache.put(A, "m", "q1", vec![1.0, 0.0, 0.0], answer("one"));
    cache.put(B, "m", "q2", vec![0.9, 0.1, 0.0], answer("two"));
    let hit = cache.lookup(&A, &[0.95, 0.05, 0.0], 0.9).unwrap();
    assert_eq!((text(&hit), hit.question.as_str()), ("one", "q1"));
    assert!(hit.similarity > 0.99, "{}", hit.similarity);
    // Below the threshold, and in a scope with no answer near: misses.
    assert!(cache.lookup(&A, &[0.0, 1.0, 0.0], 0.9).is_none());
    assert!(cache.lookup(&[3; 32], &[1.0, 0.0, 0.0], 0.5).is_none());
    let hit = cache.lookup(&B, &[1.0, 0.0, 0.0], 0.9).unwrap();
    assert_eq!(text(&hit), "two");
    let s = cache.stats();
    assert_eq!((s.entries, s.lookups, s.hits, s.stored), (2, 5, 2, 2));
    assert_eq!(s.similarity.iter().map(|b| b.count).sum::<u64>(), 3);
    assert_eq!(cache.clear(Some("m")).await, 2);
    assert!(cache.lookup(&B, &[1.0, 0.0, 0.0], 0.5).is_none());
}

#[tokio::test]
async fn unfinished_answers_are_not_kept_and_the_bound_evicts_the_oldest() {
    let one = ENTRY_OVERHEAD + 400;
    let cache = SemanticCache::open(2 * one, None, None).await;
    cache.put(
        A,
        "m",
        "q",
        vec![1.0, 0.0],
        vec![vec![GenEvent::Text("x".into())]],
    );
    assert_eq!(cache.stats().entries, 0);
    for (i, v) in [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]
        .into_iter()
        .enumerate()
    {
        cache.put(
            A,
            "m",
            &format!("q{i}"),
            v.to_vec(),
            answer(&format!("a{i}")),
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let s = cache.stats();
    assert_eq!((s.entries, s.evicted), (2, 1));
    assert!(s.bytes <= s.max_bytes);
    assert!(
        cache.lookup(&A, &[1.0, 0.0], 0.99).is_none(),
        "the oldest went"
    );
    assert_eq!(text(&cache.lookup(&A, &[-1.0, 0.0], 0.99).unwrap()), "a2");
}

#[tokio::test]
async fn kept_answers_and_their_index_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lantern.db");
    let open = || async {
        let store = Store::open(&db).await.unwrap();
        SemanticCache::open(1 << 20, Some(store), None).await
    };
    let cache = open().await;
    cache.put(A, "m", "q", vec![0.6, 0.8], answer("kept"));
    cache.save_index();
    // The row is written by a task: wait for it.
    for _ in 0..100 {
        let store = Store::open(&db).await.unwrap();
        if !store.semantic_ids().await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(dir.path().join("semantic-cache.usearch").exists());
    drop(cache);
    let again = open().await;
    assert_eq!(text(&again.lookup(&A, &[0.6, 0.8], 0.99).unwrap()), "kept");
    // A missing index file is rebuilt from the rows.
    std::fs::remove_file(dir.path().join("semantic-cache.usearch")).unwrap();
    let rebuilt = open().await;
    assert_eq!(
        text(&rebuilt.lookup(&A, &[0.6, 0.8], 0.99).unwrap()),
        "kept"
    );
    assert_eq!(rebuilt.stats().errors, 0);
}
