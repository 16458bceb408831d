//! The banner `secure-routes demo` prints at start: where it listens, its stores, its routes
//! and policies, and how to call it with the configured identity.

use std::net::SocketAddr;

use super::{DemoOptions, Identity, SESSION_COOKIE};
use crate::stores::AuditLocation;

/// The banner printed at start: routes and how to get a token.
pub fn banner(addr: SocketAddr, options: &DemoOptions) -> String {
    let audit_flag = match &options.audit {
        AuditLocation::Sqlite(p) if p.as_os_str() == "./secure-routes.db" => String::new(),
        other => format!(" --audit {other}"),
    };
    let how = match &options.identity {
        Identity::DemoSecret => format!(
            "Get a token:   TOKEN=$(secure-routes token --sub alice)
Call:          curl -H \"Authorization: Bearer $TOKEN\" http://{addr}/api/user/notes"
        ),
        Identity::Jwks { .. } => format!(
            "Call:          curl -H \"Authorization: Bearer $TOKEN\" http://{addr}/api/user/notes
               (TOKEN from your identity provider; the {SESSION_COOKIE} cookie works too, with CSRF)"
        ),
        Identity::Supabase { .. } => format!(
            "Call:          curl -H \"Authorization: Bearer $ACCESS_TOKEN\" http://{addr}/api/user/notes
               (a user's session.access_token; the SSR session cookie works too, with CSRF)"
        ),
    };
    let alerts = options.alerts.as_ref().map_or_else(String::new, |engine| {
        // Each rule as `routes` prints it: the webhook's scheme, host and port only.
        let rules: String = engine
            .rules()
            .iter()
            .map(|r| format!("\n  {}", secure_routes_gateway::config::describe_alert(r)))
            .collect();
        format!("\nAlerts (signed with $SECURE_ROUTES_WEBHOOK_SECRET):{rules}\n")
    });
    format!(
        "secure-routes demo listening on http://{addr}  (limits: {limits}, audit log: {audit})
Tokens from:   {identity}

  GET            /health
  GET, POST      /api/public-data          PUBLIC: 60/min, 1 MiB
  GET            /api/csrf                 CSRF token for your session
  GET,POST,PUT,DELETE /api/user/notes      AUTHENTICATED: 20/hour, 5 MiB, CSRF for cookie sessions
  POST           /api/strict               STRICT: 10/min, 512 KiB
  POST           /api/sensitive-operation  auth + CSRF, 5/hour, 100 KiB
{alerts}
{how}
Audit log:     secure-routes audit{audit_flag}
Ctrl-C (or `kill %1` when started with `&`) stops the server and flushes the audit log.",
        limits = options.limits,
        audit = options.audit,
        identity = options.identity,
    )
}
