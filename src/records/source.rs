//! The bytes of one input: a file, or standard input when the path is `-`.
//!
//! Two things happen here, below the CSV parser, so that every reader (records,
//! opt-out and suppression lists, outcomes, exposures) gets them:
//!
//! - **Windows line endings are read as Unix ones**: every `\r\n` reaches the parser
//!   as `\n` (a lone `\r` is left alone). The parser counts lines by `\n`, and with
//!   `\r\n` it would report each record on the line before its own (a spreadsheet
//!   export's "line 1001 repeats the id of line 1", where line 1 is the header).
//! - **Limits** ([`InputLimits`]): an input larger than `max_bytes`, or a line longer
//!   than `max_line_bytes`, ends the read with [`LimitExceeded`] (naming the line)
//!   instead of growing memory without bound: `/dev/zero` or a file without line
//!   breaks would otherwise be buffered whole by the parser.
//!
//! Invariant: the bytes handed on are the input's bytes with each `\r` that directly
//! precedes a `\n` removed, and nothing else changed; byte counts for limits are of
//! the input as read.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::OnceLock;

/// The path that means standard input.
pub const STDIN: &str = "-";

/// Size limits on one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputLimits {
    /// Largest input, in bytes.
    pub max_bytes: u64,
    /// Longest line, in bytes (without its line break).
    pub max_line_bytes: u64,
}

impl InputLimits {
    /// The built-in limits: 100 GiB per input, 1 MiB per line.
    pub const BUILT_IN: InputLimits = InputLimits { max_bytes: 100 << 30, max_line_bytes: 1 << 20 };

    /// Sets the limits [`InputLimits::default`] returns for the rest of the process
    /// (the command line's `--max-input-bytes` and `--max-line-bytes`). Only the
    /// first call has an effect; it returns whether it was the first.
    pub fn set_process_default(limits: InputLimits) -> bool {
        PROCESS_DEFAULT.set(limits).is_ok()
    }
}

static PROCESS_DEFAULT: OnceLock<InputLimits> = OnceLock::new();

impl Default for InputLimits {
    /// The process default if one was set, otherwise [`InputLimits::BUILT_IN`].
    fn default() -> InputLimits {
        *PROCESS_DEFAULT.get().unwrap_or(&InputLimits::BUILT_IN)
    }
}

/// An input went past one of its [`InputLimits`]; carried inside the
/// [`io::Error`] the read returns (kind `InvalidData`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// The input is larger than `limit` bytes.
    #[error("the input is larger than {limit} bytes (the limit; --max-input-bytes raises it)")]
    Input {
        /// The limit.
        limit: u64,
    },
    /// Line `line` is longer than `limit` bytes.
    #[error("line {line} is longer than {limit} bytes (the limit; --max-line-bytes raises it)")]
    Line {
        /// The line, counting from 1.
        line: u64,
        /// The limit.
        limit: u64,
    },
}

/// The limit error inside `error`, if the read failed on a limit.
pub fn limit_exceeded(error: &io::Error) -> Option<&LimitExceeded> {
    error.get_ref().and_then(|inner| inner.downcast_ref::<LimitExceeded>())
}

/// One input's bytes, `\r\n` read as `\n`, within its limits.
pub struct Source {
    inner: BufReader<Box<dyn Read + Send>>,
    limits: InputLimits,
    /// Bytes taken from the input so far.
    taken: u64,
    /// The current line (from 1) and its length so far.
    line: u64,
    line_bytes: u64,
}

impl Source {
    /// Opens `path` (standard input for `-`); also returns its length when known
    /// (for progress), 0 otherwise.
    pub fn open(path: &Path, limits: InputLimits) -> io::Result<(Source, u64)> {
        let (reader, len): (Box<dyn Read + Send>, u64) = if path.as_os_str() == STDIN {
            (Box::new(io::stdin()), 0)
        } else {
            let file = File::open(path)?;
            let len = file.metadata().map(|m| if m.is_file() { m.len() } else { 0 }).unwrap_or(0);
            (Box::new(file), len)
        };
        let inner = BufReader::with_capacity(1 << 20, reader);
        Ok((Source { inner, limits, taken: 0, line: 1, line_bytes: 0 }, len))
    }

