//! The SQLite backend: one database file in WAL mode with `synchronous=FULL`, so a
//! change whose call returned `Ok` survives a crash or power loss.
//!
//! # Schema (version 1, in `PRAGMA user_version`; `PRAGMA application_id` marks the file)
//!
//! - `optouts(digest BLOB PRIMARY KEY, kind INTEGER, added_by INTEGER) WITHOUT ROWID`:
//!   one row per entry, in digest order; `kind` 0 email, 1 phone, 2 id; `added_by` is
//!   the audit event that added it (its time and source).
//! - `audit(id, at_ms, source, action, kind, requested, changed)`: the audit trail.
//! - `sources(id, label)`: source labels, referenced by id.
//! - `counts(kind, n)`: entries by kind, kept in the same transactions as the changes.
//! - `meta(name, value)`: `key_fingerprint`, `profile`, `created_ms`.
//!
//! Migrations run at open, in one immediate transaction; a file with a newer
//! `user_version` is refused.
//!
//! # Concurrency
//!
//! One writer connection (behind a mutex; other processes wait on SQLite's lock for
//! up to [`BUSY_TIMEOUT`]) and a pool of reader connections. WAL readers never block
//! the writer nor wait for it: a bulk check runs while an import commits.
//!
//! # Bulk checks
//!
//! [`Backend::contains_many`] sorts the queried digests, splits them into one part
//! per core, and answers each part on its own reader connection inside one read
//! transaction, either by a point lookup per digest or, when the part is dense
//! relative to the table, by one ordered range scan merged against the sorted
//! digests. Digests are uniform (they are HMAC outputs), so the number of stored rows
//! in a key range is estimated from the range's width. The parts' snapshots must
//! agree (same last audit event), so one call never mixes states before and after a
//! commit.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rayon::prelude::*;
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};

use super::time::now_ms;
use super::{
    AuditAction, AuditEvent, Backend, BatchOutcome, Counts, EntryKind, ExportRow, StoreEntry, StoreError,
    StoreSettings, digest_order,
};
use crate::normalize::Profile;
use crate::token::Token;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

/// `PRAGMA application_id` of every store: ASCII `IDOO` (idmatch opt-outs).
/// Why an uninitialized database is not opened as a store.
const EMPTY_FILE: &str =
    "the file is empty, not an opt-out store (a store is created by `idmatch optout add` or `idmatch optout import`)";

pub const APPLICATION_ID: i64 = 0x4944_4f4f;

/// How long a write waits for another process's write to finish.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// Reader connections kept open for reuse.
const MAX_IDLE_READERS: usize = 8;

/// Digests below which a lookup is answered on one connection without sorting.
const SMALL_LOOKUP: usize = 256;

/// Page size of new stores. Large pages make the B-tree shallower: measured on a
/// 10,000,000-entry store, bulk point lookups were about twice as fast with 64 KiB
/// pages as with the default 4 KiB, at the cost of larger writes per single change.
const PAGE_SIZE: u32 = 65_536;

/// Rows per multi-row `INSERT` of a batch.
const ROWS_PER_INSERT: usize = 64;

/// Parallel attempts at a single-snapshot bulk lookup before falling back to one
/// connection.
const CONSISTENT_TRIES: usize = 3;

/// `MIGRATIONS[v]` takes a store from version `v` to `v + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1
    "CREATE TABLE meta (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;
     CREATE TABLE sources (id INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE);
     CREATE TABLE audit (
         id INTEGER PRIMARY KEY,
         at_ms INTEGER NOT NULL,
         source INTEGER NOT NULL REFERENCES sources (id),
         action INTEGER NOT NULL,
         kind INTEGER NOT NULL,
         requested INTEGER NOT NULL,
         changed INTEGER NOT NULL
     );
     CREATE TABLE counts (kind INTEGER PRIMARY KEY, n INTEGER NOT NULL);
     INSERT INTO counts (kind, n) VALUES (0, 0), (1, 0), (2, 0);
     CREATE TABLE optouts (
         digest BLOB PRIMARY KEY NOT NULL,
         kind INTEGER NOT NULL,
         added_by INTEGER NOT NULL REFERENCES audit (id)
     ) WITHOUT ROWID;",
];

