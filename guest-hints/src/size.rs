#![forbid(unsafe_code)]
//! Human-readable sizes: `512M`, `1G`, `1GiB`, `64K`; a bare number is MiB.
//! Shared by perfvmm's command line and the `perfhint` CLI.

use core::fmt;

/// Why a size did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeError {
    /// Nothing but white space.
    Empty,
    /// No leading digits.
    NotANumber,
    /// A unit other than K, M, G or T (optionally followed by `B` or `iB`).
    UnknownUnit,
    /// More bytes than fit in a u64.
    TooLarge,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SizeError::Empty => "an empty size",
            SizeError::NotANumber => "not a size (expected e.g. 512M or 2G)",
            SizeError::UnknownUnit => "an unknown unit (use K, M, G or T)",
            SizeError::TooLarge => "too large",
        })
    }
}

/// Parses a size in bytes. Units are powers of 1024; `B`/`iB` may follow.
pub fn parse_size(s: &str) -> Result<u64, SizeErrorAt<'_>> {
    let t = s.trim();
    let err = |kind| SizeErrorAt { input: s, kind };
    if t.is_empty() {
        return Err(err(SizeError::Empty));
    }
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(err(SizeError::NotANumber));
    }
    let n: u64 = num.parse().map_err(|_| err(SizeError::TooLarge))?;
    let mut u = [0u8; 3];
    if unit.len() > u.len() {
        return Err(err(SizeError::UnknownUnit));
    }
    for (d, c) in u.iter_mut().zip(unit.bytes()) {
        *d = c.to_ascii_uppercase();
    }
    let shift = match &u[..unit.len()] {
        b"" => 20,
        b"K" | b"KB" | b"KIB" => 10,
        b"M" | b"MB" | b"MIB" => 20,
        b"G" | b"GB" | b"GIB" => 30,
        b"T" | b"TB" | b"TIB" => 40,
        _ => return Err(err(SizeError::UnknownUnit)),
    };
    n.checked_mul(1u64 << shift).ok_or(err(SizeError::TooLarge))
}

/// A size error with the text it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeErrorAt<'a> {
    /// The text that did not parse.
    pub input: &'a str,
    /// What was wrong with it.
    pub kind: SizeError,
}

impl fmt::Display for SizeErrorAt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' is {}", self.input, self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64"), Ok(64 << 20));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("12XB").unwrap_err().kind, SizeError::UnknownUnit);
        assert_eq!(parse_size("G").unwrap_err().kind, SizeError::NotANumber);
        assert_eq!(parse_size(" ").unwrap_err().kind, SizeError::Empty);
        assert_eq!(
            parse_size("99999999999999999999G").unwrap_err().kind,
            SizeError::TooLarge
        );
        assert_eq!(
            parse_size("17179869184T").unwrap_err().kind,
            SizeError::TooLarge
        );
        assert_eq!(
            parse_size("1KIBX").unwrap_err().kind,
            SizeError::UnknownUnit
        );
    }
}
