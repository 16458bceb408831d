//! The secure-routes binary. (in progress)
fn main() {}
