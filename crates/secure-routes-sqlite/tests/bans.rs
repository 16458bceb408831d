//! `SqliteStore` as a ban store: the shared ban conformance suite, three handles (three
//! processes' worth of connections and writer threads) on one file for the concurrent case.

use std::sync::atomic::{AtomicUsize, Ordering};

use secure_routes::bans::conformance;
use secure_routes_sqlite::SqliteStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_passes_the_ban_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    let fresh = || {
        dir.path()
            .join(format!("bans-{}.db", n.fetch_add(1, Ordering::Relaxed)))
    };
    conformance::run_all(
        || {
            let path = fresh();
            async move { SqliteStore::open(path).unwrap() }
        },
        || {
            let path = fresh();
            async move {
                (0..3)
                    .map(|_| Box::new(SqliteStore::open(&path).unwrap()))
                    .collect::<Vec<_>>()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_sqlite_file_honour_each_others_bans() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("three.db");
    let handles = (0..3)
        .map(|_| {
            std::sync::Arc::new(SqliteStore::open(&path).unwrap())
                as std::sync::Arc<dyn secure_routes::bans::BanStore>
        })
        .collect();
    conformance::three_instances(handles).await;
}
