//! `PostgresStore` as a ban store: the shared ban conformance suite, each scenario in a fresh
//! schema, three pools (three instances) on one schema for the concurrent case.

mod common;

use std::sync::Arc;
use std::sync::Mutex;

use common::TestDb;
use secure_routes::bans::conformance;
use secure_routes_postgres::PostgresStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_passes_the_ban_conformance_suite() {
    const TEST: &str = "postgres_store_passes_the_ban_conformance_suite";
    // Probe once (prints the skip line when DATABASE_URL is unset).
    let Some(probe) = TestDb::migrated(TEST, 1).await else {
        return;
    };
    probe.drop().await;
    // The schemas live until the end of the test (dropped with it).
    let dbs: Arc<Mutex<Vec<TestDb>>> = Arc::default();
    conformance::run_all(
        || {
            let dbs = Arc::clone(&dbs);
            async move {
                let db = TestDb::migrated(TEST, 4).await.expect("database");
                let store = PostgresStore::new(db.pool.clone());
                dbs.lock().unwrap().push(db);
                store
            }
        },
        || {
            let dbs = Arc::clone(&dbs);
            async move {
                let db = TestDb::migrated(TEST, 4).await.expect("database");
                let mut handles = Vec::new();
                for _ in 0..3 {
                    // Its own pool: another instance's connections.
                    let pool = db.pool_like().expect("pool");
                    handles.push(Box::new(PostgresStore::new(pool)));
                }
                dbs.lock().unwrap().push(db);
                handles
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_postgres_honour_each_others_bans() {
    const TEST: &str = "three_instances_on_one_postgres_honour_each_others_bans";
    let Some(db) = TestDb::migrated(TEST, 4).await else {
        return;
    };
    let handles = (0..3)
        .map(|_| {
            // Its own pool: another instance's connections.
            let pool = db.pool_like().expect("pool");
            Arc::new(PostgresStore::new(pool)) as Arc<dyn secure_routes::bans::BanStore>
        })
        .collect();
    conformance::three_instances(handles).await;
    db.drop().await;
}
