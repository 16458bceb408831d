//! The demo binary's connection limits, black box over loopback: a slowloris connection is
//! closed at `--header-read-timeout`, and SIGTERM with a stuck connection still exits within
//! `--shutdown-grace` with the audit log flushed.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::Demo;

/// Liveness bound for each wait: far above what the configured timers need, so a
/// regression fails here instead of hanging.
const BOUND: Duration = Duration::from_secs(20);

fn addr(demo: &Demo) -> String {
    demo.base.trim_start_matches("http://").to_owned()
}

/// A demo this file stops itself, to bound the wait for its exit (`support::Demo::stop`
/// waits without a bound).
struct OwnDemo {
    child: Child,
    addr: String,
    stderr: PathBuf,
}

impl OwnDemo {
    fn start(dir: &Path, args: &[&str]) -> OwnDemo {
        let stderr = dir.join("demo.stderr");
        let mut child = Command::new(env!("CARGO_BIN_EXE_secure-routes"))
            .args(["demo", "--addr", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir)
            .env("SECURE_ROUTES_JWT_SECRET", support::JWT_SECRET)
            .env("CSRF_SECRET", support::CSRF_SECRET)
            .env("RUST_LOG", "warn")
            .env_remove("SECURE_ROUTES_LIMITS")
            .env_remove("SECURE_ROUTES_AUDIT")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "no banner: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )
            });
        OwnDemo {
            child,
            addr,
            stderr,
        }
    }

    /// Sends SIGTERM and waits at most `bound` for the exit.
    fn terminate(&mut self, bound: Duration) -> Option<ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let start = Instant::now();
        while start.elapsed() < bound {
            if let Some(exit) = self.child.try_wait().unwrap() {
                return Some(exit);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for OwnDemo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one request with `Connection: close` and returns the status line.
fn status_line(addr: &str, request_line: &str) -> String {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(BOUND)).unwrap();
    write!(
        conn,
        "{request_line}\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    response.lines().next().unwrap_or_default().to_owned()
}

/// Waits (bounded) until the server closes `conn`.
fn wait_closed(conn: &mut TcpStream) {
    conn.set_read_timeout(Some(BOUND)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("connection not closed within {BOUND:?}: {e}"),
        }
    }
}

#[test]
fn demo_closes_a_slowloris_connection_at_the_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path(), "slowloris", &["--header-read-timeout", "300ms"]);
    let mut slow = TcpStream::connect(addr(&demo)).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 400));
    // One byte every 50 ms (the read timeout paces it): 20 s for the whole head, so only the
    // server's timeout can end this within the bound.
    let start = Instant::now();
    let mut sent = 0;
    let mut buf = [0u8; 1024];
    let closed = loop {
        assert!(start.elapsed() < BOUND, "slowloris connection still open");
        match slow.read(&mut buf) {
            Ok(0) => break true,
            // The 408 hyper may write before closing.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => {}
        }
        if sent < head.len() {
            if slow.write_all(&head[sent..=sent]).is_err() {
                break true;
            }
            sent += 1;
        }
    };
    assert!(closed);
    assert!(sent < head.len(), "the whole head was sent ({sent} bytes)");
    // The demo still serves well-behaved clients.
    assert_eq!(
        status_line(&addr(&demo), "GET /health HTTP/1.1"),
        "HTTP/1.1 200 OK"
    );
    demo.stop();
}

#[test]
fn sigterm_with_a_stuck_connection_exits_within_the_grace_and_flushes_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = OwnDemo::start(
        dir.path(),
        &[
            "--audit",
            "jsonl:audit.jsonl",
            // Only the grace can end the stuck connection in time.
            "--header-read-timeout",
            "60s",
            "--shutdown-grace",
            "500ms",
        ],
    );
    let addr = demo.addr.clone();
    // Three audited refusals on three routes (distinct events whatever the log folds).
    assert_eq!(
        status_line(&addr, "GET /api/user/notes HTTP/1.1"),
        "HTTP/1.1 401 Unauthorized"
    );
    assert_eq!(
        status_line(&addr, "POST /api/strict HTTP/1.1"),
        "HTTP/1.1 401 Unauthorized"
    );
    assert_eq!(
        status_line(&addr, "DELETE /api/public-data HTTP/1.1"),
        "HTTP/1.1 405 Method Not Allowed"
    );
    // A client that never finishes its request head; a later request answered shows it
    // was accepted.
    let mut stuck = TcpStream::connect(&addr).unwrap();
    stuck
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert_eq!(
        status_line(&addr, "GET /health HTTP/1.1"),
        "HTTP/1.1 200 OK"
    );

    let exit = demo
        .terminate(BOUND)
        .expect("demo did not exit within the bound after SIGTERM");
    let stderr = demo.stderr();
    assert!(exit.success(), "demo exited with {exit}; stderr:\n{stderr}");
    // It got there by dropping the stuck connection at the end of the grace.
    assert!(
        stderr.contains("shutdown grace over"),
        "no forced close logged; stderr:\n{stderr}"
    );
    wait_closed(&mut stuck);
    let _ = stuck.shutdown(Shutdown::Both);

    // The events recorded before the signal are in the log.
    let counts = support::stop_counts(&stderr);
    assert_eq!((counts.recorded, counts.lost), (3, 0), "{counts:?}");
    let log = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let routes: Vec<String> = log
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["path"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    for path in ["/api/user/notes", "/api/strict", "/api/public-data"] {
        assert!(routes.iter().any(|r| r == path), "{path} not in {log}");
    }
}
