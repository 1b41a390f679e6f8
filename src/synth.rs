//! Synthetic data: a realistic pair of member and partner files with a known truth,
//! for examples, tests and benchmarks.
//!
//! Each synthetic person has a canonical email and/or phone number. The two files
//! render the people they share differently, the way real exports differ: mixed case,
//! stray spaces, Gmail dots and plus-tags, several phone formats. A small share of
//! values is deliberately invalid. `truth.csv` lists every (partner, member) pair of
//! the same person that shares at least one identifier valid on both sides: exactly
//! the pairs a correct matcher must find under the `idmatch-v1` profile.
//!
//! With [`SynthOptions::distinct`], every row holds exactly one email, always valid
//! (still rendered differently on each side), and no phone: each file then has
//! exactly `rows` distinct identifiers and the intersection is exactly the shared
//! people, which is what benchmarks quoted "per distinct identifier" need.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::normalize::{Kind, Normalizer, Profile, Region};

const FIRST: &[&str] = &[
    "james",
    "mary",
    "robert",
    "patricia",
    "john",
    "jennifer",
    "michael",
    "linda",
    "david",
    "elizabeth",
    "william",
    "barbara",
    "richard",
    "susan",
    "joseph",
    "jessica",
    "thomas",
    "sarah",
    "chris",
    "karen",
    "lisa",
    "daniel",
    "nancy",
    "matthew",
    "betty",
    "anthony",
    "sandra",
    "mark",
    "ashley",
    "paul",
    "emily",
    "kevin",
    "sofia",
    "lukas",
    "zoë",
    "josé",
    "anaïs",
    "jürgen",
    "chloé",
    "søren",
];
const LAST: &[&str] = &[
    "smith",
    "johnson",
    "williams",
    "brown",
    "jones",
    "garcia",
    "miller",
    "davis",
    "rodriguez",
    "martinez",
    "hernandez",
    "lopez",
    "gonzalez",
    "wilson",
    "anderson",
    "thomas",
    "taylor",
    "moore",
    "jackson",
    "martin",
    "lee",
    "perez",
    "thompson",
    "white",
    "harris",
    "clark",
    "lewis",
    "walker",
    "young",
    "allen",
    "king",
    "wright",
    "müller",
    "o'neil",
    "nguyen",
    "kim",
];
const DOMAINS: &[&str] = &[
    "gmail.com",
    "gmail.com",
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "hotmail.com",
    "icloud.com",
    "aol.com",
    "example.com",
    "example.org",
    "mail.example.net",
    "googlemail.com",
    "müller.de",
    "proton.me",
];
/// Area codes whose numbers libphonenumber treats as valid US/CA numbers.
const AREA_CODES: &[u32] =
    &[201, 202, 206, 212, 213, 214, 305, 310, 312, 404, 415, 503, 512, 617, 646, 702, 713, 718, 773, 818, 917, 949];

/// What to generate.
#[derive(Clone, Debug)]
pub struct SynthOptions {
    /// Rows in each file.
    pub rows: usize,
    /// Share of the partner's rows that are members too (0.0 to 1.0).
    pub overlap: f64,
    /// Seed of the random generator: the same options write the same files.
    pub seed: u64,
    /// One valid email per row and nothing else: exactly `rows` distinct
    /// identifiers per file, and an intersection of exactly the shared people.
    pub distinct: bool,
}

/// Counts of what was written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SynthSummary {
    /// Rows written to `members.csv`.
    pub members: usize,
    /// Rows written to `partner.csv`.
    pub partners: usize,
    /// People present in both files (`rows * overlap`, rounded).
    pub shared_people: usize,
    /// Rows of `truth.csv`: shared people with an identifier valid on both sides.
    pub truth_pairs: usize,
}

