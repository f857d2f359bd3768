//! The scenarios `backend_tests!` runs on both backends, by theme.

mod compatibility;
mod operations;
mod subjects;

pub use compatibility::*;
pub use operations::*;
pub use subjects::*;
