//! Parquet input (cargo feature `parquet`): a Parquet file's rows as the raw rows the
//! CSV parser makes, so that everything after the parse (columns, normalization,
//! tokens, rejects, repeats, counts) is the CSV path's own.
//!
//! The header is the schema's top-level field names. Only the columns the read uses
//! are decoded, with Parquet's column reader (no Arrow), row group by row group, in
//! batches of at most [`BATCH_ROWS`] rows: memory holds a page per used column and
//! one batch, never the file. A used column must hold strings (`BYTE_ARRAY`
//! annotated `STRING`/`UTF8`, `ENUM` or `JSON`, plain or dictionary-encoded: what
//! Arrow's Utf8, LargeUtf8, Utf8View and dictionary string columns are written as)
//! or integers (`INT32`/`INT64`, signed or unsigned, handed on in decimal); a null is
//! a blank cell. A column of any other type (a float, binary, a date, a list, a
//! struct) is refused when the read would use it, naming the column and its type;
//! unused columns may be of any type. Rows are numbered from 1 across the file;
//! row groups from 0. A damaged page, a column shorter than its row group, or a
//! panic in the decoder ends the read with an error.

use std::fs::File;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::Receiver;

use parquet::basic::{ConvertedType, LogicalType, Type as Physical};
use parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::ColumnDescriptor;

use super::options::{ParquetProblem, ReadError};
use super::row::{BATCH_ROWS, Batches, RawRow};
use super::source::{InputLimits, LimitExceeded};
use crate::progress::Meter;

/// How a column's values become cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cells {
    /// Strings, as they are.
    Text,
    /// Signed integers, in decimal.
    Signed,
    /// Unsigned integers (stored in a signed physical type), in decimal.
    Unsigned,
}

/// A top-level field of the schema as read, or its type (for the refusal).
type Field = Result<Leaf, String>;

/// A top-level primitive field: its leaf column and how it reads.
#[derive(Clone, Copy, Debug)]
struct Leaf {
    /// Its index among the schema's leaf columns.
    column: usize,
    cells: Cells,
    /// The definition level of a present value (0: the column is required).
    max_def: i16,
}

/// An opened Parquet file, its footer read.
pub(super) struct ParquetInput {
    reader: SerializedFileReader<File>,
    /// The header: the top-level field names.
    names: Vec<String>,
    fields: Vec<Field>,
    /// The fields the read uses, in header order, with their leaf columns.
    used: Vec<(usize, Leaf)>,
}

impl ParquetInput {
    /// Opens `path` and reads its footer; returns the header and the file's length.
    pub(super) fn open(path: &Path, limits: InputLimits) -> Result<(ParquetInput, Vec<String>, u64), ReadError> {
        let open_err = |source| ReadError::Open { path: path.to_owned(), source };
        let file = File::open(path).map_err(open_err)?;
        let len = file.metadata().map_err(open_err)?.len();
        if len > limits.max_bytes {
            return Err(ReadError::TooLarge {
                path: path.to_owned(),
                limit: LimitExceeded::Input { limit: limits.max_bytes },
            });
        }
        let footer = |source| ReadError::Parquet { path: path.to_owned(), problem: ParquetProblem::Footer(source) };
        let reader = catch_unwind(AssertUnwindSafe(|| SerializedFileReader::new(file)))
            .map_err(|_| ReadError::Parquet {
                path: path.to_owned(),
                problem: ParquetProblem::Panicked { row_group: None },
            })?
            .map_err(footer)?;
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let top = schema.root_schema().get_fields();
        let names: Vec<String> = top.iter().map(|f| f.name().to_owned()).collect();
        let mut fields: Vec<Field> = top
            .iter()
            .map(|f| {
                let info = f.get_basic_info();
                Err(match f.is_group() {
                    true => {
                        format!("a nested field (a {})", group_kind(info.converted_type(), info.logical_type_ref()))
                    }
                    false => "a repeated field".to_owned(),
                })
            })
            .collect();
        for (leaf, column) in schema.columns().iter().enumerate() {
            if column.path().parts().len() == 1 && column.max_rep_level() == 0 {
                fields[schema.get_column_root_idx(leaf)] =
                    cells(column).map(|cells| Leaf { column: leaf, cells, max_def: column.max_def_level() });
            }
        }
        Ok((ParquetInput { reader, names: names.clone(), fields, used: Vec::new() }, names, len))
    }

