//! The client port's protocol: RESP2 values, request parsing and reply encoding.
pub mod value;

pub use value::Value;
