//! [`SqliteAuditSink`]: one writer thread, one transaction per batch.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior, params};
use secure_routes::audit::{AuditError, AuditEvent, AuditSink, BoxFuture};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::row::EncodedBatch;
use crate::timestamp::format_timestamp;
use crate::{Error, schema};

/// How long a connection waits for another connection's lock before giving up (the writer
/// then reports the batch as failed and the `AuditWriter` retries it).
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Rows the writer thread merges into one transaction when several batches are waiting.
const GROUP_COMMIT_ROWS: usize = 8192;

/// `ON CONFLICT DO NOTHING`: delivery is at-least-once (a timed-out batch is retried, a
/// replay may resend), and an event id is a UUIDv7, so a second copy is the same event.
const INSERT_SQL: &str = "INSERT INTO audit_logs (id, action, user_id, metadata, timestamp, \
     created_at, outcome, client_ip, method, route, path, status, reason, request_id, user_agent, \
     count, fingerprint) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) \
     ON CONFLICT(id) DO NOTHING";

type Reply = oneshot::Sender<Result<(), String>>;

struct WriteBatch {
    batch: EncodedBatch,
    reply: Reply,
}

/// An [`AuditSink`] writing to a SQLite database (table `audit_logs`).
///
/// One dedicated thread owns the connection; [`write_batch`](AuditSink::write_batch) sends the
/// batch there and awaits the result, so the async runtime never blocks on disk. Each batch
/// is stored in one transaction (all or nothing); batches from several callers that are
/// waiting at the same time are merged into one commit. Duplicate event ids are ignored, so
/// retries and replays cannot double-count. Clones share the thread, which stops when the last
/// clone is dropped (after finishing the batches already sent).
///
/// ```
/// use secure_routes::audit::{AuditAction, AuditEvent, AuditSink};
/// use secure_routes_sqlite::SqliteAuditSink;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let sink = SqliteAuditSink::open(dir.path().join("audit.db")).unwrap();
/// let batch = [AuditEvent::new(AuditAction::CsrfValidationFailed).with_status(403)];
/// sink.write_batch(&batch).await.unwrap();
/// sink.write_batch(&batch).await.unwrap(); // same id: ignored
/// assert_eq!(secure_routes_sqlite::count(sink.path()).unwrap(), 1);
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct SqliteAuditSink {
    path: PathBuf,
    tx: mpsc::Sender<WriteBatch>,
}

impl SqliteAuditSink {
    /// Opens or creates the database at `path`, switches it to WAL mode, applies the schema
    /// migrations and starts the writer thread. Blocking (file I/O): call it at startup, or
    /// from `spawn_blocking`.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("audit.db");
    /// let sink = secure_routes_sqlite::SqliteAuditSink::open(&path).unwrap();
    /// assert_eq!(sink.path(), path);
    /// assert!(secure_routes_sqlite::SqliteAuditSink::open(dir.path().join("no/such/dir.db")).is_err());
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let conn = schema::open_writer(&path, BUSY_TIMEOUT)?;

        let (tx, rx) = mpsc::channel::<WriteBatch>();
        std::thread::Builder::new()
            .name("secure-routes-sqlite-audit".into())
            .spawn(move || writer_thread(conn, &rx))
            .map_err(Error::Spawn)?;
        Ok(Self { path, tx })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AuditSink for SqliteAuditSink {
    fn write_batch<'a>(&'a self, batch: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(());
            }
            let (reply, answer) = oneshot::channel();
            self.tx
                .send(WriteBatch {
                    batch: EncodedBatch::new(batch),
                    reply,
                })
                .map_err(|_| AuditError("the SQLite writer thread has stopped".into()))?;
            match answer.await {
                Ok(result) => result.map_err(AuditError),
                Err(_) => Err(AuditError(
                    "the SQLite writer thread stopped before answering".into(),
                )),
            }
        })
    }

    fn name(&self) -> &'static str {
        "sqlite"
    }
}

/// The writer thread: takes the next batch plus any others already waiting, stores them in
/// one transaction, answers each caller. Ends when every sender is gone.
fn writer_thread(mut conn: Connection, rx: &mpsc::Receiver<WriteBatch>) {
    while let Ok(first) = rx.recv() {
        let mut rows = first.batch.rows.len();
        let mut pending = vec![first];
        while rows < GROUP_COMMIT_ROWS {
            match rx.try_recv() {
                Ok(next) => {
                    rows += next.batch.rows.len();
                    pending.push(next);
                }
                Err(_) => break,
            }
        }
        let result = insert(&mut conn, pending.iter().map(|w| &w.batch));
        if result.is_err() && pending.len() > 1 {
            // Do not let one batch's failure fail the others: retry each on its own.
            for w in pending {
                let result = insert(&mut conn, [&w.batch]).map_err(|e| e.to_string());
                let _ = w.reply.send(result);
            }
            continue;
        }
        let result = result.map_err(|e| e.to_string());
        for w in pending {
            let _ = w.reply.send(result.clone());
        }
    }
}

/// Inserts batches in one `IMMEDIATE` transaction (the write lock is taken up front, so the
/// transaction cannot fail half-way on a lock upgrade).
fn insert<'a>(
    conn: &mut Connection,
    batches: impl IntoIterator<Item = &'a EncodedBatch>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let created_at = format_timestamp(OffsetDateTime::now_utc());
        let mut stmt = tx.prepare_cached(INSERT_SQL)?;
        for b in batches {
            for r in &b.rows {
                stmt.execute(params![
                    b.get(&r.id),
                    r.action,
                    b.get_opt(r.user_id.as_ref()),
                    b.get_opt(r.metadata.as_ref()),
                    b.get(&r.timestamp),
                    created_at,
                    r.outcome,
                    b.get_opt(r.client_ip.as_ref()),
                    b.get(&r.method),
                    b.get(&r.route),
                    b.get(&r.path),
                    r.status,
                    b.get(&r.reason),
                    b.get(&r.request_id),
                    b.get_opt(r.user_agent.as_ref()),
                    r.count,
                    b.get_opt(r.fingerprint.as_ref()),
                ])?;
            }
        }
    }
    tx.commit()
}