/// How bulk lookups are answered (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LookupStrategy {
    /// Point lookups or a range scan, whichever the density suggests.
    #[default]
    Auto,
    /// Always one point lookup per digest.
    Seek,
    /// Always an ordered range scan per part.
    Scan,
}

/// Memory settings of the SQLite connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqliteTuning {
    /// Page cache of the writer connection, in MiB.
    pub writer_cache_mib: u32,
    /// Page cache of each reader connection, in MiB.
    pub reader_cache_mib: u32,
    /// Memory-mapped I/O window for reads, in MiB (0 disables it).
    pub mmap_mib: u32,
    /// How bulk lookups are answered.
    pub lookup: LookupStrategy,
    /// With [`LookupStrategy::Auto`], scan when the estimated stored rows in a part's
    /// key range are at most this many times the part's digests.
    pub scan_ratio: u32,
}

impl Default for SqliteTuning {
    fn default() -> Self {
        SqliteTuning {
            writer_cache_mib: 128,
            reader_cache_mib: 32,
            mmap_mib: 4096,
            lookup: LookupStrategy::Auto,
            scan_ratio: 4,
        }
    }
}

/// The SQLite [`Backend`].
pub struct SqliteBackend {
    db: Db,
    settings: StoreSettings,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

/// Where the database is and how to open connections to it.
struct Db {
    path: PathBuf,
    name: String,
    tuning: SqliteTuning,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SqliteBackend {
    /// Opens the store at `path` (creating it with `init`'s settings if `create` and it
    /// does not exist), runs pending migrations and reads its settings. The caller
    /// checks the key fingerprint ([`super::OptOutStore::open`] does).
    pub fn open(
        path: &Path,
        init: &StoreSettings,
        create: bool,
        tuning: SqliteTuning,
    ) -> Result<SqliteBackend, StoreError> {
        let db = Db { path: path.to_owned(), name: path.display().to_string(), tuning };
        if !create {
            match std::fs::metadata(path) {
                Err(_) => return Err(StoreError::NotFound { path: db.name }),
                // Checked before connecting: setting up the connection would write
                // a database header into the empty file.
                Ok(meta) if meta.len() == 0 => return Err(db.not_a_store(EMPTY_FILE)),
                Ok(_) => {}
            }
        }
        let mut writer = db.connect(create, tuning.writer_cache_mib)?;
        db.migrate(&mut writer, init, create)?;
        let settings = db.read_settings(&writer)?;
        Ok(SqliteBackend { db, settings, writer: Mutex::new(writer), readers: Mutex::new(Vec::new()) })
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        self.db.err(e)
    }
    /// Runs `f` on a pooled reader connection (opened on demand).
    fn with_reader<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let pooled = lock(&self.readers).pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = self.db.connect(false, self.db.tuning.reader_cache_mib)?;
                conn.execute_batch("PRAGMA query_only = ON").map_err(|e| self.err(e))?;
                conn
            }
        };
        let result = f(&mut conn);
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        let mut idle = lock(&self.readers);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        drop(idle);
        result.map_err(|e| self.err(e))
    }

    /// Adds or removes `entries` in one transaction with one audit event per kind
    /// present; returns the entries asked for and those actually changed, by kind.
    fn write_entries(
        &self,
        entries: &[StoreEntry],
        source: &str,
        action: AuditAction,
    ) -> Result<(Counts, Counts), StoreError> {
        let mut conn = lock(&self.writer);
        let result = (|| -> rusqlite::Result<(Counts, Counts)> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let source_id = source_id(&tx, source)?;
            let at = now_ms();
            let mut requested = Counts::default();
            for entry in entries {
                requested.add(entry.kind, 1);
            }
            let mut events = [0i64; 3];
            for kind in EntryKind::ALL.into_iter().filter(|&k| requested.get(k) > 0) {
                events[kind as usize] =
                    insert_event(&tx, at, source_id, action, kind, requested.get(kind), requested.get(kind))?;
            }
            let mut added = Counts::default();
            let mut removed = Counts::default();
            if action == AuditAction::Remove {
                let mut delete = tx.prepare_cached("DELETE FROM optouts WHERE digest = ?1")?;
                for entry in entries {
                    removed.add(entry.kind, delete.execute([&entry.digest.0[..]])? as u64);
                }
            } else {
                // Many rows per statement: the per-statement overhead is then paid once
                // per group (measured: about 1.5x faster than a row per statement).
                let full = insert_sql(ROWS_PER_INSERT);
                for group in entries.chunks(ROWS_PER_INSERT) {
                    let remainder;
                    let sql = if group.len() == ROWS_PER_INSERT {
                        &full
                    } else {
                        remainder = insert_sql(group.len());
                        &remainder
                    };
                    let mut insert = tx.prepare_cached(sql)?;
                    for (j, entry) in group.iter().enumerate() {
                        insert.raw_bind_parameter(3 * j + 1, &entry.digest.0[..])?;
                        insert.raw_bind_parameter(3 * j + 2, entry.kind.code())?;
                        insert.raw_bind_parameter(3 * j + 3, events[entry.kind as usize])?;
                    }
                    let n = insert.raw_execute()?;
                    if n == group.len() {
                        group.iter().for_each(|e| added.add(e.kind, 1));
                    } else if n > 0 {
                        // Some were already present: the new ones carry this change's event.
                        let mut by = tx.prepare_cached("SELECT added_by FROM optouts WHERE digest = ?1")?;
                        for entry in group {
                            let added_by: i64 = by.query_row([&entry.digest.0[..]], |r| r.get(0))?;
                            if added_by == events[entry.kind as usize] {
                                added.add(entry.kind, 1);
                            }
                        }
                    }
                }
            }
            for kind in EntryKind::ALL.into_iter().filter(|&k| requested.get(k) > 0) {
                let changed = added.get(kind) + removed.get(kind);
                tx.execute(
                    "UPDATE audit SET changed = ?1 WHERE id = ?2",
                    params![changed as i64, events[kind as usize]],
                )?;
                let delta = added.get(kind) as i64 - removed.get(kind) as i64;
                if delta != 0 {
                    tx.execute("UPDATE counts SET n = n + ?1 WHERE kind = ?2", params![delta, kind.code()])?;
                }
            }
            tx.commit()?;
            Ok((requested, if action == AuditAction::Remove { removed } else { added }))
        })();
        result.map_err(|e| self.err(e))
    }

    /// Lookups for one sorted part, in one read transaction. Also returns the
    /// snapshot's generation (the last audit event: every write adds one).
    fn lookup_sorted(&self, conn: &mut Connection, part: &[(Token, u32)]) -> rusqlite::Result<(i64, Vec<bool>)> {
        let tx = conn.transaction()?;
        let generation: i64 = tx.query_row("SELECT coalesce(max(id), 0) FROM audit", [], |r| r.get(0))?;
        let found = self.lookup_in(&tx, part)?;
        Ok((generation, found))
    }

    fn lookup_in(&self, tx: &rusqlite::Transaction<'_>, part: &[(Token, u32)]) -> rusqlite::Result<Vec<bool>> {
        let mut found = vec![false; part.len()];
        let (Some(first), Some(last)) = (part.first(), part.last()) else { return Ok(found) };
        let strategy = match self.db.tuning.lookup {
            LookupStrategy::Auto => {
                let rows: i64 = tx.query_row("SELECT sum(n) FROM counts", [], |r| r.get(0))?;
                let width = (prefix(&last.0) - prefix(&first.0)) / 2f64.powi(64);
                let expected = rows as f64 * width;
                if expected <= f64::from(self.db.tuning.scan_ratio) * part.len() as f64 {
                    LookupStrategy::Scan
                } else {
                    LookupStrategy::Seek
                }
            }
            fixed => fixed,
        };
        if strategy == LookupStrategy::Scan {
            let mut stmt =
                tx.prepare_cached("SELECT digest FROM optouts WHERE digest BETWEEN ?1 AND ?2 ORDER BY digest")?;
            let mut rows = stmt.query([&first.0.0[..], &last.0.0[..]])?;
            let mut i = 0;
            while let Some(row) = rows.next()? {
                let stored = row.get_ref(0)?.as_blob()?;
                while i < part.len() && part[i].0.0[..] < *stored {
                    i += 1;
                }
                while i < part.len() && part[i].0.0[..] == *stored {
                    found[i] = true;
                    i += 1;
                }
                if i == part.len() {
                    break;
                }
            }
        } else {
            let mut stmt = tx.prepare_cached("SELECT 1 FROM optouts WHERE digest = ?1")?;
            for i in 0..part.len() {
                found[i] =
                    if i > 0 && part[i].0 == part[i - 1].0 { found[i - 1] } else { stmt.exists([&part[i].0.0[..]])? };
            }
        }
        Ok(found)
    }
}

