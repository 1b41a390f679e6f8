//! One side of a measurement as its engine takes it: the owner's people with their
//! summed values ([`owner_people`]), the partner's exposures by group
//! ([`partner_exposures`]), and what was counted on the way ([`SideReport`]). The
//! local command (`measure::local`), the owner's server and the partner's client
//! build their inputs here, from a side read and filtered by `crate::prepare`.
//!
//! Invariant: a record flagged in `excluded` belongs to no person and no exposure, and
//! neither does any record linked to it ([`People`]): exclusion is per person. Both
//! are only counted ([`SideReport::excluded_records`],
//! [`SideReport::records_excluded_with_person`]).

use std::collections::HashSet;

use serde::Serialize;

use super::message::{MAX_BUNDLE, MAX_GROUPS};
use super::people::People;
use super::{Exposure, Person};
use crate::records::{MAX_VALUE, ReadStats, RecordSet};

/// The label of the one group used when the exposures have no group column.
pub const DEFAULT_GROUP: &str = "all";

/// More distinct groups in the exposures than a measurement supports.
#[derive(Debug, thiserror::Error)]
#[error("{0} groups in the exposure file; at most {MAX_GROUPS} are supported")]
pub struct TooManyGroups(pub usize);

/// One side's counts, as written to `measurement.json`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SideReport {
    /// The input file, as given.
    pub file: String,
    /// How the file was read (flattened).
    #[serde(flatten)]
    pub read: ReadStats,
    /// Records removed by opt-outs (owner) or suppressions (partner).
    pub excluded_records: u64,
    /// Persons left out because one of their records was excluded: an opted-out
    /// (owner) or suppressed (partner) person is left out with all its records.
    pub people_excluded: u64,
    /// Records not excluded themselves, left out with their person (a phone-only row
    /// of a member whose email opted out, say).
    pub records_excluded_with_person: u64,
    /// Records left after exclusion of records and of their persons.
    pub records_after_exclusion: u64,
    /// Persons: records linked by a shared identifier or record id are one person
    /// (one row per purchase or impression).
    pub people: u64,
    /// Records that joined a person an earlier record started.
    pub records_merged: u64,
    /// Bundles sent: persons with at least one identifier, less those left out below.
    pub bundles_sent: u64,
    /// Partner: persons whose records are in more than one group, left out of all.
    pub people_in_several_groups: u64,
    /// Persons with more than 16 distinct identifiers (a bundle's limit), left out.
    pub people_with_too_many_identifiers: u64,
    /// Owner: persons whose summed value was lowered to the clip value.
    pub clipped_values: u64,
}

/// The owner's input: one person per bundle, and the counts.
#[derive(Debug)]
pub struct OwnerSide {
    /// The persons sent, each with its tokens and summed value.
    pub people: Vec<Person>,
    /// The counts (`file` left empty for the caller to fill).
    pub report: SideReport,
}

/// The partner's input: its groups, their sizes, one exposure per person, and the
/// counts.
#[derive(Debug)]
pub struct PartnerSide {
    /// The group labels, sorted.
    pub labels: Vec<String>,
    /// People per group (with or without identifiers), in label order.
    pub group_people: Vec<u64>,
    /// The exposures sent.
    pub exposures: Vec<Exposure>,
    /// The counts (`file` left empty for the caller to fill).
    pub report: SideReport,
}

/// The owner's people: records linked by a shared identifier or id are one person
/// ([`People`]), whose value is the sum of its records' values (one row per purchase
/// counts every purchase), clipped to `clip` when given and to
/// [`MAX_VALUE`] in any case. A person with more
/// identifiers than a bundle holds is left out and counted.
pub fn owner_people(records: &RecordSet, excluded: &[bool], clip: Option<u64>) -> OwnerSide {
    let people = People::of(records, excluded);
    let mut report = side_report(records, excluded, &people);
    let mut sent = Vec::with_capacity(people.len());
    for (members, tokens) in people.records.iter().zip(people.tokens) {
        if tokens.is_empty() {
            continue;
        }
        if tokens.len() > usize::from(MAX_BUNDLE) {
            report.people_with_too_many_identifiers += 1;
            continue;
        }
        let total = members.iter().fold(0u64, |sum, &r| sum.saturating_add(records.value(r).unwrap_or(0)));
        let limit = clip.unwrap_or(MAX_VALUE).min(MAX_VALUE);
        if total > limit {
            report.clipped_values += 1;
        }
        sent.push(Person { tokens, value: total.min(limit) });
    }
    report.bundles_sent = sent.len() as u64;
    OwnerSide { people: sent, report }
}

fn side_report(records: &RecordSet, excluded: &[bool], people: &People) -> SideReport {
    let excluded_records = excluded.iter().filter(|&&x| x).count() as u64;
    SideReport {
        file: String::new(),
        read: records.stats().clone(),
        excluded_records,
        people_excluded: people.people_excluded,
        records_excluded_with_person: people.records_excluded_with_person,
        records_after_exclusion: records.len() as u64 - excluded_records - people.records_excluded_with_person,
        people: people.len() as u64,
        records_merged: people.records_merged,
        bundles_sent: 0,
        people_in_several_groups: 0,
        people_with_too_many_identifiers: 0,
        clipped_values: 0,
    }
}

/// The partner's groups (sorted labels), people per group, and exposures: one
/// exposure per person ([`People`]: records linked by a shared identifier or id),
/// in the group of its records. A person whose records are in different groups
/// (seen in both test and control) is left out of every group and counted: it would
/// otherwise bias the comparison. So are persons with more identifiers than a
/// bundle holds. Group sizes count the persons left in, with or without
/// identifiers, so sizes and matched counts are of the same unit.
pub fn partner_exposures(records: &RecordSet, excluded: &[bool]) -> Result<PartnerSide, TooManyGroups> {
    let label_of = |r: u32| records.group(r).unwrap_or(DEFAULT_GROUP);
    let people = People::of(records, excluded);
    let mut labels: Vec<String> =
        people.records.iter().flatten().map(|&r| label_of(r).to_owned()).collect::<HashSet<_>>().into_iter().collect();
    labels.sort();
    if labels.is_empty() {
        labels.push(DEFAULT_GROUP.to_owned());
    }
    if labels.len() > MAX_GROUPS {
        return Err(TooManyGroups(labels.len()));
    }
    let mut report = side_report(records, excluded, &people);
    let mut group_people = vec![0u64; labels.len()];
    let mut exposures = Vec::new();
    for (members, tokens) in people.records.iter().zip(people.tokens) {
        let label = label_of(members[0]);
        if members.iter().any(|&r| label_of(r) != label) {
            report.people_in_several_groups += 1;
            continue;
        }
        if tokens.len() > usize::from(MAX_BUNDLE) {
            report.people_with_too_many_identifiers += 1;
            continue;
        }
        let group = labels.iter().position(|l| l == label).unwrap_or(0);
        group_people[group] += 1;
        if !tokens.is_empty() {
            exposures.push(Exposure { tokens, group: group as u8 });
        }
    }
    report.bundles_sent = exposures.len() as u64;
    Ok(PartnerSide { labels, group_people, exposures, report })
}
