//! `secure-routes serve` with `tls_cert`/`tls_key`, against the real binary over loopback: the
//! listener speaks TLS (ALPN offers HTTP/2), cookies become `__Host-`/`Secure` with HSTS, the
//! proxy's answers come back over TLS, and plain HTTP on that port gets no HTTP answer.

mod support;

use std::sync::Arc;

use secure_routes_testkit::keys;
use support::{CSRF_SECRET, Demo, JWT_SECRET};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

fn start(dir: &std::path::Path) -> Demo {
    std::fs::write(dir.join("cert.pem"), keys::LOCALHOST_CERT).unwrap();
    std::fs::write(dir.join("key.pem"), keys::EC_PRIVATE).unwrap();
    // Port 1 on loopback: nothing listens, so forwarding answers 502.
    std::fs::write(
        dir.join("g.toml"),
        r#"
listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:1"
tls_cert = "cert.pem"
tls_key = "key.pem"
[stores]
audit = "sqlite:audit.db"
[[routes]]
path = "/api/{*rest}"
"#,
    )
    .unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_secure-routes"));
    command
        .args(["serve", "--config", "g.toml"])
        .current_dir(dir)
        .env("SECURE_ROUTES_JWT_SECRET", JWT_SECRET)
        .env("CSRF_SECRET", CSRF_SECRET)
        .env("RUST_LOG", "warn");
    Demo::spawn(command, dir, "gateway")
}

fn connector(alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    let cert = CertificateDer::from_pem_slice(keys::LOCALHOST_CERT.as_bytes()).unwrap();
    roots.add(cert).unwrap();
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

fn addr(gateway: &Demo) -> String {
    gateway
        .base
        .strip_prefix("https://")
        .expect("the banner names an https address")
        .to_owned()
}

/// One HTTP/1.1 request over TLS; the whole answer as text (the server closes).
async fn get(gateway: &Demo, path: &str) -> String {
    let tcp = TcpStream::connect(addr(gateway)).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector(&[b"http/1.1"]).connect(name, tcp).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // A peer that closes without close_notify is an error for rustls; the answer is read.
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn the_gateway_serves_tls_with_secure_cookies_and_its_proxy_answers() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(dir.path());

    // ALPN: a browser offering h2 gets HTTP/2.
    let tcp = TcpStream::connect(addr(&gateway)).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector(&[b"h2", b"http/1.1"])
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(tls);

    let csrf = get(&gateway, "/_secure-routes/csrf").await;
    assert!(csrf.starts_with("HTTP/1.1 200"), "{csrf}");
    let lower = csrf.to_ascii_lowercase();
    assert!(
        lower.contains("set-cookie: __host-csrf-token="),
        "the CSRF cookie is __Host- over TLS: {csrf}"
    );
    assert!(lower.contains("; secure"), "{csrf}");
    assert!(lower.contains("cache-control: no-store"), "{csrf}");
    assert!(lower.contains("strict-transport-security:"), "{csrf}");

    // The browser helper, embedded in the binary.
    let js = get(&gateway, "/_secure-routes/csrf-fetch.js").await;
    assert!(js.starts_with("HTTP/1.1 200"), "{js}");
    assert!(
        js.to_ascii_lowercase()
            .contains("content-type: text/javascript"),
        "{js}"
    );
    assert!(js.contains("export"), "{js}");

    // Forwarded through the proxy: the upstream is down, the answer is a 502 problem.
    let proxied = get(&gateway, "/api/x").await;
    assert!(proxied.starts_with("HTTP/1.1 502"), "{proxied}");
    assert!(
        proxied.contains("urn:secure-routes:problem:bad-gateway"),
        "{proxied}"
    );

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(addr(&gateway)).await.unwrap();
    plain
        .write_all(b"GET /_secure-routes/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = plain.read_to_end(&mut out).await;
    assert!(
        !String::from_utf8_lossy(&out).contains("HTTP/1.1 200"),
        "plain HTTP was answered on the TLS listener"
    );

    let stderr = gateway.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}