impl Db {
    fn err(&self, e: rusqlite::Error) -> StoreError {
        sql_err(&self.name, e)
    }

    /// Opens one connection with the store's pragmas.
    fn connect(&self, create: bool, cache_mib: u32) -> Result<Connection, StoreError> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(&self.path, flags).map_err(|e| self.err(e))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| self.err(e))?;
        // Takes effect only on a new, empty file (before write-ahead logging is on).
        conn.execute_batch(&format!("PRAGMA page_size = {PAGE_SIZE}")).map_err(|e| self.err(e))?;
        let mode: String =
            conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)).map_err(|e| self.err(e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotAStore {
                path: self.name.clone(),
                reason: format!("cannot switch to write-ahead logging (journal mode stays {mode})"),
            });
        }
        let pragmas = format!(
            "PRAGMA synchronous = FULL;
             PRAGMA cache_size = -{};
             PRAGMA mmap_size = {};
             PRAGMA journal_size_limit = {};
             PRAGMA temp_store = MEMORY;",
            u64::from(cache_mib) * 1024,
            u64::from(self.tuning.mmap_mib) << 20,
            64u64 << 20,
        );
        conn.execute_batch(&pragmas).map_err(|e| self.err(e))?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    /// Checks the file's identity and version, and creates or upgrades the schema.
    /// Brings the schema up to date; an uninitialized database (an empty file) is
    /// made a store only when `create` is set, so a store that should exist is
    /// never silently replaced by an empty one.
    fn migrate(&self, conn: &mut Connection, init: &StoreSettings, create: bool) -> Result<(), StoreError> {
        let (app_id, version) = self.header(conn)?;
        if version > SCHEMA_VERSION {
            return Err(self.newer(version));
        }
        if version == SCHEMA_VERSION && app_id == APPLICATION_ID {
            return Ok(());
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| self.err(e))?;
        // Another process may have created or upgraded the store meanwhile.
        let (app_id, version) = self.header(&tx)?;
        if version > SCHEMA_VERSION {
            return Err(self.newer(version));
        }
        if version == 0 {
            let objects: i64 =
                tx.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0)).map_err(|e| self.err(e))?;
            if objects > 0 {
                return Err(self.not_a_store("the database already holds other tables"));
            }
            if !create {
                return Err(self.not_a_store(EMPTY_FILE));
            }
        } else if app_id != APPLICATION_ID {
            return Err(self.not_a_store("its application id is not idmatch's"));
        }
        let pending = usize::try_from(version).ok().and_then(|v| MIGRATIONS.get(v..));
        let Some(pending) = pending else {
            return Err(self.not_a_store("its schema version is negative"));
        };
        for migration in pending {
            tx.execute_batch(migration).map_err(|e| self.err(e))?;
        }
        if version == 0 {
            tx.pragma_update(None, "application_id", APPLICATION_ID).map_err(|e| self.err(e))?;
            let mut insert = tx.prepare("INSERT INTO meta (name, value) VALUES (?1, ?2)").map_err(|e| self.err(e))?;
            for (name, value) in [
                ("key_fingerprint", init.key_fingerprint.clone()),
                ("profile", init.profile.name().to_owned()),
                ("created_ms", now_ms().to_string()),
            ] {
                insert.execute([name, value.as_str()]).map_err(|e| self.err(e))?;
            }
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    fn header(&self, conn: &Connection) -> Result<(i64, i64), StoreError> {
        let read = |pragma: &str| conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get::<_, i64>(0));
        match (read("application_id"), read("user_version")) {
            (Ok(app), Ok(version)) => Ok((app, version)),
            (Err(e), _) | (_, Err(e)) => Err(self.err(e)),
        }
    }

    fn newer(&self, found: i64) -> StoreError {
        StoreError::NewerSchema { path: self.name.clone(), found, supported: SCHEMA_VERSION }
    }

    fn not_a_store(&self, reason: &str) -> StoreError {
        StoreError::NotAStore { path: self.name.clone(), reason: reason.to_owned() }
    }

    fn read_settings(&self, conn: &Connection) -> Result<StoreSettings, StoreError> {
        let get = |name: &str| -> Result<String, StoreError> {
            conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| r.get(0))
                .map_err(|_| self.not_a_store(&format!("its `{name}` setting is missing")))
        };
        let profile: Profile =
            get("profile")?.parse().map_err(|e: String| self.not_a_store(&format!("bad profile setting: {e}")))?;
        Ok(StoreSettings { key_fingerprint: get("key_fingerprint")?, profile })
    }
}

