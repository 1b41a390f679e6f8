//! Synthetic measurement data and its plaintext figures, shared by the local and
//! the gRPC measurement tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use idmatch::key::Key;
use idmatch::synth::{SynthOptions, generate, measurement_files};

pub fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader.records().map(|r| r.unwrap().iter().map(str::to_owned).collect()).collect()
}

/// A synthetic pair with measurement columns and a key.
pub fn synth(dir: &Path, rows: usize, seed: u64) -> PathBuf {
    generate(dir, &SynthOptions { rows, overlap: 0.6, seed, distinct: false }).unwrap();
    measurement_files(dir, seed).unwrap();
    let key = dir.join("campaign.key");
    Key::generate_to_file(&key).unwrap();
    key
}

/// Per arm: (records, matched exposure records, matched people, sum), from
/// truth.csv (the pairs sharing a valid identifier) minus excluded ids.
pub fn plaintext(
    dir: &Path,
    opted_out: &BTreeSet<String>,
    suppressed: &BTreeSet<String>,
) -> BTreeMap<String, [u64; 4]> {
    let arms: HashMap<String, String> =
        csv_rows(&dir.join("exposures.csv")).into_iter().map(|r| (r[0].clone(), r[3].clone())).collect();
    let values: HashMap<String, u64> =
        csv_rows(&dir.join("outcomes.csv")).into_iter().map(|r| (r[0].clone(), r[3].parse().unwrap())).collect();
    let mut out: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    for (id, arm) in &arms {
        if !suppressed.contains(id) {
            out.entry(arm.clone()).or_default()[0] += 1;
        }
    }
    let mut matched: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    for pair in csv_rows(&dir.join("truth.csv")) {
        let (partner, member) = (&pair[0], &pair[1]);
        if values.contains_key(member) && !opted_out.contains(member) && !suppressed.contains(partner) {
            let entry = matched.entry(arms[partner].clone()).or_default();
            entry.0.insert(partner.clone());
            entry.1.insert(member.clone());
        }
    }
    for (arm, (records, people)) in matched {
        let line = out.get_mut(&arm).unwrap();
        line[1] = records.len() as u64;
        line[2] = people.len() as u64;
        line[3] = people.iter().map(|m| values[m]).sum();
    }
    out
}
