//! API-key authenticator. STUB: to be completed.

/// Stub.
#[derive(Debug)]
pub struct ApiKeyAuthenticator;
impl ApiKeyAuthenticator {
    /// Stub.
    pub fn new(_header: &str) -> Self {
        Self
    }
}
impl super::Authenticator for ApiKeyAuthenticator {
    fn authenticate<'a>(
        &'a self,
        _parts: &'a http::request::Parts,
    ) -> super::BoxFuture<'a, Result<super::Principal, super::AuthError>> {
        Box::pin(async { Err(super::AuthError::Missing) })
    }
}