/// The first 8 bytes of a digest as a number in [0, 2^64), as f64.
fn prefix(token: &Token) -> f64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&token.0[..8]);
    u64::from_be_bytes(head) as f64
}

fn sql_err(name: &str, e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && f.code == rusqlite::ErrorCode::NotADatabase
    {
        return StoreError::NotAStore { path: name.to_owned(), reason: "the file is not an SQLite database".into() };
    }
    StoreError::Sqlite { path: name.to_owned(), source: e }
}

/// `INSERT` of `rows` entries that skips digests already present.
fn insert_sql(rows: usize) -> String {
    let values = vec!["(?, ?, ?)"; rows].join(", ");
    format!("INSERT INTO optouts (digest, kind, added_by) VALUES {values} ON CONFLICT (digest) DO NOTHING")
}

fn source_id(tx: &rusqlite::Transaction<'_>, label: &str) -> rusqlite::Result<i64> {
    tx.prepare_cached("INSERT INTO sources (label) VALUES (?1) ON CONFLICT (label) DO NOTHING")?.execute([label])?;
    tx.prepare_cached("SELECT id FROM sources WHERE label = ?1")?.query_row([label], |r| r.get(0))
}

fn insert_event(
    tx: &rusqlite::Transaction<'_>,
    at: i64,
    source: i64,
    action: AuditAction,
    kind: EntryKind,
    requested: u64,
    changed: u64,
) -> rusqlite::Result<i64> {
    tx.prepare_cached(
        "INSERT INTO audit (at_ms, source, action, kind, requested, changed) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![at, source, action.code(), kind.code(), requested as i64, changed as i64])?;
    Ok(tx.last_insert_rowid())
}

fn bad_row(what: &str) -> rusqlite::Error {
    let reason: Box<dyn std::error::Error + Send + Sync> = format!("unexpected stored {what}").into();
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Null, reason)
}

