//! Hostile bytes into `Message::decode`: it must never panic, and whatever it
//! accepts must survive an encode/decode round trip unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis_proto::envelope::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::decode(data) else {
        return;
    };
    let bytes = msg.encode().expect("a decoded message re-encodes");
    let again = Message::decode(&bytes).expect("a re-encoded message decodes");
    assert_eq!(again, msg);
    // The encoder is deterministic: a second round trip gives the same bytes.
    assert_eq!(again.encode().expect("re-encodes"), bytes);
});
