//! One contract, two backends: every test runs against `MemStore` and `SqliteStore`.

use std::sync::Arc;
use std::time::Duration;

use store::{EventKind, ListRequest, MemStore, SqliteStore, Store, StoreError};

fn list(s: &dyn Store, prefix: &str) -> Vec<(String, String)> {
    let page = s
        .list(&ListRequest {
            prefix: prefix.into(),
            ..Default::default()
        })
        .unwrap();
    page.items
        .into_iter()
        .map(|kv| (kv.key, String::from_utf8(kv.value.to_vec()).unwrap()))
        .collect()
}

async fn next(w: &mut store::Watch) -> store::Event {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("an event")
        .unwrap()
        .unwrap()
}

async fn crud_and_compare_and_swap(s: Arc<dyn Store>) {
    let a = s.create("/pods/ns/a", b"1".to_vec()).await.unwrap();
    assert_eq!((a.mod_rev, a.create_rev), (1, 1));
    assert_eq!(
        s.create("/pods/ns/a", b"x".to_vec()).await.unwrap_err(),
        StoreError::AlreadyExists {
            key: "/pods/ns/a".into()
        }
    );
    let a2 = s
        .update("/pods/ns/a", b"2".to_vec(), Some(a.mod_rev))
        .await
        .unwrap();
    assert_eq!((a2.mod_rev, a2.create_rev), (2, 1));
    let stale = s
        .update("/pods/ns/a", b"3".to_vec(), Some(a.mod_rev))
        .await
        .unwrap_err();
    assert_eq!(
        stale,
        StoreError::Conflict {
            key: "/pods/ns/a".into(),
            expected: 1,
            current: 2
        }
    );
    assert_eq!(&*s.get("/pods/ns/a").unwrap().unwrap().value, b"2");
    assert!(matches!(
        s.update("/pods/ns/nope", vec![], None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.delete("/pods/ns/a", Some(1)).await,
        Err(StoreError::Conflict { .. })
    ));
    let gone = s.delete("/pods/ns/a", Some(2)).await.unwrap();
    assert_eq!((gone.mod_rev, &*gone.value), (3, &b"2"[..]));
    assert!(s.get("/pods/ns/a").unwrap().is_none());
    assert!(matches!(
        s.delete("/pods/ns/a", None).await,
        Err(StoreError::NotFound { .. })
    ));
    let again = s.create("/pods/ns/a", b"new".to_vec()).await.unwrap();
    assert_eq!(
        (again.mod_rev, again.create_rev),
        (4, 4),
        "a re-created key starts a new life"
    );
    assert_eq!(s.revision(), 4);
}

async fn lists_are_consistent_pages_at_one_revision(s: Arc<dyn Store>) {
    for k in ["a", "b", "c", "d", "e"] {
        s.create(&format!("/cm/ns/{k}"), k.as_bytes().to_vec())
            .await
            .unwrap();
    }
    s.create("/cmx/ns/z", b"other prefix".to_vec())
        .await
        .unwrap();
    let first = s
        .list(&ListRequest {
            prefix: "/cm/".into(),
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        first
            .items
            .iter()
            .map(|kv| kv.key.as_str())
            .collect::<Vec<_>>(),
        ["/cm/ns/a", "/cm/ns/b"]
    );
    assert!(first.more);
    // Writes between pages do not show in later pages read at the first page's revision.
    s.delete("/cm/ns/c", None).await.unwrap();
    s.update("/cm/ns/d", b"changed".to_vec(), None)
        .await
        .unwrap();
    let second = s
        .list(&ListRequest {
            prefix: "/cm/".into(),
            limit: 2,
            after: Some("/cm/ns/b".into()),
            at: Some(first.rev),
        })
        .unwrap();
    assert_eq!(
        second
            .items
            .iter()
            .map(|kv| kv.key.as_str())
            .collect::<Vec<_>>(),
        ["/cm/ns/c", "/cm/ns/d"]
    );
    assert_eq!(&*second.items[1].value, b"d");
    let third = s
        .list(&ListRequest {
            prefix: "/cm/".into(),
            limit: 2,
            after: Some("/cm/ns/d".into()),
            at: Some(first.rev),
        })
        .unwrap();
    assert_eq!(third.items.len(), 1);
    assert!(!third.more);
    assert_eq!(
        list(&*s, "/cm/"),
        [
            ("/cm/ns/a".into(), "a".into()),
            ("/cm/ns/b".into(), "b".into()),
            ("/cm/ns/d".into(), "changed".into()),
            ("/cm/ns/e".into(), "e".into())
        ]
    );
}

async fn watch_replays_history_then_follows_live(s: Arc<dyn Store>) {
    let a = s.create("/vm/ns/a", b"1".to_vec()).await.unwrap();
    s.create("/other/ns/x", b"x".to_vec()).await.unwrap();
    s.update("/vm/ns/a", b"2".to_vec(), None).await.unwrap();
    let mut from_start = s.watch("/vm/", 0).unwrap();
    let mut from_a = s.watch("/vm/", a.mod_rev).unwrap();
    let e = next(&mut from_start).await;
    assert_eq!(
        (e.kind, e.rev(), e.prev.is_none()),
        (EventKind::Created, 1, true)
    );
    let e = next(&mut from_start).await;
    assert_eq!(
        (e.kind, e.rev(), &*e.prev.unwrap().value),
        (EventKind::Modified, 3, &b"1"[..])
    );
    assert_eq!(
        next(&mut from_a).await.rev(),
        3,
        "resumes after the given revision"
    );
    s.delete("/vm/ns/a", None).await.unwrap();
    s.create("/other/ns/y", b"y".to_vec()).await.unwrap();
    s.create("/vm/ns/b", b"b".to_vec()).await.unwrap();
    for w in [&mut from_start, &mut from_a] {
        let e = next(w).await;
        assert_eq!(
            (e.kind, e.rev(), &*e.kv.value),
            (EventKind::Deleted, 4, &b"2"[..]),
            "a deletion carries the last value"
        );
        let e = next(w).await;
        assert_eq!(
            (e.kind, e.kv.key.as_str()),
            (EventKind::Created, "/vm/ns/b"),
            "other prefixes are filtered out"
        );
        assert_eq!(w.progress(), 6);
    }
}

async fn a_watch_from_now_or_later_sees_only_newer_events(s: Arc<dyn Store>) {
    s.create("/q/a", vec![]).await.unwrap();
    let mut from_now = s.watch("/q/", s.revision()).unwrap();
    let mut from_future = s.watch("/q/", s.revision() + 1).unwrap();
    s.create("/q/b", vec![]).await.unwrap();
    s.create("/q/c", vec![]).await.unwrap();
    assert_eq!(next(&mut from_now).await.kv.key, "/q/b");
    assert_eq!(
        next(&mut from_future).await.kv.key,
        "/q/c",
        "a revision not yet written is waited for"
    );
}

async fn a_slow_watcher_misses_nothing(s: Arc<dyn Store>) {
    let mut w = s.watch("/k/", 0).unwrap();
    for i in 0..5000 {
        s.create(&format!("/k/{i:05}"), vec![]).await.unwrap();
    }
    for i in 0..5000u64 {
        assert_eq!(next(&mut w).await.rev(), i + 1);
    }
}

async fn compaction_keeps_current_values_and_refuses_older_revisions(s: Arc<dyn Store>) {
    let a = s.create("/x/a", b"1".to_vec()).await.unwrap();
    s.update("/x/a", b"2".to_vec(), None).await.unwrap();
    s.create("/x/b", b"b".to_vec()).await.unwrap();
    s.delete("/x/b", None).await.unwrap();
    let keep = s.create("/x/c", b"c".to_vec()).await.unwrap();
    s.compact(4).await.unwrap();
    assert_eq!(s.compacted(), 4);
    assert_eq!(
        list(&*s, "/x/"),
        [("/x/a".into(), "2".into()), ("/x/c".into(), "c".into())]
    );
    assert_eq!(
        s.list(&ListRequest {
            prefix: "/x/".into(),
            at: Some(a.mod_rev),
            ..Default::default()
        })
        .unwrap_err(),
        StoreError::Compacted {
            requested: 1,
            compacted: 4
        }
    );
    assert!(matches!(
        s.watch("/x/", 2),
        Err(StoreError::Compacted {
            requested: 2,
            compacted: 4
        })
    ));
    let mut w = s.watch("/x/", 4).unwrap();
    assert_eq!(next(&mut w).await.rev(), keep.mod_rev);
    assert_eq!(
        s.create("/x/d", vec![]).await.unwrap().mod_rev,
        6,
        "revisions keep counting"
    );
}

async fn concurrent_compare_and_swap_has_one_winner(s: Arc<dyn Store>) {
    let base = s.create("/n/counter", b"0".to_vec()).await.unwrap().mod_rev;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.update("/n/counter", i.to_string().into_bytes(), Some(base))
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(wins, 1);
}

macro_rules! contract {
    ($($name:ident),*) => {
        mod mem {
            $(#[tokio::test] async fn $name() { super::$name(std::sync::Arc::new(store::MemStore::new())).await })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() {
                let dir = tempfile::tempdir().unwrap();
                super::$name(std::sync::Arc::new(store::SqliteStore::open(&dir.path().join("db.sqlite")).unwrap())).await
            })*
        }
    };
}

contract!(
    crud_and_compare_and_swap,
    lists_are_consistent_pages_at_one_revision,
    watch_replays_history_then_follows_live,
    a_watch_from_now_or_later_sees_only_newer_events,
    a_slow_watcher_misses_nothing,
    compaction_keeps_current_values_and_refuses_older_revisions,
    concurrent_compare_and_swap_has_one_winner
);

#[tokio::test]
async fn sqlite_keeps_objects_and_never_reuses_a_revision_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.create("/a", b"kept".to_vec()).await.unwrap();
        s.create("/b", vec![]).await.unwrap();
        s.delete("/b", None).await.unwrap();
        s.compact(3).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(&*s.get("/a").unwrap().unwrap().value, b"kept");
    assert_eq!(s.revision(), 3);
    assert_eq!(s.compacted(), 3);
    assert_eq!(
        s.create("/c", vec![]).await.unwrap().mod_rev,
        4,
        "the tombstone's revision 3 is not reused"
    );
}

#[test]
fn mem_store_is_a_store() {
    fn is_store<T: Store>() {}
    is_store::<MemStore>();
    is_store::<SqliteStore>();
}

#[tokio::test(start_paused = true)]
async fn the_compactor_keeps_a_window_of_history() {
    let s: Arc<dyn Store> = Arc::new(MemStore::new());
    s.create("/w", vec![0]).await.unwrap();
    for i in 1..50 {
        s.update("/w", vec![i], None).await.unwrap();
    }
    let task = tokio::spawn(store::run_compactor(s.clone(), 10, Duration::from_secs(60)));
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(s.compacted(), s.revision() - 10);
    assert!(s.watch("/", s.revision() - 10).is_ok());
    assert!(matches!(
        s.watch("/", s.revision() - 11),
        Err(StoreError::Compacted { .. })
    ));
    task.abort();
}
