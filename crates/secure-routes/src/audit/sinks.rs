//! Built-in sinks. STUB: to be completed.