    /// Chooses the fields (header indices) to decode; refuses one of a type that is
    /// not read.
    pub(super) fn select(&mut self, used: &[usize]) -> Result<(), ParquetProblem> {
        let mut used = used.to_vec();
        used.sort_unstable();
        used.dedup();
        self.used = used
            .into_iter()
            .map(|field| match &self.fields[field] {
                Ok(leaf) => Ok((field, *leaf)),
                Err(found) => {
                    Err(ParquetProblem::ColumnType { column: self.names[field].clone(), found: found.clone() })
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    /// The parsing thread (see `Input::send_rows`): one row group after the other,
    /// in batches, the used fields' cells in place and every other cell empty.
    pub(super) fn send_rows(self, path: &Path, full: Batches, free: Receiver<Vec<RawRow>>, progress: Arc<dyn Meter>) {
        let mut row_group = 0;
        let sent = catch_unwind(AssertUnwindSafe(|| self.rows(&mut row_group, &full, free, &*progress)));
        let problem = match sent {
            Ok(Ok(())) => return,
            Ok(Err(problem)) => problem,
            Err(_) => ParquetProblem::Panicked { row_group: Some(row_group) },
        };
        let _ = full.send(Err(ReadError::Parquet { path: path.to_owned(), problem }));
    }

    /// Sends every row; `Ok` also when the receiving side has gone (it knows why).
    fn rows(
        &self,
        row_group: &mut usize,
        full: &Batches,
        free: Receiver<Vec<RawRow>>,
        progress: &dyn Meter,
    ) -> Result<(), ParquetProblem> {
        let metadata = self.reader.metadata();
        let width = self.names.len();
        let mut row: u64 = 0;
        let mut bytes_done: u64 = 0;
        let mut spare: Vec<csv::ByteRecord> = Vec::new();
        let mut batch = match free.recv() {
            Ok(batch) => batch,
            Err(_) => return Ok(()),
        };
        let mut number = Vec::new();
        for g in 0..metadata.num_row_groups() {
            *row_group = g;
            let group = self.reader.get_row_group(g).map_err(|source| self.decode(g, None, row + 1, source))?;
            let mut columns = Vec::with_capacity(self.used.len());
            for (i, &(field, leaf)) in self.used.iter().enumerate() {
                let reader =
                    group.get_column_reader(leaf.column).map_err(|source| self.decode(g, Some(i), row + 1, source))?;
                let column = Column::new(reader, leaf).ok_or_else(|| ParquetProblem::ColumnType {
                    column: self.names[field].clone(),
                    found: "of another physical type in this row group".to_owned(),
                })?;
                columns.push(column);
            }
            let rows = group.metadata().num_rows();
            let mut left = u64::try_from(rows).map_err(|_| {
                let source = parquet::errors::ParquetError::General(format!("the metadata gives {rows} rows"));
                self.decode(g, None, row + 1, source)
            })?;
            while left > 0 {
                let want = left.min(BATCH_ROWS as u64) as usize;
                for (i, column) in columns.iter_mut().enumerate() {
                    let got = column.fill(want).map_err(|source| self.decode(g, Some(i), row + 1, source))?;
                    if got < want {
                        return Err(ParquetProblem::ShortColumn {
                            row_group: g,
                            column: self.names[self.used[i].0].clone(),
                            row: row + got as u64 + 1,
                        });
                    }
                }
                for r in 0..want {
                    if batch.len() == BATCH_ROWS {
                        if full.send(Ok(std::mem::take(&mut batch))).is_err() {
                            return Ok(());
                        }
                        batch = match free.recv() {
                            Ok(batch) => batch,
                            Err(_) => return Ok(()),
                        };
                        spare.extend(batch.drain(..).map(|row| row.record));
                    }
                    let mut record = spare.pop().unwrap_or_default();
                    record.clear();
                    let mut next = self.used.iter().zip(columns.iter_mut()).peekable();
                    for field in 0..width {
                        match next.next_if(|((f, _), _)| *f == field) {
                            Some((_, column)) => record.push_field(column.cell(r, &mut number)),
                            None => record.push_field(b""),
                        }
                    }
                    row += 1;
                    batch.push(RawRow { line: row, record });
                }
                left -= want as u64;
            }
            bytes_done += u64::try_from(metadata.row_group(g).compressed_size()).unwrap_or(0);
            progress.set_position(bytes_done);
        }
        let _ = full.send(Ok(batch));
        Ok(())
    }

    /// A decoding error in row group `g`, in the `i`th used column (`None`: the row
    /// group itself).
    fn decode(&self, g: usize, i: Option<usize>, row: u64, source: parquet::errors::ParquetError) -> ParquetProblem {
        let column = i.map_or_else(String::new, |i| self.names[self.used[i].0].clone());
        ParquetProblem::Decode { row_group: g, column, row, source }
    }
}

/// One used column of the current row group: its reader and its latest batch.
struct Column {
    values: Values,
    /// The definition level of a present value; below it, the value is null.
    max_def: i16,
    defs: Vec<i16>,
    /// The next value of the batch to hand on (nulls have none).
    next: usize,
}

enum Values {
    Text(ColumnReaderImpl<ByteArrayType>, Vec<ByteArray>),
    Int32(ColumnReaderImpl<Int32Type>, Vec<i32>, bool),
    Int64(ColumnReaderImpl<Int64Type>, Vec<i64>, bool),
}

impl Column {
    /// `None` when the reader is not of the leaf's physical type.
    fn new(reader: ColumnReader, leaf: Leaf) -> Option<Column> {
        let unsigned = leaf.cells == Cells::Unsigned;
        let values = match (reader, leaf.cells) {
            (ColumnReader::Int32ColumnReader(r), Cells::Signed | Cells::Unsigned) => {
                Values::Int32(r, Vec::new(), unsigned)
            }
            (ColumnReader::Int64ColumnReader(r), Cells::Signed | Cells::Unsigned) => {
                Values::Int64(r, Vec::new(), unsigned)
            }
            (ColumnReader::ByteArrayColumnReader(r), Cells::Text) => Values::Text(r, Vec::new()),
            _ => return None,
        };
        Some(Column { values, max_def: leaf.max_def, defs: Vec::new(), next: 0 })
    }

    /// Reads the next `want` rows; returns how many there were.
    fn fill(&mut self, want: usize) -> parquet::errors::Result<usize> {
        self.defs.clear();
        self.next = 0;
        let defs = Some(&mut self.defs);
        let (records, _, _) = match &mut self.values {
            Values::Text(r, v) => {
                v.clear();
                r.read_records(want, defs, None, v)?
            }
            Values::Int32(r, v, _) => {
                v.clear();
                r.read_records(want, defs, None, v)?
            }
            Values::Int64(r, v, _) => {
                v.clear();
                r.read_records(want, defs, None, v)?
            }
        };
        Ok(records)
    }

    /// Row `r` of the batch (rows are asked for in order), as cell bytes: empty for
    /// a null; an integer written into `number`.
    fn cell<'c>(&'c mut self, r: usize, number: &'c mut Vec<u8>) -> &'c [u8] {
        if self.max_def > 0 && self.defs[r] < self.max_def {
            return b"";
        }
        let i = self.next;
        self.next += 1;
        number.clear();
        // Writing to a Vec does not fail.
        let _ = match &self.values {
            Values::Text(_, v) => return v[i].data(),
            Values::Int32(_, v, false) => write!(number, "{}", v[i]),
            Values::Int32(_, v, true) => write!(number, "{}", v[i] as u32),
            Values::Int64(_, v, false) => write!(number, "{}", v[i]),
            Values::Int64(_, v, true) => write!(number, "{}", v[i] as u64),
        };
        number
    }
}

/// How a top-level primitive column reads, or its type as Parquet names it.
fn cells(column: &ColumnDescriptor) -> Result<Cells, String> {
    let logical = column.logical_type_ref();
    let converted = column.converted_type();
    let physical = column.physical_type();
    match (physical, logical, converted) {
        (Physical::BYTE_ARRAY, Some(LogicalType::String | LogicalType::Enum | LogicalType::Json), _)
        | (Physical::BYTE_ARRAY, None, ConvertedType::UTF8 | ConvertedType::ENUM | ConvertedType::JSON) => {
            Ok(Cells::Text)
        }
        (Physical::INT32 | Physical::INT64, None, ConvertedType::NONE) => Ok(Cells::Signed),
        (Physical::INT32 | Physical::INT64, Some(LogicalType::Integer(int)), _) => {
            Ok(if int.is_signed { Cells::Signed } else { Cells::Unsigned })
        }
        (
            Physical::INT32 | Physical::INT64,
            None,
            ConvertedType::INT_8 | ConvertedType::INT_16 | ConvertedType::INT_32 | ConvertedType::INT_64,
        ) => Ok(Cells::Signed),
        (
            Physical::INT32 | Physical::INT64,
            None,
            ConvertedType::UINT_8 | ConvertedType::UINT_16 | ConvertedType::UINT_32 | ConvertedType::UINT_64,
        ) => Ok(Cells::Unsigned),
        (Physical::BYTE_ARRAY, None, ConvertedType::NONE) => {
            Err("BYTE_ARRAY without a string annotation (binary)".into())
        }
        (physical, Some(logical), _) => Err(format!("{physical} ({logical:?})")),
        (physical, None, ConvertedType::NONE) => Err(physical.to_string()),
        (physical, None, converted) => Err(format!("{physical} ({converted})")),
    }
}

/// What a nested field is: a list, a map, or a struct.
fn group_kind(converted: ConvertedType, logical: Option<&LogicalType>) -> &'static str {
    match (logical, converted) {
        (Some(LogicalType::List), _) | (None, ConvertedType::LIST) => "list",
        (Some(LogicalType::Map), _) | (None, ConvertedType::MAP | ConvertedType::MAP_KEY_VALUE) => "map",
        _ => "struct",
    }
}
