//! Shared test harness: a throw-away schema per test on `DATABASE_URL`.
//!
//! Without `DATABASE_URL` the tests print a `SKIPPED` line that `cargo test` shows and pass,
//! unless
//! `SECURE_ROUTES_REQUIRE_SERVICES=1` (CI), where a missing database is a failure.

#![allow(dead_code, unreachable_pub)]

use std::str::FromStr;

use secure_routes_postgres::Pool;

/// A schema of its own (`sr_test_<random>`) and a pool whose connections use it.
pub struct TestDb {
    pub pool: Pool,
    pub schema: String,
    url: String,
}

impl TestDb {
    /// A fresh, empty schema; `None` (after printing why) when no database is configured.
    pub async fn new(test: &str, pool_size: usize) -> Option<Self> {
        let url = secure_routes_testkit::services::service_url("DATABASE_URL", test)?;
        let schema = format!("sr_test_{:016x}", rand::random::<u64>());
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect to DATABASE_URL");
        let driver = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .expect("create test schema");
        drop(client);
        let _ = driver.await;
        let mut config = tokio_postgres::Config::from_str(&url).expect("parse DATABASE_URL");
        config.options(format!("-c search_path={schema}"));
        let pool = secure_routes_postgres::pool_from_config(config, pool_size).expect("pool");
        Some(Self { pool, schema, url })
    }

    /// Another pool on the same schema (another instance's connections).
    pub fn pool_like(&self) -> Result<Pool, secure_routes_postgres::Error> {
        let mut config = tokio_postgres::Config::from_str(&self.url).expect("parse DATABASE_URL");
        config.options(format!("-c search_path={}", self.schema));
        secure_routes_postgres::pool_from_config(config, 4)
    }

    /// A fresh schema with the migrations applied.
    pub async fn migrated(test: &str, pool_size: usize) -> Option<Self> {
        let db = Self::new(test, pool_size).await?;
        secure_routes_postgres::migrate(&db.pool)
            .await
            .expect("migrate");
        Some(db)
    }

    /// Runs one statement in the test schema and returns the first column of the first row.
    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        let client = self.pool.get().await.expect("connection");
        client.query_one(sql, &[]).await.expect(sql).get(0)
    }

    /// Runs statements in the test schema.
    pub async fn exec(&self, sql: &str) {
        let client = self.pool.get().await.expect("connection");
        client.batch_execute(sql).await.expect(sql);
    }

    /// Drops the schema (also done on drop, so a failing test cleans up too).
    pub async fn drop(mut self) {
        self.pool.close();
        drop_schema(self.url.clone(), self.schema.clone()).await;
        // The schema is gone: `Drop` has nothing left to do.
        self.schema.clear();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.schema.is_empty() {
            return;
        }
        // A panicking test: drop the schema from a thread with its own runtime, since the
        // test's runtime may be unwinding.
        self.pool.close();
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(drop_schema(url, schema));
            }
        })
        .join();
    }
}

async fn drop_schema(url: String, schema: String) {
    let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
        eprintln!("could not connect to drop test schema {schema}");
        return;
    };
    let driver = tokio::spawn(conn);
    if let Err(e) = client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
    {
        eprintln!("could not drop test schema {schema}: {e}");
    }
    drop(client);
    let _ = driver.await;
}
