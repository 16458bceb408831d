//! Generic cell rate algorithm. STUB: to be completed.
