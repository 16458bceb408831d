//! Why a request was refused (or a failure let through): the audit vocabulary in one place.
//!
//! Why in one place: the strings are a contract with every database holding audit events
//! (and with the tests that read them back), so they are listed once, each beside the step
//! that gives it, instead of as literals scattered over the steps. See [`Reason`].

use std::fmt;

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident => $s:literal, )*) => {
        /// Why a request was refused (or a failure let through): the audit vocabulary.
        ///
        /// Every refusal carries one in its
        /// [`RejectionInfo`](crate::response::problem::RejectionInfo); the audit trail
        /// stores [`Reason::as_str`], so these strings are a contract with every database
        /// holding events: a variant's string never changes. An authenticator's
        /// `AuthError::Invalid` reason is mapped with [`Reason::from_static`] (a custom
        /// authenticator's own reason becomes [`Reason::Other`], stored as given).
        ///
        /// ```
        /// use secure_routes::audit::Reason;
        /// assert_eq!(Reason::QuotaExhausted.as_str(), "quota_exhausted");
        /// assert_eq!(Reason::from_static("expired"), Reason::Expired);
        /// assert_eq!(Reason::from_static("my_reason").as_str(), "my_reason");
        /// ```
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Reason {
            $( $(#[$doc])* $variant, )*
            /// A reason not listed here (a custom authenticator's, an application's own
            /// [`Rejection`](crate::response::problem::Rejection)), recorded verbatim.
            Other(&'static str),
        }

        impl Reason {
            /// Every listed reason (not [`Reason::Other`]), in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),*];

            /// The string the audit trail stores.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $s,)*
                    Reason::Other(s) => s,
                }
            }

            /// The variant whose string is `s`, else [`Reason::Other`]`(s)`: either way
            /// `as_str` gives `s` back.
            pub fn from_static(s: &'static str) -> Self {
                match s {
                    $($s => Reason::$variant,)*
                    other => Reason::Other(other),
                }
            }
        }
    };
}

