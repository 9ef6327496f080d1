//! Little-endian byte writer and a bounds-checked reader for the shared-data encodings.
//! The reader never panics: every read returns `None` past the end.
//!
//! A record is `magic(4) version(1) fields... checksum(8)`: the writer's `finish` appends the
//! checksum of everything before it and the reader verifies it before any field is read, so a
//! flipped bit inside a count or a weight is rejected instead of decoding as a plausible value.

use crate::checksum::checksum;

const TRAILER: usize = 8;

#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn with_header(magic: &[u8; 4], version: u8) -> Self {
        let mut w = Writer {
            buf: Vec::with_capacity(64),
        };
        w.buf.extend_from_slice(magic);
        w.u8(version);
        w
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// The finished record: the fields followed by the checksum trailer.
    pub fn finish(mut self) -> Vec<u8> {
        let sum = checksum(&self.buf);
        self.u64(sum);
        self.buf
    }
    /// A string of at most 255 bytes (longer ones are cut at a char boundary).
    pub fn short_str(&mut self, s: &str) {
        let mut end = s.len().min(255);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let bytes = s.as_bytes().get(..end).unwrap_or_default();
        self.u8(bytes.len() as u8);
        self.buf.extend_from_slice(bytes);
    }
}

pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks magic, version and the checksum trailer; `None` if any differs. The reader then
    /// reads the fields only (the trailer is not part of them).
    pub fn with_header(bytes: &'a [u8], magic: &[u8; 4], version: u8) -> Option<Self> {
        let (body, trailer) = bytes.split_at_checked(bytes.len().checked_sub(TRAILER)?)?;
        let mut r = Reader { rest: body };
        let ours = r.take(4)? == magic && r.u8()? == version;
        (ours && u64::from_le_bytes(trailer.try_into().ok()?) == checksum(body)).then_some(r)
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub fn short_str(&mut self) -> Option<String> {
        let n = usize::from(self.u8()?);
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    /// `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        self.take(n)
    }
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }
    /// True when everything was consumed (trailing bytes mean a corrupt or foreign value).
    pub fn is_done(&self) -> bool {
        self.rest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Vec<u8> {
        let mut w = Writer::with_header(b"CGxx", 3);
        w.u16(7);
        w.short_str("v2");
        w.finish()
    }

    #[test]
    fn reads_back_what_was_written_without_the_trailer() {
        let bytes = record();
        assert_eq!(bytes.len(), 5 + 2 + 3 + 8);
        let mut r = Reader::with_header(&bytes, b"CGxx", 3).unwrap();
        assert_eq!(r.u16(), Some(7));
        assert_eq!(r.short_str().as_deref(), Some("v2"));
        assert!(r.is_done(), "the trailer is not a field");
    }

    #[test]
    fn refuses_other_magic_version_checksum_or_length() {
        let bytes = record();
        assert!(Reader::with_header(&bytes, b"CGyy", 3).is_none());
        assert!(Reader::with_header(&bytes, b"CGxx", 2).is_none());
        for i in 0..bytes.len() {
            let mut v = bytes.clone();
            v[i] ^= 0x10;
            assert!(Reader::with_header(&v, b"CGxx", 3).is_none(), "byte {i}");
        }
        for cut in 0..bytes.len() {
            assert!(Reader::with_header(&bytes[..cut], b"CGxx", 3).is_none());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Reader::with_header(&longer, b"CGxx", 3).is_none());
    }
}
