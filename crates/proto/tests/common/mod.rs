//! Helpers shared by the token tests: claims as an editable CBOR map.
#![allow(dead_code)]

use coset::cbor::value::Value;
use portcullis_proto::token::Claims;

/// A CBOR integer.
pub fn int(i: i64) -> Value {
    Value::Integer(i.into())
}

/// The claims `c` as the CWT claims map (RFC 8392 keys), to edit or encode.
pub fn claims_map(c: &Claims) -> Vec<(Value, Value)> {
    vec![
        (int(1), Value::Text(c.iss.clone())),
        (int(2), Value::Text(c.sub.clone())),
        (int(3), Value::Text(c.aud.clone())),
        (int(4), Value::Integer(c.exp.into())),
        (int(5), Value::Integer(c.nbf.into())),
        (int(6), Value::Integer(c.iat.into())),
        (int(7), Value::Bytes(c.cti.clone())),
        (int(9), Value::Text(c.scope.to_string())),
        (int(10), Value::Bytes(c.nonce.clone())),
    ]
}
