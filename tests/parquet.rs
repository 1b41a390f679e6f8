//! Parquet input (issue 21): a Parquet file gives the shard files, matches and
//! token exports the same data gives as CSV, byte for byte; nulls, dictionary pages
//! and integer ids read as the CSV cells they stand for; rejects are counted and
//! reported with their row numbers; a truncated, foreign or unreadable file, and a
//! column of a type idmatch does not read, are refused and leave no output.
//!
//! The Parquet files are written here with the `parquet` crate's own writer.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{idmatch, keygen, local_match, text};
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
use parquet::file::properties::{WriterProperties, WriterVersion};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// One column of a test table: its values, `None` for null.
enum Column {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Int32(Vec<Option<i32>>),
    Float(Vec<Option<f64>>),
    /// A list column whose every list is null (`rows` of them).
    NullLists(usize),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::Text(v) => v.len(),
            Column::Int(v) => v.len(),
            Column::Int32(v) => v.len(),
            Column::Float(v) => v.len(),
            Column::NullLists(n) => *n,
        }
    }
}

/// Writes `columns` (in the order of `schema`'s fields) to `path`, `rows_per_group`
/// rows per row group, with dictionary pages where they pay off.
fn write_parquet(path: &Path, schema: &str, columns: &[Column], compression: Compression, rows_per_group: usize) {
    let props =
        WriterProperties::builder().set_compression(compression).set_max_row_group_row_count(Some(rows_per_group));
    write_parquet_with(path, schema, columns, props.build());
}

/// Writes `columns` to `path` under `props`.
fn write_parquet_with(path: &Path, schema: &str, columns: &[Column], props: WriterProperties) {
    let rows_per_group = props.max_row_group_row_count().unwrap();
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let mut writer = SerializedFileWriter::new(File::create(path).unwrap(), schema, Arc::new(props)).unwrap();
    let rows = columns[0].len();
    let mut start = 0;
    while start < rows {
        let end = rows.min(start + rows_per_group);
        let mut group = writer.next_row_group().unwrap();
        for column in columns {
            let mut out = group.next_column().unwrap().unwrap();
            match column {
                Column::Text(values) => {
                    let (present, defs) = split(&values[start..end]);
                    let present: Vec<ByteArray> = present.iter().map(|s| ByteArray::from(s.as_str())).collect();
                    out.typed::<ByteArrayType>().write_batch(&present, Some(&defs), None).unwrap();
                }
                Column::Int(values) => {
                    let (present, defs) = split(&values[start..end]);
                    out.typed::<Int64Type>().write_batch(&present, Some(&defs), None).unwrap();
                }
                Column::Int32(values) => {
                    let (present, defs) = split(&values[start..end]);
                    out.typed::<Int32Type>().write_batch(&present, Some(&defs), None).unwrap();
                }
                Column::Float(values) => {
                    let (present, defs) = split(&values[start..end]);
                    out.typed::<DoubleType>().write_batch(&present, Some(&defs), None).unwrap();
                }
                Column::NullLists(_) => {
                    let levels = vec![0; end - start];
                    out.typed::<ByteArrayType>().write_batch(&[], Some(&levels), Some(&levels)).unwrap();
                }
            }
            out.close().unwrap();
        }
        group.close().unwrap();
        start = end;
    }
    writer.close().unwrap();
}

/// The present values and the definition levels (1 present, 0 null).
fn split<T: Clone>(values: &[Option<T>]) -> (Vec<T>, Vec<i16>) {
    (values.iter().flatten().cloned().collect(), values.iter().map(|v| i16::from(v.is_some())).collect())
}

/// A table as CSV: a blank cell for a null (the cells hold no `,`, `"` or line break).
fn csv(header: &[&str], columns: &[Column]) -> String {
    let rows = columns[0].len();
    let mut out = header.join(",") + "\n";
    for r in 0..rows {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| match c {
                Column::Text(v) => v[r].clone().unwrap_or_default(),
                Column::Int(v) => v[r].map(|n| n.to_string()).unwrap_or_default(),
                Column::Int32(v) => v[r].map(|n| n.to_string()).unwrap_or_default(),
                Column::Float(v) => v[r].map(|n| n.to_string()).unwrap_or_default(),
                Column::NullLists(_) => String::new(),
            })
            .collect();
        out += &(cells.join(",") + "\n");
    }
    out
}

