//! The local match's private scratch records: `(number, tag, id)` triples written
//! in order to a file in the match's private temporary directory and read back in
//! the same order by the same process (record ids to check for repeats, matched
//! records to merge). Not an exchange format: no header, no version; a file that
//! ends inside a record is an error all the same.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Appends records to a new scratch file (mode 0600).
pub(crate) struct SpoolWriter {
    out: BufWriter<File>,
}

impl SpoolWriter {
    pub(crate) fn create(path: &Path, buffer: usize) -> io::Result<SpoolWriter> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        Ok(SpoolWriter { out: BufWriter::with_capacity(buffer, options.open(path)?) })
    }

    pub(crate) fn push(&mut self, number: u64, tag: u8, id: &str) -> io::Result<()> {
        let len = u32::try_from(id.len()).map_err(|_| io::Error::other("record id longer than 4 GiB"))?;
        let mut head = [0u8; 13];
        head[..8].copy_from_slice(&number.to_le_bytes());
        head[8] = tag;
        head[9..].copy_from_slice(&len.to_le_bytes());
        self.out.write_all(&head)?;
        self.out.write_all(id.as_bytes())
    }

    pub(crate) fn finish(self) -> io::Result<()> {
        self.out.into_inner().map_err(io::IntoInnerError::into_error).map(drop)
    }
}

/// Reads a scratch file's records back, in order.
pub(crate) struct SpoolReader {
    path: PathBuf,
    input: BufReader<File>,
}

impl SpoolReader {
    pub(crate) fn open(path: &Path) -> io::Result<SpoolReader> {
        Ok(SpoolReader { path: path.to_owned(), input: BufReader::with_capacity(256 << 10, File::open(path)?) })
    }

    /// The next record's number and tag, its id in `id`; `None` at the end.
    pub(crate) fn next_record(&mut self, id: &mut String) -> io::Result<Option<(u64, u8)>> {
        let mut head = [0u8; 13];
        let mut got = 0;
        while got < head.len() {
            match self.input.read(&mut head[got..])? {
                0 if got == 0 => return Ok(None),
                0 => return Err(self.ends_early()),
                n => got += n,
            }
        }
        let len = u32::from_le_bytes([head[9], head[10], head[11], head[12]]) as usize;
        let mut bytes = std::mem::take(id).into_bytes();
        bytes.resize(len, 0);
        self.input.read_exact(&mut bytes).map_err(|_| self.ends_early())?;
        *id = String::from_utf8(bytes).map_err(|_| io::Error::other("a record id is not UTF-8"))?;
        let mut number = [0u8; 8];
        number.copy_from_slice(&head[..8]);
        Ok(Some((u64::from_le_bytes(number), head[8])))
    }

    fn ends_early(&self) -> io::Error {
        io::Error::new(io::ErrorKind::UnexpectedEof, format!("{} ends inside a record", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_and_a_cut_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let mut w = SpoolWriter::create(&path, 64).unwrap();
        for (n, id) in [(7u64, "a"), (3, ""), (u64::MAX, "ünï")] {
            w.push(n, (n % 3) as u8, id).unwrap();
        }
        w.finish().unwrap();
        let mut r = SpoolReader::open(&path).unwrap();
        let mut id = String::new();
        let mut seen = Vec::new();
        while let Some((n, tag)) = r.next_record(&mut id).unwrap() {
            seen.push((n, tag, id.clone()));
        }
        assert_eq!(seen, vec![(7, 1, "a".into()), (3, 0, String::new()), (u64::MAX, 0, "ünï".into())]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let mut r = SpoolReader::open(&path).unwrap();
        let err = std::iter::from_fn(|| r.next_record(&mut id).transpose()).find_map(Result::err).unwrap();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
