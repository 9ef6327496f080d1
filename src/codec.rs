//! Little-endian byte writer and a bounds-checked reader for the shared-data encodings.
//! The reader never panics: every read returns `None` past the end.

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
    /// Checks magic and version; `None` if either differs.
    pub fn with_header(bytes: &'a [u8], magic: &[u8; 4], version: u8) -> Option<Self> {
        let mut r = Reader { rest: bytes };
        (r.take(4)? == magic && r.u8()? == version).then_some(r)
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
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }
    /// True when everything was consumed (trailing bytes mean a corrupt or foreign value).
    pub fn is_done(&self) -> bool {
        self.rest.is_empty()
    }
}
