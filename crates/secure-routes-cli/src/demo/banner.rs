//! The banner `secure-routes demo` prints at start: where it listens, its stores, its routes
//! and policies, and how to call it with the configured identity.

use std::net::SocketAddr;

use super::{DemoOptions, Identity, SESSION_COOKIE};
use crate::stores::{AuditLocation, LimitsLocation};

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
Bans:          {bans}
Audit log:     secure-routes audit{audit_flag}
Ctrl-C (or `kill %1` when started with `&`) stops the server and flushes the audit log.",
        limits = options.limits,
        audit = options.audit,
        identity = options.identity,
        bans = bans_line(options),
    )
}

/// What the banner says about bans: the rule, and how to list them (a memory store is read
/// only by the process itself).
fn bans_line(options: &DemoOptions) -> String {
    let Some(p) = &options.bans else {
        return "off (--bans off)".to_owned();
    };
    let list = match options.limits {
        LimitsLocation::Memory => {
            "kept in this process (--limits sqlite:PATH to list them with `secure-routes bans`)"
                .to_owned()
        }
        ref shared => format!("secure-routes bans list --limits {shared}"),
    };
    format!(
        "{} points in {} ban a client for {}, doubling to {}; {list}",
        p.threshold(),
        human(p.window()),
        human(p.first_ban()),
        human(p.max_ban()),
    )
}

/// `90s`, `10m`, `24h`, `7d`: the largest whole unit.
pub(crate) fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