/// Why synthetic data could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SynthError {
    /// [`SynthOptions::overlap`] is outside 0.0..=1.0 (or NaN).
    #[error("--overlap must be between 0 and 1, got {0}")]
    Overlap(f64),
    /// Creating the directory or writing one of the files failed.
    #[error("{path}: {source}")]
    Io {
        /// The directory or file concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

/// One synthetic person: canonical identifiers (either may be absent, not both).
struct Person {
    email_user: String,
    email_domain: &'static str,
    has_email: bool,
    /// National significant number of a US number, or None.
    phone: Option<u64>,
}

/// One rendered row: the cells plus their normalized forms (None when invalid).
struct Rendered {
    email: String,
    phone: String,
    email_norm: Option<String>,
    phone_norm: Option<String>,
}

impl Rendered {
    /// Whether the two rows share an identifier valid in both.
    fn shares_identifier(&self, other: &Rendered) -> bool {
        let same = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
        same(&self.email_norm, &other.email_norm) || same(&self.phone_norm, &other.phone_norm)
    }
}

/// Writes `members.csv`, `partner.csv` and `truth.csv` into `dir`.
pub fn generate(dir: &Path, options: &SynthOptions) -> Result<SynthSummary, SynthError> {
    if !(0.0..=1.0).contains(&options.overlap) || options.overlap.is_nan() {
        return Err(SynthError::Overlap(options.overlap));
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SynthError::Io { path: path.clone(), source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut rng = StdRng::seed_from_u64(options.seed);
    let shared = ((options.rows as f64) * options.overlap).round() as usize;
    let total_people = 2 * options.rows - shared;
    let people: Vec<Person> = (0..total_people).map(|i| person(i, options.distinct, &mut rng)).collect();
    // Members are people [0, rows); the partner has `shared` of them plus new people.
    let mut member_order: Vec<usize> = (0..options.rows).collect();
    member_order.shuffle(&mut rng);
    let mut partner_people: Vec<usize> = member_order[..shared].to_vec();
    partner_people.extend(options.rows..total_people);
    partner_people.shuffle(&mut rng);

    let normalizer = Normalizer::new(Profile::IdmatchV1, Some(Region::US));
    let mut member_cells: Vec<Option<Rendered>> = (0..options.rows).map(|_| None).collect();
    let members_path = dir.join("members.csv");
    let mut members = CsvOut::create(&members_path)?;
    for &p in &member_order {
        let r = render(&people[p], options.distinct, &mut rng, &normalizer);
        members.row(&format!("m{:07}", p + 1), &r)?;
        member_cells[p] = Some(r);
    }
    members.finish()?;

    let partner_path = dir.join("partner.csv");
    let truth_path = dir.join("truth.csv");
    let mut partner = CsvOut::create(&partner_path)?;
    let mut truth = BufWriter::new(File::create(&truth_path).map_err(io(&truth_path))?);
    writeln!(truth, "partner_id,member_id").map_err(io(&truth_path))?;
    let mut pairs = 0;
    for (i, &p) in partner_people.iter().enumerate() {
        let r = render(&people[p], options.distinct, &mut rng, &normalizer);
        let partner_id = format!("p{:07}", i + 1);
        partner.row(&partner_id, &r)?;
        if let Some(Some(m)) = member_cells.get(p)
            && m.shares_identifier(&r)
        {
            writeln!(truth, "{partner_id},m{:07}", p + 1).map_err(io(&truth_path))?;
            pairs += 1;
        }
    }
    partner.finish()?;
    truth.flush().map_err(io(&truth_path))?;
    Ok(SynthSummary { members: options.rows, partners: options.rows, shared_people: shared, truth_pairs: pairs })
}

/// Rates of the converting members written by [`measurement_files`].
pub const CONVERSION_TEST: f64 = 0.30;
/// Conversion rate of every other member (control arm or not exposed).
pub const CONVERSION_OTHER: f64 = 0.25;

/// Counts of the measurement files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeasurementSummary {
    /// Rows of `exposures.csv` (every partner row, with an `arm`).
    pub exposures: usize,
    /// Rows of `outcomes.csv` (the converting members, with a `value`).
    pub outcomes: usize,
}

/// Adds campaign measurement files to a directory written by [`generate`], leaving
/// its files untouched: `exposures.csv` (partner rows with an `arm` column, `test`
/// or `control` at random) and `outcomes.csv` (the members who convert, with a
/// `value` column of revenue in cents). Members linked by `truth.csv` to a `test`
/// exposure convert with probability [`CONVERSION_TEST`], all others with
/// [`CONVERSION_OTHER`]. A second generator, seeded from `seed`, is used, so the
/// first three files stay byte-identical for the same seed.
pub fn measurement_files(dir: &Path, seed: u64) -> Result<MeasurementSummary, SynthError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source: std::io::Error| SynthError::Io { path: path.clone(), source }
    };
    let csv_err = |path: &Path| {
        let path = path.to_owned();
        move |e: csv::Error| SynthError::Io { path: path.clone(), source: e.into() }
    };
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6d65_6173_7572_6521);
    let (partner_path, members_path, truth_path) =
        (dir.join("partner.csv"), dir.join("members.csv"), dir.join("truth.csv"));
    let (exposures_path, outcomes_path) = (dir.join("exposures.csv"), dir.join("outcomes.csv"));
    let mut in_test = std::collections::HashSet::new();
    let mut arms = std::collections::HashMap::new();
    let mut reader = csv::Reader::from_path(&partner_path).map_err(csv_err(&partner_path))?;
    let mut writer = csv::Writer::from_path(&exposures_path).map_err(csv_err(&exposures_path))?;
    writer.write_record(["id", "email", "phone", "arm"]).map_err(csv_err(&exposures_path))?;
    let mut exposures = 0;
    for row in reader.records() {
        let row = row.map_err(csv_err(&partner_path))?;
        let arm = if rng.gen_bool(0.5) { "test" } else { "control" };
        arms.insert(row[0].to_owned(), arm);
        writer.write_record([&row[0], &row[1], &row[2], arm]).map_err(csv_err(&exposures_path))?;
        exposures += 1;
    }
    writer.flush().map_err(io(&exposures_path))?;
    let mut truth = csv::Reader::from_path(&truth_path).map_err(csv_err(&truth_path))?;
    for row in truth.records() {
        let row = row.map_err(csv_err(&truth_path))?;
        if arms.get(&row[0]) == Some(&"test") {
            in_test.insert(row[1].to_owned());
        }
    }
    let mut reader = csv::Reader::from_path(&members_path).map_err(csv_err(&members_path))?;
    let mut writer = csv::Writer::from_path(&outcomes_path).map_err(csv_err(&outcomes_path))?;
    writer.write_record(["id", "email", "phone", "value"]).map_err(csv_err(&outcomes_path))?;
    let mut outcomes = 0;
    for row in reader.records() {
        let row = row.map_err(csv_err(&members_path))?;
        let rate = if in_test.contains(&row[0]) { CONVERSION_TEST } else { CONVERSION_OTHER };
        let converts = rng.gen_bool(rate);
        let value = rng.gen_range(100..=50_000u32).to_string();
        if converts {
            writer.write_record([&row[0], &row[1], &row[2], value.as_str()]).map_err(csv_err(&outcomes_path))?;
            outcomes += 1;
        }
    }
    writer.flush().map_err(io(&outcomes_path))?;
    Ok(MeasurementSummary { exposures, outcomes })
}