/// The owner's table: string ids, emails and phones with nulls and empty strings,
/// rejected identifiers, repeats across records, a region column.
fn owner_table() -> Vec<Column> {
    let (mut id, mut email, mut phone, mut country) = (vec![], vec![], vec![], vec![]);
    for i in 0..3000u32 {
        id.push(Some(format!("m{i}")));
        email.push(match i {
            _ if i % 13 == 0 => None,
            _ if i % 29 == 0 => Some(String::new()),
            _ if i % 11 == 0 => Some(format!("not-an-email{i}")),
            _ if i % 7 == 0 => Some(format!(" USER{}@Example.com ", i - 1)),
            _ => Some(format!("user{i}@example.com")),
        });
        phone.push(match i {
            _ if i % 17 == 0 => Some("12".to_owned()),
            _ if i % 3 == 0 => Some(format!("(415) 555-{:04}", i % 10_000)),
            _ => None,
        });
        // Few distinct values: a dictionary-encoded column.
        country.push(if i % 5 == 0 { None } else { Some(if i % 2 == 0 { "US" } else { "CA" }.to_owned()) });
    }
    vec![Column::Text(id), Column::Text(email), Column::Text(phone), Column::Text(country)]
}

const OWNER_SCHEMA: &str = "message owner {
    optional binary id (STRING);
    optional binary email (STRING);
    optional binary phone (UTF8);
    optional binary country (STRING);
}";
const OWNER_HEADER: [&str; 4] = ["id", "email", "phone", "country"];

/// The partner's table: integer ids, an unused float column.
fn partner_table() -> Vec<Column> {
    let (mut id, mut email, mut phone, mut score) = (vec![], vec![], vec![], vec![]);
    for i in 0..2000i64 {
        let j = 2 * i;
        id.push(Some(100_000 + i));
        email.push(if i % 19 == 0 {
            Some("broken@@example.com".to_owned())
        } else {
            Some(format!("user{j}@example.com"))
        });
        phone.push(if i % 4 == 0 { Some(format!("+1 415 555 {:04}", j % 10_000)) } else { None });
        score.push(if i % 3 == 0 { None } else { Some(i as f64 / 8.0) });
    }
    vec![Column::Int(id), Column::Text(email), Column::Text(phone), Column::Float(score)]
}

const PARTNER_SCHEMA: &str = "message partner {
    required int64 customer_id;
    optional binary email (STRING);
    optional binary mobile (STRING);
    optional double score;
}";
const PARTNER_HEADER: [&str; 4] = ["customer_id", "email", "mobile", "score"];

/// The owner's and the partner's tables as `name.csv` and `name.parquet` in `dir`.
fn inputs(dir: &Path, compression: Compression) -> [(PathBuf, PathBuf); 2] {
    let one = |name: &str, schema: &str, header: &[&str], table: Vec<Column>| {
        let (csv_path, parquet_path) = (dir.join(format!("{name}.csv")), dir.join(format!("{name}.parquet")));
        std::fs::write(&csv_path, csv(header, &table)).unwrap();
        write_parquet(&parquet_path, schema, &table, compression, 1000);
        (csv_path, parquet_path)
    };
    [
        one("owner", OWNER_SCHEMA, &OWNER_HEADER, owner_table()),
        one("partner", PARTNER_SCHEMA, &PARTNER_HEADER, partner_table()),
    ]
}

/// Every file of `dir`, by name, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    files.sort();
    files
}

/// `idmatch shard` of `input` into `out_dir`.
fn shard(key: &str, input: &Path, out_dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "shard",
        "--key-file",
        key,
        "--input",
        input.to_str().unwrap(),
        "--out-dir",
        out_dir.to_str().unwrap(),
        "--shards",
        "4",
    ];
    args.extend(extra);
    idmatch(&args)
}