reasons! {
    // Step 1, the client.
    /// The server gives no socket peer (`ConnectInfo`): a configuration error (500).
    MissingConnectInfo => "missing_connect_info",
    // Step 4, methods.
    /// The route does not accept the method (405).
    MethodNotAllowed => "method_not_allowed",
    // Step 5, authentication.
    /// No credential, on a route that requires one (401); also an unmet requirement without
    /// a principal (403).
    MissingCredential => "missing_credential",
    /// The authenticator panicked (500).
    AuthenticatorPanicked => "authenticator_panicked",
    /// The authenticator took longer than its timeout (503).
    AuthenticatorTimeout => "authenticator_timeout",
    /// The authenticator could not decide, such as an unreachable key set (503).
    AuthenticatorUnavailable => "authenticator_unavailable",
    /// The credential is not a well-formed token or key.
    Malformed => "malformed",
    /// The credential is longer than the verifier accepts.
    Oversized => "oversized",
    /// The signature does not verify (a credential, or a CSRF token).
    BadSignature => "bad_signature",
    /// Past its expiry (a credential, or a CSRF token).
    Expired => "expired",
    /// Issued in the future, beyond the allowed clock skew (a credential, or a CSRF token).
    IssuedInFuture => "issued_in_future",
    /// Not valid yet (`nbf`).
    NotYetValid => "not_yet_valid",
    /// A signing algorithm the verifier does not accept.
    WrongAlgorithm => "wrong_algorithm",
    /// A token type (`typ`) the verifier does not accept.
    WrongType => "wrong_type",
    /// A header the verifier does not understand (`crit`).
    UnsupportedHeader => "unsupported_header",
    /// A key id that is not well formed.
    BadKid => "bad_kid",
    /// No key id where the key set needs one.
    MissingKid => "missing_kid",
    /// A key id the key set does not hold.
    UnknownKid => "unknown_kid",
    /// An API key (or key id) that is not known.
    UnknownKey => "unknown_key",
    /// The key set could not be fetched, so no key id can be checked.
    JwksUnavailable => "jwks_unavailable",
    /// The issuer (`iss`) is not the expected one.
    BadIssuer => "bad_issuer",
    /// The audience (`aud`) is not the expected one.
    BadAudience => "bad_audience",
    /// A claim of the wrong type or shape.
    BadClaim => "bad_claim",
    /// No `exp` claim.
    MissingExp => "missing_exp",
    /// No `sub` claim.
    MissingSub => "missing_sub",
    /// No `iss` claim.
    MissingIss => "missing_iss",
    /// No `aud` claim.
    MissingAud => "missing_aud",
    /// Another required claim is missing.
    MissingClaim => "missing_claim",
    /// Any other verification failure.
    Invalid => "invalid",
    /// More than one credential was presented.
    MultipleCredentials => "multiple_credentials",
    /// More than one session cookie of one name.
    AmbiguousCookie => "ambiguous_cookie",
    /// A Supabase session cookie that cannot be read.
    BadSessionCookie => "bad_session_cookie",
    /// A Supabase API key (anon or service role) presented as a user credential.
    SupabaseApiKey => "supabase_api_key",
    // Step 6, the rate limit.
    /// The quota is used up (429).
    QuotaExhausted => "quota_exhausted",
    /// The rate-limit store did not answer in time (503, or let through when fail-open).
    StoreTimeout => "store_timeout",
    /// The rate-limit store failed (503, or let through when fail-open).
    StoreError => "store_error",
    /// The rate-limit store panicked (500).
    StorePanicked => "store_panicked",
    // Step 6b, authorization.
    /// The principal lacks a required role (403).
    MissingRole => "missing_role",
    /// A claim does not have the required value (403).
    ClaimMismatch => "claim_mismatch",
    /// A custom requirement is not met (403).
    RequirementNotMet => "requirement_not_met",
    // Step 7, the body.
    /// The declared `Content-Length` is over the limit (413).
    DeclaredLength => "declared_length",
    /// The streamed body grew over the limit (413).
    StreamedLength => "streamed_length",
    /// The body could not be read: bad chunked encoding, cut short (400).
    BodyUnreadable => "body_unreadable",
    // Step 8, CSRF.
    /// A cross-site request by Fetch Metadata (`Sec-Fetch-Site`) (403).
    CrossSiteFetch => "cross_site_fetch",
    /// An `Origin` other than the host or a trusted origin (403).
    CrossOrigin => "cross_origin",
    /// No CSRF cookie (403).
    MissingCookie => "missing_cookie",
    /// No `X-CSRF-Token` header (403).
    MissingHeader => "missing_header",
    /// The cookie and header tokens differ, or one of them is ambiguous (403).
    Mismatch => "mismatch",
    // Step 9, the handler, and the router's fallback.
    /// The handler panicked (500).
    HandlerPanicked => "handler_panicked",
    /// No route matches the path (404).
    NotFound => "not_found",
    // The gateway (`secure-routes serve`).
    /// The path cannot be normalized safely: an encoded `/` or `\`, a dot segment above the
    /// root, a control character (400).
    BadPath => "bad_path",
    /// The upstream could not be reached: connection refused, reset, DNS (502).
    UpstreamUnreachable => "upstream_unreachable",
    /// The upstream did not answer within the gateway's `upstream_timeout` (504).
    UpstreamTimeout => "upstream_timeout",
    // Step 2, bans.
    /// The client (address or subject) is banned (403 with `Retry-After`).
    Banned => "banned",
    /// This refusal's strike reached the ban threshold: the event that records a new ban.
    BanIssued => "ban_issued",
    /// An operator lifted the ban.
    BanLifted => "ban_lifted",
}

impl From<&'static str> for Reason {
    fn from(s: &'static str) -> Self {
        Reason::from_static(s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn strings_are_unique_and_round_trip() {
        let mut seen = HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "duplicate {}", r.as_str());
            assert_eq!(Reason::from_static(r.as_str()), *r);
            // Lower snake case: what the audit tables and dashboards expect.
            assert!(
                r.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                r.as_str()
            );
        }
    }

    #[test]
    fn unlisted_reasons_are_kept_verbatim() {
        let r = Reason::from_static("tenant_suspended");
        assert_eq!(r, Reason::Other("tenant_suspended"));
        assert_eq!(r.to_string(), "tenant_suspended");
    }
}