fn person(index: usize, distinct: bool, rng: &mut StdRng) -> Person {
    let first = FIRST[rng.gen_range(0..FIRST.len())];
    let last = LAST[rng.gen_range(0..LAST.len())];
    let sep = ["", ".", "_", "-"][rng.gen_range(0..4)];
    // The index keeps every person's identifiers unique.
    let email_user = format!("{first}{sep}{last}{index}").replace('\'', "");
    let email_domain = DOMAINS[rng.gen_range(0..DOMAINS.len())];
    let roll: f64 = rng.r#gen();
    let (has_email, has_phone) = if distinct {
        (true, false)
    } else if roll < 0.1 {
        (false, true)
    } else if roll < 0.2 {
        (true, false)
    } else {
        (true, true)
    };
    let phone = has_phone.then(|| phone_number(index));
    Person { email_user, email_domain, has_email, phone }
}

/// Exchanges that are not valid for an ordinary number (N11 service codes, 555),
/// ascending.
const EXCLUDED_EXCHANGES: [u64; 9] = [211, 311, 411, 511, 555, 611, 711, 811, 911];
/// Valid exchanges 200..=999 minus the excluded ones.
const EXCHANGES: u64 = 800 - EXCLUDED_EXCHANGES.len() as u64;

/// Person `index`'s national number: a distinct valid number for every index below
/// `AREA_CODES.len() × EXCHANGES × 10,000` (about 174 million people), after which
/// numbers repeat.
fn phone_number(index: usize) -> u64 {
    let area = AREA_CODES[index % AREA_CODES.len()] as u64;
    let local = (index / AREA_CODES.len()) as u64;
    // The n-th valid exchange: step over each excluded one at or below it.
    let mut exchange = 200 + (local / 10_000) % EXCHANGES;
    for excluded in EXCLUDED_EXCHANGES {
        if exchange >= excluded {
            exchange += 1;
        }
    }
    area * 10_000_000 + exchange * 10_000 + local % 10_000
}

