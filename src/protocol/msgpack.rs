//! A zero-copy MessagePack reader over one borrowed body, for the request hot path.
//!
//! Why not rmpv or rmp-serde: a request is a flat map whose few known fields must be checked
//! one by one, and everything else skipped. Building an `rmpv::Value` tree would allocate for
//! every unknown key and copy every string; rmp-serde recurses into nested values. This
//! reader hands out one token at a time, borrows strings and binaries from the body, and
//! skips whole values with a counter instead of recursion.
//!
//! What it guarantees, for any input bytes: no panic, no allocation at all, no recursion (so
//! nesting depth cannot overflow the stack), and work linear in the body length. A length
//! header is only trusted after checking that the body really holds that many bytes, so a
//! header claiming a 4 GiB string in a 10-byte body fails as truncated.
//!
//! It must not interpret fields: that is `request.rs`'s job.

use std::fmt;

/// One MessagePack item. Scalars, strings, binaries and extensions are read whole;
/// containers only as their header, with their items still to be read (or skipped).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Token<'a> {
    Nil,
    Boolean(bool),
    /// Any integer marker holding a value >= 0 (signed markers included).
    Unsigned(u64),
    /// Any integer marker holding a value < 0.
    Negative(i64),
    Float(f64),
    /// The raw bytes of a str: not yet checked to be UTF-8.
    Str(&'a [u8]),
    Bin(&'a [u8]),
    /// An array header: this many values follow.
    Array(u32),
    /// A map header: this many key/value pairs follow.
    Map(u32),
    Extension,
}

/// Why a body is not valid MessagePack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReadError {
    /// The body ends inside the value that starts or continues at `offset`.
    Truncated { offset: usize },
    /// 0xc1 is the one byte MessagePack never uses.
    ReservedMarker { offset: usize },
}

impl fmt::Display for ReadError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Truncated { offset } => {
                write!(
                    formatter,
                    "the body ends in the middle of a value (at byte {offset})"
                )
            }
            ReadError::ReservedMarker { offset } => {
                write!(
                    formatter,
                    "byte 0xc1 at offset {offset} is not a MessagePack marker"
                )
            }
        }
    }
}

