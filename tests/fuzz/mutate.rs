//! Byte-level mutations (AFL-style havoc): flips, boundary values, inserts, deletes, copies,
//! splices with another input.

use crate::rng::Rng;

/// Upper bound on a mutated input, so one iteration stays cheap.
pub const MAX_INPUT: usize = 1 << 20;

const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e999",
    b"-0.0",
    b"4294967296",
    b"18446744073709551616",
    b"\\u0000",
    b"\\ud800",
    b"\\\"",
    b"\xff",
    b"\xc3\xa9",
    b"\xe2\x80\xae",
];

pub fn havoc(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(8) {
        one(rng, data, other);
    }
    data.truncate(MAX_INPUT);
}

fn one(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    let len = data.len();
    let at = rng.below(len + 1);
    match rng.below(10) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = *rng.pick(&[0u8, 1, 0x7f, 0x80, 0xff, b'0', b'9', b'"', b'\\']);
        }
        2 if len > 0 => {
            // A little-endian boundary value over 1, 2, 4 or 8 bytes.
            let width = *rng.pick(&[1usize, 2, 4, 8]).min(&len);
            let i = rng.below(len - width + 1);
            let v = rng.interesting_u64().to_le_bytes();
            data[i..i + width].copy_from_slice(&v[..width]);
        }
        3 if len > 0 => {
            let n = rng.len(len - at.min(len));
            data.drain(at.min(len)..(at + n).min(len));
        }
        4 => {
            let token = rng.pick(TOKENS);
            data.splice(at..at, token.iter().copied());
        }
        5 if len > 0 => {
            // Copy a slice of this input elsewhere (duplicates keys, fields, buckets).
            let from = rng.below(len);
            let n = rng.len(len - from);
            let chunk = data[from..from + n].to_vec();
            data.splice(at..at, chunk);
        }
        6 if !other.is_empty() => {
            // Splice: this input's head with the other's tail.
            let from = rng.below(other.len());
            data.truncate(at);
            data.extend_from_slice(&other[from..]);
        }
        7 => {
            let n = rng.len(64);
            let fill = (rng.u64() & 0xff) as u8;
            data.splice(at..at, std::iter::repeat_n(fill, n));
        }
        8 if len > 0 => {
            let i = rng.below(len);
            data[i] = data[i].wrapping_add(rng.below(70) as u8).wrapping_sub(35);
        }
        _ => {
            let n = rng.len(16);
            let bytes: Vec<u8> = (0..n).map(|_| (rng.u64() & 0xff) as u8).collect();
            data.splice(at..at, bytes);
        }
    }
}
