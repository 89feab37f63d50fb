//! Fuzzes `wire::decode`: no input may panic it, and any frame it accepts must re-encode to
//! exactly the bytes it consumed (the encoding is canonical; `encode` refuses nothing `decode` accepted).
#![no_main]

use kvraft::wire::{decode, encode, peek_header, DecodeError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = peek_header(data);
    match decode(data) {
        Ok((frame, used)) => {
            assert!(used <= data.len());
            let mut out = Vec::new();
            encode(&frame, &mut out).expect("a decoded frame re-encodes");
            assert_eq!(&out[..], &data[..used]);
            assert!(matches!(header, Ok(Some(_))));
        }
        Err(DecodeError::Incomplete) => assert!(matches!(header, Ok(_))),
        Err(_) => {}
    }
});
