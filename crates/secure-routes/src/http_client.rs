//! The outbound HTTP client shared by the JWKS fetcher (feature `jwks`) and the alert webhooks
//! (feature `alerts`): hyper-util's client with rustls on the aws-lc-rs provider jsonwebtoken
//! already uses (no `ring`, no process-global provider), the Mozilla root store compiled in so
//! it works in minimal containers without a system CA bundle. It follows no redirects (hyper
//! never does) and keeps no idle connection (a fetch every few minutes gains nothing from one).

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The client type, over request bodies of type `B`.
pub(crate) type HttpClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// A client whose connects time out after `connect_timeout`; `https_only` refuses plain http.
pub(crate) fn http_client<B>(
    connect_timeout: Duration,
    https_only: bool,
) -> Result<HttpClient<B>, String>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let https = if https_only {
        https.https_only()
    } else {
        https.https_or_http()
    };
    let connector = https.enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector))
}

/// An error and its sources, for a log line (callers pass transport errors only: never a
/// credential).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
