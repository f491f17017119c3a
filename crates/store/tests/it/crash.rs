//! kill -9 in the middle of a write burst: every acknowledged write survives, and no
//! revision is handed out twice afterwards.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use store::{ListRequest, SqliteStore, Store};

/// The child: writes as fast as it can, printing each acknowledged revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_writer() {
    let Ok(path) = std::env::var("STORE_CRASH_DB") else {
        return;
    };
    let s = std::sync::Arc::new(SqliteStore::open(std::path::Path::new(&path)).unwrap());
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let kv = s
                    .create(&format!("/burst/{w}-{i:06}"), vec![7; 512])
                    .await
                    .unwrap();
                println!("ack {} {}", kv.mod_rev, kv.key);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash::crash_child_writer",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("STORE_CRASH_DB", &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("ack ") {
            let (rev, key) = rest.split_once(' ').unwrap();
            acked.push((rev.parse::<u64>().unwrap(), key.to_owned()));
            if acked.len() == 2000 {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
    }
    child.wait().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = SqliteStore::open(&db).unwrap();
        let stored = s
            .list(&ListRequest {
                prefix: "/burst/".into(),
                ..Default::default()
            })
            .unwrap();
        let keys: std::collections::HashSet<_> =
            stored.items.iter().map(|kv| kv.key.clone()).collect();
        let lost: Vec<_> = acked.iter().filter(|(_, k)| !keys.contains(k)).collect();
        assert!(
            lost.is_empty(),
            "{} acknowledged writes lost, e.g. {:?}",
            lost.len(),
            lost.first()
        );
        let max_acked = acked.iter().map(|(r, _)| *r).max().unwrap();
        let next = s.create("/after-crash", vec![]).await.unwrap().mod_rev;
        assert!(next > max_acked, "revision {next} after {max_acked}");
        let max_stored = stored.items.iter().map(|kv| kv.mod_rev).max().unwrap();
        assert!(
            next > max_stored,
            "revision {next} reused (stored up to {max_stored})"
        );
    });
}