impl Backend for SqliteBackend {
    fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    fn add(&self, entry: StoreEntry, source: &str) -> Result<bool, StoreError> {
        Ok(self.write_entries(&[entry], source, AuditAction::Add)?.1.total() == 1)
    }

    fn remove(&self, entry: StoreEntry, source: &str) -> Result<bool, StoreError> {
        Ok(self.write_entries(&[entry], source, AuditAction::Remove)?.1.total() == 1)
    }

    fn contains_many(&self, digests: &[Token]) -> Result<Vec<bool>, StoreError> {
        if digests.len() <= SMALL_LOOKUP {
            return self.with_reader(|conn| {
                let tx = conn.transaction()?;
                let mut stmt = tx.prepare_cached("SELECT 1 FROM optouts WHERE digest = ?1")?;
                digests.iter().map(|d| stmt.exists([&d.0[..]])).collect()
            });
        }
        let mut order: Vec<(Token, u32)> = digests.iter().copied().zip(0u32..).collect();
        order.par_sort_unstable_by(|a, b| digest_order(&a.0, &b.0));
        let parts = rayon::current_num_threads().clamp(1, digests.len().div_ceil(SMALL_LOOKUP));
        let chunk = order.len().div_ceil(parts);
        // Each part runs in its own read transaction; the answer must come from one
        // snapshot, so if a write committed between the parts' snapshots, ask again,
        // and after a few tries answer all parts on one connection.
        let mut found: Option<Vec<Vec<bool>>> = None;
        for _ in 0..CONSISTENT_TRIES {
            let parts: Vec<(i64, Vec<bool>)> = order
                .par_chunks(chunk)
                .map(|part| self.with_reader(|conn| self.lookup_sorted(conn, part)))
                .collect::<Result<_, _>>()?;
            if parts.windows(2).all(|w| w[0].0 == w[1].0) {
                found = Some(parts.into_iter().map(|(_, flags)| flags).collect());
                break;
            }
        }
        let found = match found {
            Some(found) => found,
            None => self.with_reader(|conn| {
                let tx = conn.transaction()?;
                order.chunks(chunk).map(|part| self.lookup_in(&tx, part)).collect()
            })?,
        };
        let mut result = vec![false; digests.len()];
        for (part, flags) in order.chunks(chunk).zip(found) {
            for (&(_, index), flag) in part.iter().zip(flags) {
                result[index as usize] = flag;
            }
        }
        Ok(result)
    }