/// A cursor over a body. Invariant: `position <= body.len()`.
pub(super) struct Reader<'a> {
    body: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(body: &'a [u8]) -> Reader<'a> {
        Reader { body, position: 0 }
    }

    /// How many bytes have not been read yet.
    pub(super) fn remaining_bytes(&self) -> usize {
        self.body.len() - self.position
    }

    /// The offset of the next byte to read, for error messages.
    pub(super) fn position(&self) -> usize {
        self.position
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], ReadError> {
        let truncated = ReadError::Truncated {
            offset: self.position,
        };
        let end = self.position.checked_add(length).ok_or(truncated)?;
        let bytes = self.body.get(self.position..end).ok_or(truncated)?;
        self.position = end;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn read_u8(&mut self) -> Result<u8, ReadError> {
        Ok(self.take_array::<1>()?[0])
    }

    fn read_u16(&mut self) -> Result<u16, ReadError> {
        Ok(u16::from_be_bytes(self.take_array()?))
    }

    fn read_u32(&mut self) -> Result<u32, ReadError> {
        Ok(u32::from_be_bytes(self.take_array()?))
    }

    fn read_u64(&mut self) -> Result<u64, ReadError> {
        Ok(u64::from_be_bytes(self.take_array()?))
    }

    /// Reads a length header of 1, 2 or 4 bytes (`width`), then that many bytes.
    fn take_sized(&mut self, width: u8) -> Result<&'a [u8], ReadError> {
        let length = match width {
            1 => u32::from(self.read_u8()?),
            2 => u32::from(self.read_u16()?),
            _ => self.read_u32()?,
        };
        self.take(length as usize)
    }

    /// Skips an extension's type byte and `length` data bytes.
    fn skip_extension(&mut self, length: usize) -> Result<Token<'a>, ReadError> {
        let with_type = length.checked_add(1).ok_or(ReadError::Truncated {
            offset: self.position,
        })?;
        self.take(with_type)?;
        Ok(Token::Extension)
    }

    fn signed(value: i64) -> Token<'a> {
        match u64::try_from(value) {
            Ok(unsigned) => Token::Unsigned(unsigned),
            Err(_) => Token::Negative(value),
        }
    }

    /// Reads the next token. Marker layout (msgpack spec.md, "Formats"):
    /// `0x00-0x7f` positive fixint, `0x80-0x8f` fixmap, `0x90-0x9f` fixarray,
    /// `0xa0-0xbf` fixstr, `0xc0-0xdf` typed formats, `0xe0-0xff` negative fixint.
    pub(super) fn next_token(&mut self) -> Result<Token<'a>, ReadError> {
        let marker_offset = self.position;
        let marker = self.read_u8()?;
        let token = match marker {
            0x00..=0x7f => Token::Unsigned(u64::from(marker)),
            0x80..=0x8f => Token::Map(u32::from(marker & 0x0f)),
            0x90..=0x9f => Token::Array(u32::from(marker & 0x0f)),
            0xa0..=0xbf => Token::Str(self.take(usize::from(marker & 0x1f))?),
            0xc0 => Token::Nil,
            0xc1 => {
                return Err(ReadError::ReservedMarker {
                    offset: marker_offset,
                })
            }
            0xc2 => Token::Boolean(false),
            0xc3 => Token::Boolean(true),
            0xc4 => Token::Bin(self.take_sized(1)?),
            0xc5 => Token::Bin(self.take_sized(2)?),
            0xc6 => Token::Bin(self.take_sized(4)?),
            0xc7 => {
                let length = self.read_u8()?;
                self.skip_extension(usize::from(length))?
            }
            0xc8 => {
                let length = self.read_u16()?;
                self.skip_extension(usize::from(length))?
            }
            0xc9 => {
                let length = self.read_u32()?;
                self.skip_extension(length as usize)?
            }
            0xca => Token::Float(f64::from(f32::from_bits(self.read_u32()?))),
            0xcb => Token::Float(f64::from_bits(self.read_u64()?)),
            0xcc => Token::Unsigned(u64::from(self.read_u8()?)),
            0xcd => Token::Unsigned(u64::from(self.read_u16()?)),
            0xce => Token::Unsigned(u64::from(self.read_u32()?)),
            0xcf => Token::Unsigned(self.read_u64()?),
            0xd0 => Self::signed(i64::from(i8::from_be_bytes(self.take_array()?))),
            0xd1 => Self::signed(i64::from(i16::from_be_bytes(self.take_array()?))),
            0xd2 => Self::signed(i64::from(i32::from_be_bytes(self.take_array()?))),
            0xd3 => Self::signed(i64::from_be_bytes(self.take_array()?)),
            0xd4 => self.skip_extension(1)?,
            0xd5 => self.skip_extension(2)?,
            0xd6 => self.skip_extension(4)?,
            0xd7 => self.skip_extension(8)?,
            0xd8 => self.skip_extension(16)?,
            0xd9 => Token::Str(self.take_sized(1)?),
            0xda => Token::Str(self.take_sized(2)?),
            0xdb => Token::Str(self.take_sized(4)?),
            0xdc => Token::Array(u32::from(self.read_u16()?)),
            0xdd => Token::Array(self.read_u32()?),
            0xde => Token::Map(u32::from(self.read_u16()?)),
            0xdf => Token::Map(self.read_u32()?),
            0xe0..=0xff => Token::Negative(i64::from(marker as i8)),
        };
        Ok(token)
    }

    /// Skips `count` whole values, however deeply nested, without recursion: a counter of
    /// values still to skip grows by a container's item count and shrinks by one per token.
    /// Every value takes at least one byte, so a counter above the bytes left is a truncated
    /// body (this is what makes a header claiming 4 billion items fail at once).
    pub(super) fn skip_values(&mut self, count: u64) -> Result<(), ReadError> {
        let mut pending = count;
        while pending > 0 {
            if pending > self.remaining_bytes() as u64 {
                return Err(ReadError::Truncated {
                    offset: self.body.len(),
                });
            }
            pending -= 1;
            match self.next_token()? {
                Token::Array(items) => pending += u64::from(items),
                Token::Map(pairs) => pending += 2 * u64::from(pairs),
                _ => {}
            }
        }
        Ok(())
    }

    /// Skips the items of a container whose header `token` was just read; nothing for
    /// other tokens.
    pub(super) fn skip_contents(&mut self, token: Token<'a>) -> Result<(), ReadError> {
        match token {
            Token::Array(items) => self.skip_values(u64::from(items)),
            Token::Map(pairs) => self.skip_values(2 * u64::from(pairs)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(body: &[u8]) -> Result<Vec<Token<'_>>, ReadError> {
        let mut reader = Reader::new(body);
        let mut tokens = Vec::new();
        while reader.remaining_bytes() > 0 {
            tokens.push(reader.next_token()?);
        }
        Ok(tokens)
    }

    fn write(body: &mut Vec<u8>, value: rmpv::Value) {
        rmpv::encode::write_value(body, &value).expect("writing to a Vec cannot fail");
    }

    #[test]
    fn every_format_reads_as_rmpv_wrote_it() {
        use rmpv::Value;
        let x300 = "x".repeat(300);
        let y70k = "y".repeat(70_000);
        let unsigned = [0u64, 127, 128, 255, 256, 65_535, 65_536, 1 << 32, u64::MAX];
        let negative = [-1i64, -32, -33, -128, -129, -32_768, -32_769, i64::MIN];
        let mut body = Vec::new();
        write(&mut body, Value::Nil);
        write(&mut body, Value::Boolean(true));
        write(&mut body, Value::Boolean(false));
        for value in unsigned {
            write(&mut body, Value::from(value));
        }
        for value in negative {
            write(&mut body, Value::from(value));
        }
        // Signed markers carrying non-negative values (int8 5, int64 max) read as unsigned.
        body.extend([0xd0, 5]);
        body.extend([0xd3, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        write(&mut body, Value::F32(1.5));
        write(&mut body, Value::F64(-2.25));
        for text in ["hé", x300.as_str(), y70k.as_str()] {
            write(&mut body, Value::from(text));
        }
        for bytes in [vec![1, 2, 3], vec![7; 300], vec![8; 70_000]] {
            write(&mut body, Value::Binary(bytes));
        }
        // Container headers only: their items are read as the tokens that follow.
        body.extend([0x93, 0xdc, 0x00, 0x14, 0xdd, 0x00, 0x01, 0x11, 0x70]);
        body.extend([0x82, 0xde, 0x00, 0x14, 0xdf, 0x00, 0x01, 0x11, 0x70]);
        for length in [1usize, 2, 4, 8, 16, 3, 300, 70_000] {
            write(&mut body, Value::Ext(42, vec![0xc1; length]));
        }

        let mut expected = vec![Token::Nil, Token::Boolean(true), Token::Boolean(false)];
        expected.extend(unsigned.map(Token::Unsigned));
        expected.extend(negative.map(Token::Negative));
        expected.extend([
            Token::Unsigned(5),
            Token::Unsigned(i64::MAX as u64),
            Token::Float(1.5),
            Token::Float(-2.25),
            Token::Str("hé".as_bytes()),
            Token::Str(x300.as_bytes()),
            Token::Str(y70k.as_bytes()),
            Token::Bin(&[1, 2, 3]),
            Token::Bin(&[7; 300]),
            Token::Bin(&[8; 70_000]),
            Token::Array(3),
            Token::Array(20),
            Token::Array(70_000),
            Token::Map(2),
            Token::Map(20),
            Token::Map(70_000),
        ]);
        expected.extend([Token::Extension; 8]);
        assert_eq!(tokens(&body), Ok(expected));
    }

    #[test]
    fn lying_length_headers_fail_as_truncated() {
        let cases: [(&str, &[u8]); 9] = [
            (
                "str32 claiming 4 GiB",
                &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a', b'b'],
            ),
            (
                "bin32 claiming 4 GiB",
                &[0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5],
            ),
            (
                "ext32 claiming 4 GiB",
                &[0xc9, 0xff, 0xff, 0xff, 0xff, 1, 2, 3],
            ),
            ("str8 one byte short", &[0xd9, 3, b'a', b'b']),
            ("fixstr one byte short", &[0xa2, b'a']),
            ("u64 cut short", &[0xcf, 0, 0, 0]),
            ("f64 cut short", &[0xcb, 0, 0]),
            ("str16 header cut short", &[0xda, 0]),
            ("fixext16 cut short", &[0xd8, 1, 2, 3]),
        ];
        for (name, body) in cases {
            let result = tokens(body);
            assert!(
                matches!(result, Err(ReadError::Truncated { .. })),
                "case {name}: {result:?}"
            );
        }
    }

    #[test]
    fn reserved_marker_is_an_error_with_its_offset() {
        assert_eq!(
            tokens(&[0x01, 0xc1]),
            Err(ReadError::ReservedMarker { offset: 1 })
        );
    }

    #[test]
    fn skip_values_skips_nested_containers_whole() {
        // [ {"a": [1, 2]}, "b" ] then a trailing 7.
        let body = [0x92, 0x81, 0xa1, b'a', 0x92, 1, 2, 0xa1, b'b', 7];
        let mut reader = Reader::new(&body);
        reader.skip_values(1).unwrap();
        assert_eq!(reader.next_token(), Ok(Token::Unsigned(7)));
        assert_eq!(reader.remaining_bytes(), 0);
    }

    #[test]
    fn skip_values_survives_a_million_levels_of_nesting() {
        let depth = 1_000_000;
        let mut body = vec![0x91; depth];
        body.push(0xc0);
        let mut reader = Reader::new(&body);
        reader.skip_values(1).unwrap();
        assert_eq!(reader.remaining_bytes(), 0);

        // The same nesting, one byte short, fails cleanly.
        let mut reader = Reader::new(&body[..depth]);
        assert!(reader.skip_values(1).is_err());
    }

    #[test]
    fn skip_values_rejects_huge_item_counts_without_looping() {
        // map32 claiming 4 billion pairs in 8 bytes: fails on the first check.
        let body = [0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0, 0xc0];
        let mut reader = Reader::new(&body);
        assert_eq!(
            reader.skip_values(1),
            Err(ReadError::Truncated { offset: body.len() })
        );
    }
}
