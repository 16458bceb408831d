//! The vocabulary the JWT verifier (`verify`) and its token cache (`cache`) share: a token's
//! claims and the key generation of a pinned key.
//!
//! Why a module of its own: the cache stores claims that the verifier produces, and the
//! verifier owns a cache; with these types in either of them, the two would import each
//! other. Here both import them and neither imports the other's internals.

use serde_json::{Map, Value};

/// A token's payload.
pub(crate) type Claims = Map<String, Value>;

/// The generation of entries verified with a key that never changes (a configured secret or
/// PEM): valid whatever a key set is doing. Key set generations never take this value.
pub(crate) const PINNED: u64 = u64::MAX;
