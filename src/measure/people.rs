//! Who is one person in a measurement input: outcome files have one row per
//! purchase and exposure files one row per impression, so a person is every record
//! linked to another by a shared identifier (a token) or, when the file has an id
//! column, by the same record id — transitively.
//!
//! Opt-outs and suppressions apply to the person, not the row: records are linked
//! first, flagged or not, and a person with any flagged record is left out whole, so
//! an opted-out member's other rows (a phone-only row, a row with the same id) are
//! never sent. Linking is transitive, so a shared identifier (a household phone) can
//! take a second person out with the first: that errs on the side of the opt-out.
//!
//! Invariant: [`People::of`] puts every record of a person without a flagged record
//! in exactly one person, and a token in exactly one person, so no identifier is sent
//! twice and no record is counted twice; persons are listed in the order of their
//! first record. No token of a person with a flagged record appears anywhere.

use std::collections::{HashMap, HashSet};

use crate::records::RecordSet;
use crate::token::Token;

/// The persons of a record set.
#[derive(Debug)]
pub struct People {
    /// Per person: its records, in file order.
    pub records: Vec<Vec<u32>>,
    /// Per person: its distinct tokens, in file order.
    pub tokens: Vec<Vec<Token>>,
    /// Records that joined a person an earlier record started (kept persons only).
    pub records_merged: u64,
    /// Persons left out because one of their records is flagged.
    pub people_excluded: u64,
    /// Records not flagged themselves, left out with a person that has a flagged one.
    pub records_excluded_with_person: u64,
}

impl People {
    /// Groups the records of `records` into persons and leaves out every person with
    /// a record flagged in `excluded` (empty: none is).
    pub fn of(records: &RecordSet, excluded: &[bool]) -> People {
        let n = records.len();
        let is_out = |r: usize| excluded.get(r).copied().unwrap_or(false);
        let mut links = Links::new(n);
        let mut first_with_token: HashMap<Token, u32> = HashMap::with_capacity(records.entries().len());
        for e in records.entries() {
            let first = *first_with_token.entry(e.token).or_insert(e.record);
            links.join(first, e.record);
        }
        if records.has_id_column() {
            let mut first_with_id: HashMap<&str, u32> = HashMap::new();
            for r in 0..n as u32 {
                let id = records.id(r);
                if !id.is_empty() {
                    let first = *first_with_id.entry(id).or_insert(r);
                    links.join(first, r);
                }
            }
        }
        let roots: Vec<u32> = (0..n as u32).map(|r| links.root(r)).collect();
        let flagged_roots: HashSet<u32> = (0..n).filter(|&r| is_out(r)).map(|r| roots[r]).collect();
        // Persons in the order of their first record.
        let mut person_of_root: HashMap<u32, usize> = HashMap::new();
        let mut people = People {
            records: Vec::new(),
            tokens: Vec::new(),
            records_merged: 0,
            people_excluded: flagged_roots.len() as u64,
            records_excluded_with_person: 0,
        };
        let mut person_of_record = vec![usize::MAX; n];
        for r in 0..n as u32 {
            let root = roots[r as usize];
            if flagged_roots.contains(&root) {
                if !is_out(r as usize) {
                    people.records_excluded_with_person += 1;
                }
                continue;
            }
            let person = *person_of_root.entry(root).or_insert_with(|| {
                people.records.push(Vec::new());
                people.tokens.push(Vec::new());
                people.records.len() - 1
            });
            if !people.records[person].is_empty() {
                people.records_merged += 1;
            }
            people.records[person].push(r);
            person_of_record[r as usize] = person;
        }
        let mut placed: HashSet<Token> = HashSet::with_capacity(first_with_token.len());
        for e in records.entries() {
            let person = person_of_record[e.record as usize];
            if person != usize::MAX && placed.insert(e.token) {
                people.tokens[person].push(e.token);
            }
        }
        people
    }

    /// How many persons.
    pub fn len(&self) -> usize {
        self.records.len()
    }
}

/// Union-find over record indexes (union by size, path halving).
struct Links {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl Links {
    fn new(n: usize) -> Links {
        Links { parent: (0..n as u32).collect(), size: vec![1; n] }
    }

    fn root(&mut self, mut r: u32) -> u32 {
        while self.parent[r as usize] != r {
            let grand = self.parent[self.parent[r as usize] as usize];
            self.parent[r as usize] = grand;
            r = grand;
        }
        r
    }

    fn join(&mut self, a: u32, b: u32) {
        let (mut a, mut b) = (self.root(a), self.root(b));
        if a == b {
            return;
        }
        if self.size[a as usize] < self.size[b as usize] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b as usize] = a;
        self.size[a as usize] += self.size[b as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;
    use crate::normalize::{Normalizer, Profile};
    use crate::records::{self, Mode, ReadOptions};
    use crate::token::Tokenizer;

    fn read(text: &str) -> RecordSet {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        std::fs::write(&path, text).unwrap();
        let options = ReadOptions::new(Normalizer::new(Profile::IdmatchV1, None), Mode::Export);
        records::read(&path, &Tokenizer::new(&Key::from_bytes([7; 32])), options).unwrap()
    }

    #[test]
    fn records_linked_by_identifier_or_id_are_one_person() {
        // a: rows 0, 1 (same email), 3 (same id as 1, new phone), 4 (shares 3's
        // phone); b: row 2; c: row 5 (no identifier, its own person).
        let set = read(
            "id,email,phone\n\
             1,ann@example.com,\n\
             2,ann@example.com,\n\
             3,bob@example.com,\n\
             2,,+14155552671\n\
             9,,+1 415 555 2671\n\
             7,,\n",
        );
        let people = People::of(&set, &[]);
        assert_eq!(people.records, vec![vec![0, 1, 3, 4], vec![2], vec![5]]);
        assert_eq!(people.tokens.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1, 0]);
        assert_eq!(people.records_merged, 3);
        assert_eq!((people.people_excluded, people.records_excluded_with_person), (0, 0));
        // Flagging row 3 (an opt-out of its phone) leaves out all of a: its email
        // rows and the row that shares its phone are never sent either.
        let people = People::of(&set, &[false, false, false, true, false, false]);
        assert_eq!(people.records, vec![vec![2], vec![5]]);
        assert_eq!(people.tokens.iter().map(Vec::len).collect::<Vec<_>>(), [1, 0]);
        assert_eq!((people.people_excluded, people.records_excluded_with_person), (1, 3));
    }

    #[test]
    fn without_an_id_column_only_identifiers_link() {
        let set = read("email\nann@example.com\nann@example.com\nbob@example.com\n");
        let people = People::of(&set, &[]);
        assert_eq!(people.records, vec![vec![0, 1], vec![2]]);
    }
}