#[test]
fn parquet_gives_the_shards_matches_and_tokens_csv_gives() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let [(owner_csv, owner_pq), (partner_csv, partner_pq)] = inputs(dir.path(), Compression::SNAPPY);
    // An opt-out list as Parquet too.
    let optouts_pq = dir.path().join("optouts.parquet");
    let optouts = vec![
        Column::Text(vec![Some("m21".into()), Some("m300".into()), None]),
        Column::Text(vec![None, None, Some("USER40@example.com".into())]),
    ];
    write_parquet(
        &optouts_pq,
        "message o { optional binary id (STRING); optional binary email (STRING); }",
        &optouts,
        Compression::UNCOMPRESSED,
        10,
    );
    let optouts_csv = dir.path().join("optouts.csv");
    std::fs::write(&optouts_csv, csv(&["id", "email"], &optouts)).unwrap();

    // idmatch shard
    let (from_csv, from_pq) = (dir.path().join("shards-csv"), dir.path().join("shards-pq"));
    let out = shard(&key, &owner_csv, &from_csv, &["--optouts", optouts_csv.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let csv_stdout = text(&out.stdout);
    let out = shard(&key, &owner_pq, &from_pq, &["--optouts", optouts_pq.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(csv_stdout.contains("records excluded by opt-outs: 3"), "{csv_stdout}");
    assert_eq!(text(&out.stdout).replace(".parquet", ".csv").replace("shards-pq", "shards-csv"), csv_stdout);
    let shards = files(&from_csv);
    assert_eq!(shards.len(), 4);
    assert!(files(&from_pq) == shards, "the shard files are byte-identical");

    // idmatch match, in memory and sharded, with integer ids and an unused float column.
    for extra in [&[][..], &["--shards", "3"][..]] {
        let (a, b) =
            (dir.path().join(format!("match-csv{}", extra.len())), dir.path().join(format!("match-pq{}", extra.len())));
        let mut args = vec!["--reveal", "both", "--optouts", optouts_csv.to_str().unwrap()];
        args.extend(extra);
        let out = local_match(&owner_csv, &partner_csv, &key, &a, &args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        args[3] = optouts_pq.to_str().unwrap();
        let out = local_match(&owner_pq, &partner_pq, &key, &b, &args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let (want, got) = (files(&a), files(&b));
        assert!(want.iter().any(|(name, bytes)| name == "partner_matches.csv" && text(bytes).contains("\n100002,")));
        assert_eq!(got.iter().map(|f| &f.0).collect::<Vec<_>>(), want.iter().map(|f| &f.0).collect::<Vec<_>>());
        for ((name, got), (_, want)) in got.iter().zip(&want) {
            // The summary names the input files.
            let got =
                if name == "summary.json" { text(got).replace(".parquet", ".csv").into_bytes() } else { got.clone() };
            assert!(&got == want, "{name} differs:\n{}\n{}", text(&got), text(want));
        }
    }

    // idmatch tokens
    let (a, b) = (dir.path().join("tokens-csv.csv"), dir.path().join("tokens-pq.csv"));
    let out = common::tokens(&key, &partner_csv, &a, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = common::tokens(&key, &partner_pq, &b, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "the token exports are byte-identical");
}

#[test]
fn every_codec_and_page_kind_warehouses_write_reads_the_same_and_the_magic_is_enough() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let [(owner_csv, _), _] = inputs(dir.path(), Compression::UNCOMPRESSED);
    let want_dir = dir.path().join("want");
    assert!(shard(&key, &owner_csv, &want_dir, &[]).status.success());
    let want = files(&want_dir);
    // Dictionary or plain pages, version 1 or 2 data pages.
    for (name, compression, dictionary, version) in [
        ("uncompressed-plain", Compression::UNCOMPRESSED, false, WriterVersion::PARQUET_1_0),
        ("zstd", Compression::ZSTD(ZstdLevel::default()), true, WriterVersion::PARQUET_1_0),
        ("gzip-v2", Compression::GZIP(GzipLevel::default()), true, WriterVersion::PARQUET_2_0),
        ("lz4-plain-v2", Compression::LZ4_RAW, false, WriterVersion::PARQUET_2_0),
        ("lz4-hadoop", Compression::LZ4, true, WriterVersion::PARQUET_1_0),
    ] {
        let props = WriterProperties::builder()
            .set_compression(compression)
            .set_dictionary_enabled(dictionary)
            .set_writer_version(version)
            .set_max_row_group_row_count(Some(700))
            .build();
        // Not named .parquet: found by its PAR1 magic.
        let path = dir.path().join(format!("owner-{name}.data"));
        write_parquet_with(&path, OWNER_SCHEMA, &owner_table(), props);
        let out_dir = dir.path().join(name);
        let out = shard(&key, &path, &out_dir, &[]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert!(files(&out_dir) == want, "{name}: the shard files differ");
    }
}

#[test]
fn a_rejected_identifier_is_counted_and_reported_with_its_row() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let [(owner_csv, owner_pq), (partner_csv, partner_pq)] = inputs(dir.path(), Compression::SNAPPY);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    assert!(local_match(&owner_csv, &partner_csv, &key, &a, &["--write-rejects"]).status.success());
    let out = local_match(&owner_pq, &partner_pq, &key, &b, &["--write-rejects"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = |dir: &Path| std::fs::read(dir.join("summary.json")).unwrap();
    assert_eq!(text(&summary(&a)), text(&summary(&b)).replace(".parquet", ".csv"), "the same counts");
    let counts: serde_json::Value = serde_json::from_slice(&summary(&b)).unwrap();
    let not_emails = (0..3000).filter(|i| i % 13 != 0 && i % 29 != 0 && i % 11 == 0).count();
    assert_eq!(counts["owner"]["rejected"]["missing_at"], not_emails, "{counts}");
    for side in ["owner", "partner"] {
        // A CSV file names a row by its line (the header is line 1); a Parquet file by its row.
        let csv_rejects = std::fs::read_to_string(a.join(format!("{side}_rejects.csv"))).unwrap();
        let pq_rejects = std::fs::read_to_string(b.join(format!("{side}_rejects.csv"))).unwrap();
        let mut lines = csv_rejects.lines();
        assert_eq!(lines.next(), Some("line,column,reason"));
        let renumbered: Vec<String> = lines
            .map(|l| {
                let (line, rest) = l.split_once(',').unwrap();
                format!("{},{rest}", line.parse::<u64>().unwrap() - 1)
            })
            .collect();
        assert_eq!(pq_rejects.lines().skip(1).collect::<Vec<_>>(), renumbered, "{side}");
    }
    let rejects = std::fs::read_to_string(b.join("partner_rejects.csv")).unwrap();
    // Partner row 1 (i = 0) has the broken address.
    assert!(rejects.lines().any(|l| l.starts_with("1,email,")), "{rejects}");
}

#[test]
fn a_repeated_id_is_refused_naming_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let [_, (_, partner)] = inputs(dir.path(), Compression::SNAPPY);
    let ids: Vec<Option<String>> = (0..50).map(|i| Some(if i == 40 { "m7".into() } else { format!("m{i}") })).collect();
    let emails = (0..50).map(|i| Some(format!("user{i}@example.com"))).collect();
    let owner = dir.path().join("repeats.parquet");
    write_parquet(
        &owner,
        "message o { required binary id (STRING); optional binary email (STRING); }",
        &[Column::Text(ids), Column::Text(emails)],
        Compression::SNAPPY,
        16,
    );
    for extra in [&[][..], &["--shards", "2"][..]] {
        let out_dir = dir.path().join(format!("out{}", extra.len()));
        let out = local_match(&owner, &partner, &key, &out_dir, extra);
        assert_eq!(out.status.code(), Some(1));
        let stderr = text(&out.stderr);
        assert!(stderr.contains("row 41: the record id repeats the id of row 8"), "{stderr}");
        assert!(!out_dir.exists(), "no output");
    }
}

#[test]
fn bad_parquet_files_and_unread_column_types_are_refused_and_leave_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let [(_, owner), (_, partner)] = inputs(dir.path(), Compression::SNAPPY);
    let bytes = std::fs::read(&owner).unwrap();

    let truncated = dir.path().join("truncated.parquet");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let foreign = common::write(dir.path(), "foreign.parquet", "id,email\nm1,a@example.com\n");
    // Damaged pages: the footer reads, a page does not.
    let damaged = dir.path().join("damaged.parquet");
    let mut broken = bytes.clone();
    for b in &mut broken[4..bytes.len() / 3] {
        *b = 0xA5;
    }
    std::fs::write(&damaged, &broken).unwrap();

    let n = 20;
    let text_col = |f: &dyn Fn(usize) -> String| Column::Text((0..n).map(|i| Some(f(i))).collect());
    let float_phone = dir.path().join("float-phone.parquet");
    write_parquet(
        &float_phone,
        "message t { optional binary id (STRING); optional double phone; }",
        &[text_col(&|i| format!("m{i}")), Column::Float((0..n).map(|i| Some(4155550000.0 + i as f64)).collect())],
        Compression::SNAPPY,
        n,
    );
    let binary_email = dir.path().join("binary-email.parquet");
    write_parquet(
        &binary_email,
        "message t { optional binary id (STRING); optional binary email; }",
        &[text_col(&|i| format!("m{i}")), text_col(&|i| format!("u{i}@example.com"))],
        Compression::SNAPPY,
        n,
    );

    let cases: [(&Path, &str); 5] = [
        (&truncated, "not a readable Parquet file"),
        (&foreign, "not a readable Parquet file"),
        (&damaged, "row group 0, column `"),
        (&float_phone, "column `phone` is DOUBLE"),
        (&binary_email, "column `email` is BYTE_ARRAY without a string annotation (binary)"),
    ];
    for (input, expected) in cases {
        let name = input.file_name().unwrap().to_string_lossy();
        let out_dir = dir.path().join(format!("shards-{name}"));
        let out = shard(&key, input, &out_dir, &[]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(input.to_str().unwrap()) && stderr.contains(expected), "{name}: {stderr}");
        assert!(!out_dir.exists(), "{name}: no shard directory");
        let out_dir = dir.path().join(format!("match-{name}"));
        let out = local_match(input, &partner, &key, &out_dir, &[]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(text(&out.stderr).contains(expected), "{name}: {}", text(&out.stderr));
        assert!(!out_dir.exists(), "{name}: no match output");
    }

    // Parquet needs its footer: not from standard input.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_idmatch"))
        .args(["tokens", "--key-file", &key, "--input", "-", "--output", dir.path().join("t.csv").to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let _ = child.stdin.take().unwrap().write_all(&bytes);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot be read from standard input"), "{}", text(&out.stderr));
    assert!(!dir.path().join("t.csv").exists());
}

#[test]
fn unsigned_ids_read_as_unsigned_and_an_unused_nested_column_is_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let path = dir.path().join("members.parquet");
    write_parquet(
        &path,
        "message t {
            required int32 uid (INTEGER(32, false));
            optional binary email (ENUM);
            optional group tags (LIST) { repeated group list { optional binary element (STRING); } }
        }",
        &[
            Column::Int32(vec![Some(-1), Some(7), Some(i32::MIN)]),
            Column::Text(vec![Some("a@example.com".into()), None, Some("c@example.com".into())]),
            Column::NullLists(3),
        ],
        Compression::SNAPPY,
        2,
    );
    let output = dir.path().join("tokens.csv");
    let out = common::tokens(&key, &path, &output, &["--id-col", "uid"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ids: Vec<String> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["4294967295", "2147483648"]);

    let refused = dir.path().join("refused.csv");
    let out = common::tokens(&key, &path, &refused, &["--id-col", "uid", "--email-col", "tags"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("column `tags` is a nested field (a list)"), "{}", text(&out.stderr));
    assert!(!refused.exists());
}

/// The server's audience and the partner's client input as Parquet: the partner's
/// matches are those of the same tables as CSV.
#[test]
fn a_server_audience_and_a_partner_input_may_be_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = keygen(d);
    let [(owner_csv, owner_pq), (partner_csv, partner_pq)] = inputs(d, Compression::ZSTD(ZstdLevel::default()));
    common::write(d, "token", "parquet-test-token");
    let token_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"parquet-test-token"))
    };
    let campaign = |id: &str, audience: &Path| {
        format!(
            "[[campaigns]]\nid = \"{id}\"\nkey_file = \"{key}\"\naudience = \"{}\"\nregion = \"US\"\n",
            audience.display()
        )
    };
    let config = format!(
        "listen = \"127.0.0.1:0\"\nresults_dir = \"results\"\naudit_log = \"audit.jsonl\"\nstate_file = \"budgets.json\"\n\
         [limits]\nmin_partner_set = 100\n\
         [[partners]]\nname = \"acme\"\ntoken_sha256 = \"{token_sha}\"\ncampaigns = [\"csv\", \"parquet\"]\nreveals = [\"partner\"]\n\
         {}{}",
        campaign("csv", &owner_csv),
        campaign("parquet", &owner_pq),
    );
    let config_path = common::write(d, "server.toml", &config);
    let server = common::server::serve(&config_path);
    let url = format!("http://127.0.0.1:{}", server.port);
    let run = |campaign: &str, input: &Path, output: &str| {
        let output = d.join(output);
        let out = idmatch(&[
            "match",
            "--server",
            &url,
            "--campaign",
            campaign,
            "--key-file",
            &key,
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--token-file",
            d.join("token").to_str().unwrap(),
            "--region",
            "US",
            "--reveal",
            "partner",
        ]);
        assert!(out.status.success(), "{campaign} {}: {}", input.display(), text(&out.stderr));
        std::fs::read(output).unwrap()
    };
    let want = run("csv", &partner_csv, "csv.csv");
    assert!(text(&want).lines().count() > 100, "{}", text(&want));
    assert!(run("parquet", &partner_pq, "parquet.csv") == want, "both sides Parquet");
    assert!(run("csv", &partner_pq, "mixed.csv") == want, "the partner's side Parquet");
}