    fn count(&self) -> Result<Counts, StoreError> {
        self.with_reader(|conn| {
            let mut counts = Counts::default();
            let mut stmt = conn.prepare_cached("SELECT kind, n FROM counts")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let kind = EntryKind::from_code(row.get(0)?).ok_or_else(|| bad_row("kind"))?;
                counts.add(kind, row.get::<_, i64>(1)?.max(0) as u64);
            }
            Ok(counts)
        })
    }

    fn import_batch(&self, entries: &[StoreEntry], source: &str) -> Result<BatchOutcome, StoreError> {
        if entries.is_empty() {
            return Ok(BatchOutcome::default());
        }
        // Sorted, distinct entries: counting relies on distinct digests, and sorted
        // inserts touch each page once.
        let sorted: Vec<StoreEntry>;
        let entries = if entries.windows(2).all(|w| w[0].digest < w[1].digest) {
            entries
        } else {
            let mut copy = entries.to_vec();
            copy.sort_unstable_by(|a, b| digest_order(&a.digest, &b.digest));
            copy.dedup_by(|a, b| a.digest == b.digest);
            sorted = copy;
            &sorted
        };
        let (requested, added) = self.write_entries(entries, source, AuditAction::Import)?;
        let present = Counts {
            email: requested.email - added.email,
            phone: requested.phone - added.phone,
            id: requested.id - added.id,
        };
        Ok(BatchOutcome { added, present })
    }

    fn export(&self, sink: &mut dyn FnMut(&ExportRow) -> std::io::Result<()>) -> Result<u64, StoreError> {
        let mut sink_error = None;
        let written = self.with_reader(|conn| {
            let tx = conn.transaction()?;
            let mut stmt = tx.prepare(
                "SELECT o.digest, o.kind, a.at_ms, s.label FROM optouts o
                 JOIN audit a ON a.id = o.added_by JOIN sources s ON s.id = a.source ORDER BY o.digest",
            )?;
            let mut rows = stmt.query([])?;
            let mut n = 0;
            while let Some(row) = rows.next()? {
                let digest: [u8; 32] = row.get_ref(0)?.as_blob()?.try_into().map_err(|_| bad_row("digest length"))?;
                let kind = EntryKind::from_code(row.get(1)?).ok_or_else(|| bad_row("kind"))?;
                let export = ExportRow { digest: Token(digest), kind, added_ms: row.get(2)?, source: row.get(3)? };
                if let Err(e) = sink(&export) {
                    sink_error = Some(e);
                    break;
                }
                n += 1;
            }
            Ok(n)
        })?;
        match sink_error {
            Some(e) => Err(StoreError::Output(e)),
            None => Ok(written),
        }
    }

    fn audit(&self, sink: &mut dyn FnMut(&AuditEvent) -> std::io::Result<()>) -> Result<u64, StoreError> {
        let mut sink_error = None;
        let written = self.with_reader(|conn| {
            let tx = conn.transaction()?;
            let mut stmt = tx.prepare(
                "SELECT a.id, a.at_ms, s.label, a.action, a.kind, a.requested, a.changed
                 FROM audit a JOIN sources s ON s.id = a.source ORDER BY a.id",
            )?;
            let mut rows = stmt.query([])?;
            let mut n = 0;
            while let Some(row) = rows.next()? {
                let event = AuditEvent {
                    id: row.get(0)?,
                    at_ms: row.get(1)?,
                    source: row.get(2)?,
                    action: AuditAction::from_code(row.get(3)?).ok_or_else(|| bad_row("action"))?,
                    kind: EntryKind::from_code(row.get(4)?).ok_or_else(|| bad_row("kind"))?,
                    requested: row.get::<_, i64>(5)?.max(0) as u64,
                    changed: row.get::<_, i64>(6)?.max(0) as u64,
                };
                if let Err(e) = sink(&event) {
                    sink_error = Some(e);
                    break;
                }
                n += 1;
            }
            Ok(n)
        })?;
        match sink_error {
            Some(e) => Err(StoreError::Output(e)),
            None => Ok(written),
        }
    }

    fn verify(&self) -> Result<Vec<String>, StoreError> {
        self.with_reader(|conn| {
            let tx = conn.transaction()?;
            let mut problems = Vec::new();
            let mut stmt = tx.prepare("PRAGMA integrity_check")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let line: String = row.get(0)?;
                if line != "ok" {
                    problems.push(format!("integrity_check: {line}"));
                }
            }
            drop(rows);
            let mut stmt = tx.prepare(
                "SELECT c.kind, c.n, (SELECT count(*) FROM optouts o WHERE o.kind = c.kind) FROM counts c ORDER BY c.kind",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let (kind, kept, actual): (i64, i64, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
                if kept != actual {
                    problems.push(format!("counts: kind {kind} recorded {kept}, found {actual}"));
                }
            }
            Ok(problems)
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        let conn = lock(&self.writer);
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::key::Key;
    use crate::token::{Label, Tokenizer};

    fn settings() -> StoreSettings {
        StoreSettings { key_fingerprint: "f".repeat(64), profile: Profile::IdmatchV1 }
    }

    fn tokens(n: usize, seed: &str) -> Vec<Token> {
        let t = Tokenizer::new(&Key::from_bytes([4; 32]));
        (0..n).map(|i| t.token(Label::Email, &format!("{seed}{i}"))).collect()
    }

    fn entries(tokens: &[Token], kind: EntryKind) -> Vec<StoreEntry> {
        tokens.iter().map(|&digest| StoreEntry { digest, kind }).collect()
    }

    #[test]
    fn creates_the_schema_once_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let missing = SqliteBackend::open(&path, &settings(), false, SqliteTuning::default());
        assert!(matches!(missing, Err(StoreError::NotFound { .. })));
        let backend = SqliteBackend::open(&path, &settings(), true, SqliteTuning::default()).unwrap();
        assert_eq!(backend.settings(), &settings());
        drop(backend);
        // Reopening never re-initializes: the recorded settings win.
        let other = StoreSettings { key_fingerprint: "0".repeat(64), profile: Profile::BasicV1 };
        let backend = SqliteBackend::open(&path, &other, true, SqliteTuning::default()).unwrap();
        assert_eq!(backend.settings(), &settings());
        let conn = lock(&backend.writer);
        let pragma = |name: &str| conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(pragma("user_version"), SCHEMA_VERSION);
        assert_eq!(pragma("application_id"), APPLICATION_ID);
        assert_eq!(pragma("page_size"), i64::from(PAGE_SIZE));
        assert_eq!(pragma("synchronous"), 2, "FULL");
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn lookup_strategies_agree_with_the_truth() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let stored = tokens(6000, "in");
        let backend = SqliteBackend::open(&path, &settings(), true, SqliteTuning::default()).unwrap();
        backend.import_batch(&entries(&stored, EntryKind::Email), "t").unwrap();
        drop(backend);
        let truth: HashSet<Token> = stored.iter().copied().collect();
        // Unsorted, with duplicates, half present; and a small query.
        let mut queries: Vec<Token> = tokens(2000, "out");
        queries.extend(stored.iter().step_by(3));
        queries.extend(stored.iter().step_by(7));
        queries.reverse();
        let expected: Vec<bool> = queries.iter().map(|q| truth.contains(q)).collect();
        for lookup in [LookupStrategy::Auto, LookupStrategy::Seek, LookupStrategy::Scan] {
            for scan_ratio in [0, 4, 1000] {
                let tuning = SqliteTuning { lookup, scan_ratio, ..SqliteTuning::default() };
                let backend = SqliteBackend::open(&path, &settings(), false, tuning).unwrap();
                assert_eq!(backend.contains_many(&queries).unwrap(), expected, "{lookup:?} {scan_ratio}");
                assert_eq!(backend.contains_many(&queries[..10]).unwrap(), expected[..10]);
                assert_eq!(backend.contains_many(&[]).unwrap(), Vec::<bool>::new());
            }
        }
    }

    #[test]
    fn batches_count_new_and_present_exactly_and_audit_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let backend =
            SqliteBackend::open(&dir.path().join("s.db"), &settings(), true, SqliteTuning::default()).unwrap();
        let emails = tokens(300, "e");
        let ids = tokens(100, "i");
        // Every 4th email and every 5th id first: later batches then hit some groups
        // partly present.
        let mut first = entries(&emails.iter().copied().step_by(4).collect::<Vec<_>>(), EntryKind::Email);
        first.extend(entries(&ids.iter().copied().step_by(5).collect::<Vec<_>>(), EntryKind::Id));
        let outcome = backend.import_batch(&first, "a").unwrap();
        assert_eq!(outcome.added, Counts { email: 75, phone: 0, id: 20 });
        let mut all = entries(&emails, EntryKind::Email);
        all.extend(entries(&ids, EntryKind::Id));
        all.extend(entries(&ids[..10], EntryKind::Id)); // listed twice: counted once
        let outcome = backend.import_batch(&all, "b").unwrap();
        assert_eq!(outcome.added, Counts { email: 225, phone: 0, id: 80 });
        assert_eq!(outcome.present, Counts { email: 75, phone: 0, id: 20 });
        assert_eq!(backend.count().unwrap(), Counts { email: 300, phone: 0, id: 100 });

        let phone = StoreEntry { digest: tokens(1, "p")[0], kind: EntryKind::Phone };
        assert!(backend.add(phone, "account-settings").unwrap());
        assert!(!backend.add(phone, "account-settings").unwrap());
        assert!(backend.remove(phone, "account-settings").unwrap());
        assert!(!backend.remove(phone, "account-settings").unwrap());
        assert!(backend.remove(StoreEntry { digest: emails[0], kind: EntryKind::Email }, "x").unwrap());
        assert_eq!(backend.count().unwrap(), Counts { email: 299, phone: 0, id: 100 });
        assert_eq!(backend.verify().unwrap(), Vec::<String>::new());

        let mut events = Vec::new();
        backend
            .audit(&mut |e| {
                events.push((e.source.clone(), e.action, e.kind, e.requested, e.changed));
                Ok(())
            })
            .unwrap();
        use AuditAction::*;
        use EntryKind::{Email, Id, Phone};
        let s = |s: &str| s.to_owned();
        assert_eq!(
            events,
            vec![
                (s("a"), Import, Email, 75, 75),
                (s("a"), Import, Id, 20, 20),
                (s("b"), Import, Email, 300, 225),
                (s("b"), Import, Id, 100, 80),
                (s("account-settings"), Add, Phone, 1, 1),
                (s("account-settings"), Add, Phone, 1, 0),
                (s("account-settings"), Remove, Phone, 1, 1),
                (s("account-settings"), Remove, Phone, 1, 0),
                (s("x"), Remove, Email, 1, 1),
            ]
        );

        // The export: every entry once, in digest order, with the source that added it.
        let mut rows = Vec::new();
        backend
            .export(&mut |row| {
                rows.push(row.clone());
                Ok(())
            })
            .unwrap();
        assert_eq!(rows.len(), 399);
        assert!(rows.windows(2).all(|w| w[0].digest < w[1].digest));
        let by_a = rows.iter().filter(|r| r.source == "a").count();
        assert_eq!(by_a, 75 - 1 + 20, "emails[0] was added by `a` and removed");
        assert!(rows.iter().all(|r| r.added_ms > 1_600_000_000_000));
        // A failing sink stops the export with its error.
        let err = backend.export(&mut |_| Err(std::io::Error::other("disk full"))).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
    }
}
