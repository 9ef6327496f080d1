//! What a request's outcome is, shared by the filter side (which records it) and the analyser
//! side (which judges it): the side it went to and whether it counts as an error.
//!
//! Evidence is what the upstream (or Envoy on its behalf: no healthy upstream, connect failure,
//! upstream timeout or reset, all local replies with a 5xx) answered. A stream that ended with
//! no response at all was abandoned by the client (Envoy always answers an upstream failure,
//! unless the client is gone): it is not evidence, unless the client had waited for the
//! canary longer than the analysis allows (then it is a slow request, and an error past
//! `requestTimeout`).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Stable = 0,
    Canary = 1,
}

/// Whether a response counts against the canary: 5xx (local replies such as 503 for an
/// unreachable upstream or 504 for a timeout included) or no response at all (status 0: the
/// stream ended before any response headers).
pub fn is_error(status: u32) -> bool {
    status == 0 || status >= 500
}

/// gRPC status codes that count as errors: bit n is code n.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcCodes(pub u32);

/// gRPC's code names, by number (grpc/grpc `doc/statuscodes.md`).
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl GrpcCodes {
    /// The default: the codes a server produces when it fails (UNKNOWN, DEADLINE_EXCEEDED,
    /// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS), as 5xx are errors. The codes that
    /// describe the request (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, ...) are not, as
    /// 4xx are not.
    pub const SERVER_ERRORS: GrpcCodes =
        GrpcCodes(1 << 2 | 1 << 4 | 1 << 12 | 1 << 13 | 1 << 14 | 1 << 15);

    pub fn contains(self, code: u32) -> bool {
        code < 32 && self.0 & (1 << code) != 0
    }

    /// A code by name (`"INTERNAL"`) or number.
    pub fn code(name: &str) -> Option<u32> {
        if let Some(i) = GRPC_CODE_NAMES.iter().position(|n| *n == name) {
            return u32::try_from(i).ok();
        }
        name.parse::<u32>().ok().filter(|c| *c < 32)
    }
}

/// A `grpc-status` value: a plain decimal of at most two digits, else `None` (not gRPC, or a
/// value no gRPC implementation sends).
pub fn grpc_status_from_header(value: Option<&[u8]>) -> Option<u32> {
    let v = value.filter(|v| (1..=2).contains(&v.len()) && v.iter().all(u8::is_ascii_digit))?;
    Some(v.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
}

/// Whether an answered request counts as an error: its HTTP status, or its gRPC status (from
/// the trailers, or the headers of a trailers-only response) when that is one of `errors`.
pub fn answer_is_error(status: u32, grpc: Option<u32>, errors: GrpcCodes) -> bool {
    is_error(status) || grpc.is_some_and(|c| errors.contains(c))
}

/// One finished request, as the filter saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response reached the client: `micros` from the request's last byte (Envoy forwards
    /// it as it arrives) to the response headers, the upstream's time, not the client's upload.
    Answered { error: bool, micros: u64 },
    /// The client went away before any response, `waited_micros` after its request was
    /// complete (0 when it never completed: the canary never had the whole request).
    Abandoned { waited_micros: u64 },
}

/// The status recorded for a response from its `:status` header value; 0 (an error) when it is
/// absent or not a plain decimal number. Envoy's codecs always give three digits, so this only
/// guards the module against a host that breaks that promise: no sign, no spaces, no overflow.
pub fn status_from_header(value: Option<&[u8]>) -> u32 {
    let Some(digits) = value.filter(|v| !v.is_empty() && v.iter().all(u8::is_ascii_digit)) else {
        return 0;
    };
    digits
        .iter()
        .try_fold(0u32, |n, d| {
            n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_server_failures_are_errors_and_request_problems_are_not() {
        let d = GrpcCodes::SERVER_ERRORS;
        let server = [
            "UNKNOWN",
            "DEADLINE_EXCEEDED",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
        ];
        for (code, name) in GRPC_CODE_NAMES.iter().enumerate() {
            assert_eq!(GrpcCodes::code(name), Some(code as u32));
            assert_eq!(
                answer_is_error(200, Some(code as u32), d),
                server.contains(name),
                "{name}"
            );
        }
        assert!(
            answer_is_error(503, Some(0), d),
            "an HTTP 5xx stays an error"
        );
        assert!(!answer_is_error(200, None, d));
        assert_eq!(GrpcCodes::code("14"), Some(14));
        assert_eq!(
            GrpcCodes::code("internal"),
            None,
            "names are upper case, as gRPC writes them"
        );
        assert_eq!(grpc_status_from_header(Some(b"13")), Some(13));
        for junk in [&b""[..], b"abc", b"130", b" 1", b"-1"] {
            assert_eq!(grpc_status_from_header(Some(junk)), None, "{junk:?}");
        }
    }

    #[test]
    fn status_from_header_parses_plain_decimals_only() {
        assert_eq!(status_from_header(Some(b"200")), 200);
        assert_eq!(status_from_header(Some(b"503")), 503);
        assert_eq!(status_from_header(Some(b"99999")), 99_999);
        assert!(is_error(status_from_header(Some(b"99999"))));
        assert_eq!(status_from_header(Some(b"0200")), 200);
        assert_eq!(status_from_header(Some(b"4294967295")), u32::MAX);
        // Anything else is "no status", which counts as an error.
        for junk in [
            &b""[..],
            b"abc",
            b" 200",
            b"200 ",
            b"+200",
            b"-200",
            b"20 0",
            b"2\xff0",
            b"\xff\xfe",
            b"\xd9\xa2\xd9\xa0\xd9\xa0", // Arabic-Indic digits: not ASCII
            b"4294967296",               // overflows u32
        ] {
            assert_eq!(status_from_header(Some(junk)), 0, "{junk:?}");
        }
        assert_eq!(status_from_header(None), 0);
        assert!(is_error(status_from_header(None)) && is_error(status_from_header(Some(b"abc"))));
    }

    #[test]
    fn status_classification() {
        assert!(is_error(500) && is_error(503) && is_error(504) && is_error(0));
        assert!(
            !is_error(200) && !is_error(204) && !is_error(304) && !is_error(404) && !is_error(101)
        );
    }
}
