//! Just enough DER for the structures x509-parser does not cover (the FWID
//! extensions, OCSP responses): definite lengths up to 64 KiB, no
//! indefinite forms; every read is bounded and returns `None` on bad input.

use time::{Date, Month, OffsetDateTime, Time};

pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const BIT_STRING: u8 = 0x03;
pub(crate) const OCTET_STRING: u8 = 0x04;
pub(crate) const NULL: u8 = 0x05;
pub(crate) const OID: u8 = 0x06;
pub(crate) const ENUMERATED: u8 = 0x0A;
pub(crate) const UTF8_STRING: u8 = 0x0C;
pub(crate) const GENERALIZED_TIME: u8 = 0x18;
pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const CONTEXT_CONSTRUCTED_0: u8 = 0xA0;
pub(crate) const CONTEXT_CONSTRUCTED_1: u8 = 0xA1;
pub(crate) const CONTEXT_CONSTRUCTED_2: u8 = 0xA2;
pub(crate) const CONTEXT_CONSTRUCTED_6: u8 = 0xA6;

/// The DER of `tag` over `content` (definite length; content up to 64 KiB,
/// longer is `None`).
pub(crate) fn encode(tag: u8, content: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(content.len().saturating_add(4));
    out.push(tag);
    match u8::try_from(content.len()) {
        Ok(len @ 0..=0x7F) => out.push(len),
        Ok(len) => out.extend_from_slice(&[0x81, len]),
        Err(_) => {
            out.push(0x82);
            out.extend_from_slice(&u16::try_from(content.len()).ok()?.to_be_bytes());
        }
    }
    out.extend_from_slice(content);
    Some(out)
}

/// `(tag, content, rest)`.
pub(crate) fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7F => (usize::from(first), rest),
        0x81 => {
            let (&b, rest) = rest.split_first()?;
            (usize::from(b), rest)
        }
        0x82 => {
            let (bytes, rest) = rest.split_first_chunk::<2>()?;
            (usize::from(u16::from_be_bytes(*bytes)), rest)
        }
        _ => return None,
    };
    let content = rest.get(..len)?;
    Some((tag, content, rest.get(len..)?))
}

/// The content of a TLV with tag `tag`, and what follows it.
pub(crate) fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (got, content, rest) = tlv(input)?;
    (got == tag).then_some((content, rest))
}

/// The content of a TLV with tag `tag` if the input starts with one.
pub(crate) fn optional(input: &[u8], tag: u8) -> Option<(Option<&[u8]>, &[u8])> {
    match input.first() {
        Some(t) if *t == tag => expect(input, tag).map(|(c, r)| (Some(c), r)),
        _ => Some((None, input)),
    }
}

/// The whole first TLV (tag and length included), and what follows it.
pub(crate) fn split_tlv(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (_, _, rest) = tlv(input)?;
    let len = input.len().checked_sub(rest.len())?;
    Some((input.get(..len)?, rest))
}

/// A GeneralizedTime `YYYYMMDDHHMMSSZ` (RFC 5280, 4.1.2.5.2: UTC, no
/// fractions).
pub(crate) fn generalized_time(content: &[u8]) -> Option<OffsetDateTime> {
    let digits: &[u8; 15] = content.try_into().ok()?;
    if digits[14] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let text = std::str::from_utf8(digits.get(range)?).ok()?;
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    };
    let year = i32::try_from(num(0..4)?).ok()?;
    let month = Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?;
    let day = u8::try_from(num(6..8)?).ok()?;
    let date = Date::from_calendar_date(year, month, day).ok()?;
    let time = Time::from_hms(
        u8::try_from(num(8..10)?).ok()?,
        u8::try_from(num(10..12)?).ok()?,
        u8::try_from(num(12..14)?).ok()?,
    )
    .ok()?;
    Some(date.with_time(time).assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_is_bounded() {
        assert_eq!(tlv(&[0x04, 0x01, 0xAA, 0xBB]), Some((0x04, &[0xAA][..], &[0xBB][..])));
        assert_eq!(tlv(&[0x04, 0x81, 0x01, 0xAA]), Some((0x04, &[0xAA][..], &[][..])));
        assert_eq!(tlv(&[0x04, 0x02, 0xAA]), None);
        assert_eq!(tlv(&[0x04, 0x80]), None);
        assert_eq!(tlv(&[0x04, 0x83, 0, 0, 1]), None);
        assert_eq!(tlv(&[0x04]), None);
        assert_eq!(split_tlv(&[0x30, 0x00, 0x05]), Some((&[0x30, 0x00][..], &[0x05][..])));
        assert_eq!(optional(&[0x30, 0x00], 0xA0), Some((None, &[0x30, 0x00][..])));
        assert_eq!(optional(&[0xA0, 0x00, 0x01], 0xA0), Some((Some(&[][..]), &[0x01][..])));
    }

    #[test]
    fn generalized_times() {
        assert_eq!(generalized_time(b"20250821064708Z"), Some(time::macros::datetime!(2025-08-21 06:47:08 UTC)));
        assert_eq!(generalized_time(b"20250821064708"), None);
        assert_eq!(generalized_time(b"20251321064708Z"), None);
        assert_eq!(generalized_time(b"2025082106470+Z"), None);
        assert_eq!(generalized_time(b"20250821064708.5Z"), None);
    }
}
