//! What a request's outcome is, shared by the filter side (which records it) and the analyser
//! side (which judges it): the side it went to and whether its status counts as an error.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Stable,
    Canary,
}

/// Whether a response counts against the canary: 5xx (local replies such as 503 for an
/// unreachable upstream or 504 for a timeout included) or no response at all (status 0: the
/// stream ended before any response headers).
pub fn is_error(status: u32) -> bool {
    status == 0 || status >= 500
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
