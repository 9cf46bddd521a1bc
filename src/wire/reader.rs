//! A bounded cursor over one TLV value: every read names the field it was for, so a short or
//! malformed value becomes a [`WireError::BadValue`] that says what was wrong.

use super::tlv::WireError;

/// Reads fixed-size fields off the front of a TLV value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    typ: u16,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over the value of a TLV of type `typ`.
    pub(crate) fn new(typ: u16, buf: &'a [u8]) -> Self {
        Reader { typ, buf }
    }

    /// The error for `field` of this TLV.
    pub(crate) fn bad(&self, field: &'static str) -> WireError {
        WireError::BadValue {
            typ: self.typ,
            field,
        }
    }

    /// Bytes not read yet.
    pub(crate) fn left(&self) -> usize {
        self.buf.len()
    }

    /// The next `N` bytes.
    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<&'a [u8; N], WireError> {
        let (head, rest) = self.buf.split_first_chunk::<N>().ok_or(self.bad(field))?;
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(*self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(*self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(*self.array(field)?))
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Everything left, consuming the reader.
    pub(crate) fn into_rest(self) -> &'a [u8] {
        self.buf
    }

    /// The value must be exactly `len` bytes long (checked before reading it).
    pub(crate) fn exactly(self, len: usize) -> Result<Self, WireError> {
        if self.buf.len() == len {
            Ok(self)
        } else {
            Err(self.bad("length"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_fields_and_names_the_short_one() {
        let mut r = Reader::new(7, &[0, 1, 0, 0, 0, 2, 9, 9, 9]);
        assert_eq!(r.u16("a"), Ok(1));
        assert_eq!(r.u32("b"), Ok(2));
        assert_eq!(r.left(), 3);
        assert_eq!(r.u64("c"), Err(WireError::BadValue { typ: 7, field: "c" }));
        assert_eq!(r.u8("d"), Ok(9));
        assert_eq!(r.rest(), &[9, 9]);
        assert_eq!(r.left(), 0);
        assert!(Reader::new(1, &[1, 2]).exactly(3).is_err());
        assert!(Reader::new(1, &[1, 2]).exactly(2).is_ok());
    }
}
