//! A bounds-checked cursor over untrusted bytes: every read says what it
//! reads, every length is read as a typed, capped quantity, and running out
//! of input is an error, never a panic.

use super::GpuError;

/// A cursor over a byte slice. Reads advance it; nothing reads past the end.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// A length read from the wire and already checked against its cap, so it
/// can size a [`Reader::take`] without further checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Len(usize);

impl Len {
    /// The length in bytes.
    pub(crate) const fn get(self) -> usize {
        self.0
    }
}

impl<'a> Reader<'a> {
    pub(crate) const fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub(crate) const fn position(&self) -> usize {
        self.pos
    }

    /// The bytes not yet read.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// Whether every byte has been read.
    pub(crate) fn is_empty(&self) -> bool {
        self.rest().is_empty()
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], GpuError> {
        let end = self.pos.checked_add(n).ok_or_else(|| truncated(what))?;
        let out = self.buf.get(self.pos..end).ok_or_else(|| truncated(what))?;
        self.pos = end;
        Ok(out)
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GpuError> {
        let bytes = self.take(N, what)?;
        <[u8; N]>::try_from(bytes).map_err(|_| truncated(what))
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, GpuError> {
        let [b] = self.array::<1>(what)?;
        Ok(b)
    }

    /// A little-endian u16.
    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, GpuError> {
        Ok(u16::from_le_bytes(self.array::<2>(what)?))
    }

    /// A little-endian u16 length, at most `max`.
    pub(crate) fn len_u16(&mut self, what: &'static str, max: usize) -> Result<Len, GpuError> {
        capped(usize::from(self.u16(what)?), what, max)
    }

    /// A little-endian u24 length (SPDM's MeasurementRecordLength), at most `max`.
    pub(crate) fn len_u24(&mut self, what: &'static str, max: usize) -> Result<Len, GpuError> {
        let [a, b, c] = self.array::<3>(what)?;
        let len = u32::from_le_bytes([a, b, c, 0]);
        capped(usize::try_from(len).map_err(|_| too_long(what))?, what, max)
    }

    /// The next `len` bytes as a reader of their own.
    pub(crate) fn sub(&mut self, len: Len, what: &'static str) -> Result<Reader<'a>, GpuError> {
        Ok(Reader::new(self.take(len.get(), what)?))
    }
}

fn capped(len: usize, what: &'static str, max: usize) -> Result<Len, GpuError> {
    if len > max {
        return Err(GpuError::Malformed(format!("{what}: length {len} exceeds the cap of {max}")));
    }
    Ok(Len(len))
}

fn truncated(what: &'static str) -> GpuError {
    GpuError::Malformed(format!("truncated at {what}"))
}

fn too_long(what: &'static str) -> GpuError {
    GpuError::Malformed(format!("{what}: length does not fit"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded() {
        let mut r = Reader::new(&[1, 2, 0, 3, 0, 0, 9]);
        assert_eq!(r.u8("a").unwrap(), 1);
        assert_eq!(r.u16("b").unwrap(), 2);
        assert_eq!(r.len_u24("c", 3).unwrap().get(), 3);
        assert_eq!(r.position(), 6);
        assert!(r.take(2, "d").is_err());
        // A failed read does not move the cursor.
        assert_eq!(r.position(), 6);
        assert_eq!(r.rest(), &[9]);
        assert!(!r.is_empty());
        assert!(r.take(usize::MAX, "e").is_err());
        assert_eq!(r.u8("f").unwrap(), 9);
        assert!(r.is_empty());
        assert!(r.u8("g").is_err());
    }

    #[test]
    fn lengths_are_capped() {
        let mut r = Reader::new(&[5, 0]);
        assert!(matches!(r.len_u16("len", 4), Err(GpuError::Malformed(m)) if m.contains("cap")));
        let mut r = Reader::new(&[4, 0, 1, 2, 3, 4]);
        let len = r.len_u16("len", 4).unwrap();
        let mut sub = r.sub(len, "body").unwrap();
        assert_eq!(sub.array::<4>("all").unwrap(), [1, 2, 3, 4]);
        assert!(sub.is_empty() && r.is_empty());
    }
}
