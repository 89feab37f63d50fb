//! The client port's protocol: RESP2 and RESP3 values, request parsing and reply encoding.
pub mod blocking;
pub mod resp;
pub mod server_cmds;
pub mod session;
pub mod value;

pub use resp::{encode_command, parse_command, parse_value, split_args, ParseError};
pub use value::{Protocol, Value};
