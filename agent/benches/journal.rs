//! Journal benchmark (filled in below).
fn main() {}
