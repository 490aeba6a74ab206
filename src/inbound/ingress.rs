//! JSON-RPC ingress: every POST body is parsed once, here, into an [`Envelope`] and checked
//! before anything else looks at it. Malformed input gets a JSON-RPC error with a 4xx status,
//! never a plain-text answer, a 5xx or a hang:
//!
//! - not JSON, invalid UTF-8 inside strings, nesting deeper than 128 → `-32700` (400)
//! - a batch (array) or any non-object → `-32600` (400): MCP does not use batches
//! - an `id` that is not a string or an integer (null, float, object…) → `-32600` (400)
//! - a string `id` longer than [`MAX_ID_BYTES`] or with control characters → `-32600` (400), so
//!   no caller string reaches a log line unescaped
//! - a `method` longer than [`MAX_METHOD_BYTES`] → `-32600` (400)

use std::borrow::Cow;

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::call::RpcError;
use crate::call::reject::INVALID_REQUEST;

/// Longest accepted string request id, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest accepted method name, in bytes.
pub const MAX_METHOD_BYTES: usize = 128;
/// JSON-RPC parse error.
pub const PARSE_ERROR: i64 = -32700;

/// The JSON-RPC envelope; `params` and `result` stay raw.
#[derive(Deserialize)]
pub struct Envelope<'a> {
    /// `Some("null")` for an explicit null (invalid); `None` when absent (a notification).
    #[serde(borrow, default, deserialize_with = "present")]
    pub id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
    #[serde(default)]
    pub error: Option<WireError>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A JSON-RPC error object as sent by a peer.
#[derive(Deserialize)]
pub struct WireError {
    pub code: i64,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub data: Option<Value>,
}

/// Why a body was refused: the HTTP status and the JSON-RPC error (with the id when it is
/// known and valid).
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub error: RpcError,
}

fn refused(status: StatusCode, code: i64, message: impl Into<String>) -> Refused {
    Refused {
        status,
        error: RpcError {
            code,
            message: message.into(),
            data: None,
        },
    }
}

/// Parses and checks a POST body; see the module docs.
pub fn parse(body: &[u8]) -> Result<Envelope<'_>, Refused> {
    let not_an_object = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => None,
        Some(b'[') => Some("batches are not supported: send one JSON-RPC message per request"),
        _ => Some("a JSON-RPC message must be a JSON object"),
    };
    if let Some(why) = not_an_object {
        // Still a parse error if it is not JSON at all.
        serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|e| {
            refused(
                StatusCode::BAD_REQUEST,
                PARSE_ERROR,
                format!("parse error: {e}"),
            )
        })?;
        return Err(refused(StatusCode::BAD_REQUEST, INVALID_REQUEST, why));
    }
    if too_deep(body) {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            PARSE_ERROR,
            format!("parse error: nesting deeper than {MAX_DEPTH}"),
        ));
    }
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_data() {
            INVALID_REQUEST
        } else {
            PARSE_ERROR
        };
        refused(
            StatusCode::BAD_REQUEST,
            code,
            if code == PARSE_ERROR {
                format!("parse error: {e}")
            } else {
                format!("invalid JSON-RPC message: {e}")
            },
        )
    })?;
    if let Some(id) = envelope.id {
        check_id(id.get())?;
    }
    if envelope
        .method
        .as_deref()
        .is_some_and(|m| m.len() > MAX_METHOD_BYTES)
    {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            format!("`method` is longer than {MAX_METHOD_BYTES} bytes"),
        ));
    }
    Ok(envelope)
}

/// Deepest accepted nesting of arrays and objects (serde_json's own limit for typed parsing;
/// raw parts of the envelope would otherwise be accepted at any depth).
pub const MAX_DEPTH: usize = 128;

/// Whether arrays and objects nest deeper than [`MAX_DEPTH`] (one pass, strings skipped).
fn too_deep(body: &[u8]) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn check_id(raw: &str) -> Result<(), Refused> {
    let bad = |why: &str| {
        refused(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            format!("invalid request id: {why}"),
        )
    };
    match raw.as_bytes().first() {
        Some(b'"') => {
            let id: String = serde_json::from_str(raw).map_err(|_| bad("not a string"))?;
            if id.len() > MAX_ID_BYTES {
                return Err(bad(&format!("longer than {MAX_ID_BYTES} bytes")));
            }
            if id.chars().any(char::is_control) {
                return Err(bad("contains control characters"));
            }
            Ok(())
        }
        Some(b'-' | b'0'..=b'9') => raw
            .parse::<i64>()
            .map(|_| ())
            .map_err(|_| bad("must be a string or an integer")),
        _ => Err(bad("must be a string or an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str) -> Option<i64> {
        parse(body.as_bytes()).err().map(|r| r.error.code)
    }

    #[test]
    fn malformed_bodies_get_json_rpc_errors() {
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), None);
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":"a-1","method":"ping"}"#),
            None
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            None
        );
        assert_eq!(code("not json"), Some(PARSE_ERROR));
        assert_eq!(
            code(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#),
            Some(INVALID_REQUEST)
        );
        assert_eq!(code("[1,"), Some(PARSE_ERROR));
        assert_eq!(code("42"), Some(INVALID_REQUEST));
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#),
            Some(INVALID_REQUEST)
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#),
            Some(INVALID_REQUEST)
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#),
            Some(INVALID_REQUEST)
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":"a\nforged log line","method":"ping"}"#),
            Some(INVALID_REQUEST)
        );
        let long = format!(
            r#"{{"jsonrpc":"2.0","id":"{}","method":"ping"}}"#,
            "x".repeat(129)
        );
        assert_eq!(code(&long), Some(INVALID_REQUEST));
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":99999999999999999999999,"method":"ping"}"#),
            Some(INVALID_REQUEST)
        );
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let nested = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":{deep}}}"#);
        assert_eq!(code(&nested), Some(PARSE_ERROR));
        let brackets_in_a_string = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":{{"a":"\\\"{}"}}}}"#,
            "[".repeat(300)
        );
        assert_eq!(code(&brackets_in_a_string), None);
        let mut invalid_utf8 = br#"{"jsonrpc":"2.0","id":1,"method":"p"#.to_vec();
        invalid_utf8.extend([0xff, 0xfe]);
        invalid_utf8.extend(br#""}"#);
        assert!(matches!(
            parse(&invalid_utf8).err().map(|r| r.error.code),
            Some(PARSE_ERROR)
        ));
    }
}
