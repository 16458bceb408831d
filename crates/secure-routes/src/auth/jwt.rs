//! JWT authenticator. STUB: to be completed.