    /// Accounts for `bytes` about to be handed on (taken from the input: `taken`
    /// of them, possibly one more than `bytes` for a dropped `\r`).
    fn account(&mut self, bytes: &[u8], taken: usize) -> io::Result<()> {
        self.taken += taken as u64;
        if self.taken > self.limits.max_bytes {
            return Err(limit(LimitExceeded::Input { limit: self.limits.max_bytes }));
        }
        let mut rest = bytes;
        while let Some(at) = rest.iter().position(|&b| b == b'\n') {
            self.line_bytes += at as u64;
            self.check_line()?;
            self.line += 1;
            self.line_bytes = 0;
            rest = &rest[at + 1..];
        }
        self.line_bytes += rest.len() as u64;
        self.check_line()
    }

    fn check_line(&self) -> io::Result<()> {
        if self.line_bytes > self.limits.max_line_bytes {
            return Err(limit(LimitExceeded::Line { line: self.line, limit: self.limits.max_line_bytes }));
        }
        Ok(())
    }
}

fn limit(e: LimitExceeded) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Read for Source {
    /// Hands on at most one buffer's worth of bytes up to the next `\r` (or the `\r`
    /// itself, when no `\n` follows it).
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            let available = self.inner.fill_buf()?;
            let Some(&first) = available.first() else { return Ok(0) };
            if first != b'\r' {
                let end = available.len().min(out.len());
                let n = available[..end].iter().position(|&b| b == b'\r').unwrap_or(end);
                out[..n].copy_from_slice(&available[..n]);
                self.inner.consume(n);
                self.account(&out[..n], n)?;
                return Ok(n);
            }
            // A `\r`: dropped when a `\n` follows, handed on otherwise. When it is the
            // last buffered byte, the next byte is read first.
            let buffered_next = available.get(1).copied();
            self.inner.consume(1);
            let next = match buffered_next {
                Some(next) => Some(next),
                None => self.inner.fill_buf()?.first().copied(),
            };
            if next == Some(b'\n') {
                self.account(&[], 1)?;
                continue;
            }
            out[0] = b'\r';
            self.account(&out[..1], 1)?;
            return Ok(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bytes` through a [`Source`] read `chunk` bytes at a time.
    fn through(bytes: &[u8], limits: InputLimits, chunk: usize) -> io::Result<Vec<u8>> {
        let inner = BufReader::with_capacity(3, Box::new(io::Cursor::new(bytes.to_vec())) as Box<dyn Read + Send>);
        let mut source = Source { inner, limits, taken: 0, line: 1, line_bytes: 0 };
        let mut out = Vec::new();
        let mut buf = vec![0; chunk];
        loop {
            let n = source.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn crlf_becomes_lf_and_nothing_else_changes() {
        let cases: [(&[u8], &[u8]); 6] = [
            (b"id,email\r\n1,a@x.com\r\n", b"id,email\n1,a@x.com\n"),
            (b"a\r\r\nb\rc\r", b"a\r\nb\rc\r"),
            (b"\r\n\r\n", b"\n\n"),
            (b"no line break", b"no line break"),
            (b"\"quoted\r\nfield\"\n", b"\"quoted\nfield\"\n"),
            (b"", b""),
        ];
        // Every chunk size, with a 3-byte inner buffer: `\r` and `\n` fall on every
        // boundary.
        for (input, expected) in cases {
            for chunk in 1..8 {
                assert_eq!(through(input, InputLimits::BUILT_IN, chunk).unwrap(), expected, "{input:?} by {chunk}");
            }
        }
    }

    #[test]
    fn limits_end_the_read_with_the_line() {
        let limits = InputLimits { max_bytes: 1000, max_line_bytes: 5 };
        assert_eq!(through(b"12345\r\n12345\n", limits, 4).unwrap(), b"12345\n12345\n");
        let err = through(b"ok\n12345\n123456\n", limits, 4).unwrap_err();
        assert_eq!(limit_exceeded(&err), Some(&LimitExceeded::Line { line: 3, limit: 5 }));
        let err = through(b"1234567", limits, 100).unwrap_err();
        assert_eq!(limit_exceeded(&err), Some(&LimitExceeded::Line { line: 1, limit: 5 }));
        let limits = InputLimits { max_bytes: 10, max_line_bytes: 5 };
        let err = through(b"123\n456\n789\n", limits, 2).unwrap_err();
        assert_eq!(limit_exceeded(&err), Some(&LimitExceeded::Input { limit: 10 }));
        assert!(err.to_string().contains("--max-input-bytes"));
        assert!(through(b"123\n456\n78", limits, 2).is_ok(), "exactly at the limit");
    }
}