fn render(p: &Person, distinct: bool, rng: &mut StdRng, normalizer: &Normalizer) -> Rendered {
    let mut email = String::new();
    if p.has_email {
        let mut user = p.email_user.clone();
        if p.email_domain == "gmail.com" || p.email_domain == "googlemail.com" {
            if rng.gen_bool(0.3) {
                let at = rng.gen_range(1..user.chars().count().max(2));
                let byte = user.char_indices().nth(at).map_or(user.len(), |(b, _)| b);
                user.insert(byte, '.');
                user = user.replace("..", ".");
            }
            if rng.gen_bool(0.2) {
                user.push_str("+promo");
            }
        } else if !distinct && rng.gen_bool(0.05) {
            // Outside Gmail a plus tag is part of the address: another identifier.
            user.push_str("+news");
        }
        email = format!("{user}@{}", p.email_domain);
        if rng.gen_bool(0.3) {
            email = email.to_uppercase();
        } else if rng.gen_bool(0.2) {
            let mut chars: Vec<char> = email.chars().collect();
            if let Some(c) = chars.first_mut() {
                *c = c.to_uppercase().next().unwrap_or(*c);
            }
            email = chars.into_iter().collect();
        }
        if rng.gen_bool(0.1) {
            email = format!("  {email} ");
        }
        if !distinct && rng.gen_bool(0.02) {
            email = ["not-an-email", "john@", "@example.com", "a@b", "x@@example.com"][rng.gen_range(0..5)].to_owned();
        }
    }
    let phone = match p.phone {
        None => String::new(),
        Some(n) if rng.gen_bool(0.02) => ["555-555-5555", "12345", "+1234567890A", "n/a"][(n % 4) as usize].to_owned(),
        Some(n) => {
            let (a, b, c) = (n / 10_000_000, (n / 10_000) % 1000, n % 10_000);
            match rng.gen_range(0..7) {
                0 => format!("({a}) {b}-{c:04}"),
                1 => format!("{a}.{b}.{c:04}"),
                2 => format!("+1 {a}-{b}-{c:04}"),
                3 => format!("1-{a}-{b}-{c:04}"),
                4 => format!("tel:+1{a}{b}{c:04}"),
                5 => format!("001 {a} {b} {c:04}"),
                _ => format!("{a}{b}{c:04}"),
            }
        }
    };
    let email_norm = normalizer.normalize(Kind::Email, &email, None).ok();
    let phone_norm = normalizer.normalize(Kind::Phone, &phone, None).ok();
    Rendered { email, phone, email_norm, phone_norm }
}

/// A small CSV writer for the `id,email,phone` files.
struct CsvOut {
    path: PathBuf,
    writer: csv::Writer<BufWriter<File>>,
}

impl CsvOut {
    fn create(path: &Path) -> Result<CsvOut, SynthError> {
        let file = File::create(path).map_err(|source| SynthError::Io { path: path.to_owned(), source })?;
        let mut out = CsvOut { path: path.to_owned(), writer: csv::Writer::from_writer(BufWriter::new(file)) };
        out.write(["id", "email", "phone"])?;
        Ok(out)
    }

    fn row(&mut self, id: &str, r: &Rendered) -> Result<(), SynthError> {
        self.write([id, &r.email, &r.phone])
    }

    fn write(&mut self, cells: [&str; 3]) -> Result<(), SynthError> {
        self.writer.write_record(cells).map_err(|e| SynthError::Io { path: self.path.clone(), source: e.into() })
    }

    fn finish(mut self) -> Result<(), SynthError> {
        self.writer.flush().map_err(|source| SynthError::Io { path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_are_distinct_and_valid_across_the_excluded_exchanges() {
        // The persons whose exchange steps over 211 and 555 (and their neighbours).
        let per_exchange = AREA_CODES.len() * 10_000;
        let mut seen = std::collections::HashSet::new();
        for window in [9..13, 353..357] {
            for index in window.start * per_exchange..window.end * per_exchange {
                let number = phone_number(index);
                assert!(seen.insert(number), "index {index}: {number} repeats");
                let exchange = number / 10_000 % 1_000;
                assert!(!EXCLUDED_EXCHANGES.contains(&exchange) && exchange >= 200, "{number}");
            }
        }
        let normalizer = Normalizer::new(Profile::IdmatchV1, None);
        for index in [10 * per_exchange, 11 * per_exchange, 354 * per_exchange, 355 * per_exchange] {
            let text = format!("+1{}", phone_number(index));
            assert!(normalizer.normalize(Kind::Phone, &text, None).is_ok(), "{text}");
        }
    }
}
