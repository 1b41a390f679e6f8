//! `idmatch measure` end to end: exact figures against a plaintext computation on
//! synthetic data (noise off), opt-outs, suppressions, suppressed groups, rejects,
//! reproducible noise, and the command line.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::measure::{csv_rows, plaintext, synth};
use idmatch::key::Key;
use idmatch::measure::Learner;
use idmatch::measure::local::{self, MeasureOptions, MeasurementReport};
use idmatch::measure::stats::{Figure, Noise};
use idmatch::normalize::{Normalizer, Profile, Region};
use idmatch::optout::BadRows;
use idmatch::records::ColumnSpec;

fn options(dir: &Path, key: PathBuf, min_aggregate: u64) -> MeasureOptions {
    MeasureOptions {
        owner: dir.join("outcomes.csv"),
        partner: dir.join("exposures.csv"),
        key_file: key,
        value_column: "value".into(),
        group_column: Some("arm".into()),
        normalizer: Normalizer::new(Profile::IdmatchV1, Some(Region::US)),
        columns: ColumnSpec::default(),
        optouts: None,
        optout_store: None,
        suppress: None,
        bad_list_rows: BadRows::Refuse,
        out_dir: dir.join("out"),
        min_aggregate,
        noise: None,
        seed: None,
        learner: Learner::Owner,
        write_rejects: false,
        progress: None,
    }
}

/// A temporary directory with a fresh campaign key in it.
fn keyed_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("campaign.key");
    Key::generate_to_file(&key).unwrap();
    (dir, key)
}

fn check(report: &MeasurementReport, expected: &BTreeMap<String, [u64; 4]>) {
    assert_eq!(report.figures.groups.len(), expected.len());
    for g in &report.figures.groups {
        let [records, matched, people, sum] = expected[&g.group];
        assert_eq!(g.group_size, records, "{}", g.group);
        assert_eq!(g.matched_exposure_records, Figure::Value(matched), "{}", g.group);
        assert_eq!(g.matched_outcome_people, Figure::Value(people), "{}", g.group);
        assert_eq!(g.sum, Figure::Value(sum), "{}", g.group);
    }
}

#[test]
fn figures_equal_the_plaintext_truth_of_synth() {
    let dir = tempfile::tempdir().unwrap();
    let key = synth(dir.path(), 4000, 11);
    let report = local::run(&options(dir.path(), key, 100)).unwrap();
    let expected = plaintext(dir.path(), &BTreeSet::new(), &BTreeSet::new());
    check(&report, &expected);
    // synth's people have both an email and a phone in most rows: each matched pair
    // counts once however many identifiers it shares.
    assert!(expected["test"][2] > 250 && expected["control"][2] > 250, "{expected:?}");
    let lift = report.figures.lift.as_ref().unwrap();
    let (t, c) = (&expected["test"], &expected["control"]);
    let (pt, pc) = (t[2] as f64 / t[0] as f64, c[2] as f64 / c[0] as f64);
    assert!((lift.absolute - (pt - pc)).abs() < 1e-12);
    assert!(lift.ci95[0] < lift.absolute && lift.absolute < lift.ci95[1]);
    // Recall against the truth is complete: no identifier is shared by two synth
    // people, so every record is its own person.
    assert_eq!((report.owner.records_merged, report.partner.records_merged), (0, 0));
    let json = std::fs::read_to_string(dir.path().join("out/measurement.json")).unwrap();
    assert!(!json.contains('@') && !json.contains("\"m0") && !json.contains("\"p0"), "{json}");
    // The same figures when only the partner learns: it decrypts them itself from
    // the owner's shares of its masked sums.
    let mut partner_only = options(dir.path(), dir.path().join("campaign.key"), 100);
    partner_only.learner = Learner::Partner;
    let report = local::run(&partner_only).unwrap();
    assert_eq!(report.learner, "partner");
    check(&report, &expected);
    assert!(report.figures.lift.is_some());
}

#[test]
fn optouts_suppressions_and_small_groups() {
    let dir = tempfile::tempdir().unwrap();
    let key = synth(dir.path(), 3000, 12);
    // Opt out every third converting member (by email) and suppress every fourth partner row (by id).
    let outcomes = csv_rows(&dir.path().join("outcomes.csv"));
    let exposures = csv_rows(&dir.path().join("exposures.csv"));
    let opted: Vec<&Vec<String>> = outcomes.iter().step_by(3).collect();
    let mut optouts = String::from("id\n");
    opted.iter().for_each(|r| optouts += &format!("{}\n", r[0]));
    std::fs::write(dir.path().join("optouts.csv"), optouts).unwrap();
    let suppressed: BTreeSet<String> = exposures.iter().step_by(4).map(|r| r[0].clone()).collect();
    let mut list = String::from("id\n");
    suppressed.iter().for_each(|id| list += &format!("{id}\n"));
    std::fs::write(dir.path().join("suppress.csv"), list).unwrap();

    let mut o = options(dir.path(), key, 1);
    o.optouts = Some(dir.path().join("optouts.csv"));
    o.suppress = Some(dir.path().join("suppress.csv"));
    let report = local::run(&o).unwrap();
    let opted: BTreeSet<String> = opted.iter().map(|r| r[0].clone()).collect();
    check(&report, &plaintext(dir.path(), &opted, &suppressed));
    assert_eq!(report.owner.excluded_records, opted.len() as u64);
    assert_eq!(report.partner.excluded_records, suppressed.len() as u64);

    // The same opt-outs from an opt-out store (`--optout-db`): the same figures.
    let (db, store_key) = (dir.path().join("optouts.db"), dir.path().join("store.key"));
    Key::generate_to_file(&store_key).unwrap();
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_idmatch")).args(args).output().unwrap();
    let import = run(&[
        "optout",
        "import",
        dir.path().join("optouts.csv").to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--store-key",
        store_key.to_str().unwrap(),
    ]);
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));
    let mut from_store = o.clone();
    from_store.optouts = None;
    from_store.optout_store = Some((db.clone(), store_key.clone()));
    let same = local::run(&from_store).unwrap();
    assert_eq!(same.figures.groups, report.figures.groups);
    assert_eq!(same.owner.excluded_records, opted.len() as u64);
    // Both at once is refused: which one is meant?
    from_store.optouts = Some(dir.path().join("optouts.csv"));
    assert!(matches!(local::run(&from_store), Err(local::MeasureFailure::TwoOptOutSources)));

    // A minimum above every group: everything but the group sizes is "<N>".
    o.min_aggregate = 1_000_000;
    let report = local::run(&o).unwrap();
    assert!(
        report.figures.groups.iter().all(|g| g.sum == Figure::Suppressed(1_000_000) && g.conversion_rate.is_none())
    );
    assert!(report.figures.lift.is_none());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/measurement.json")).unwrap()).unwrap();
    assert_eq!(json["groups"][0]["matched_outcome_people"], "<1000000");
}

#[test]
fn bad_values_and_groups_are_counted_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    Key::generate_to_file(&key).unwrap();
    std::fs::write(
        dir.path().join("outcomes.csv"),
        "id,email,value\n1,a@example.com,12\n2,b@example.com,-3\n3,c@example.com,abc\n4,d@example.com,4294967297\n5,e@example.com,\n6,f@example.com,4294967296\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("exposures.csv"),
        "id,email,arm\n1,a@example.com,test\n2,f@example.com,test\n3,g@example.com,\n4,b@example.com,control\n",
    )
    .unwrap();
    let mut o = options(dir.path(), key, 1);
    o.write_rejects = true;
    let report = local::run(&o).unwrap();
    let bad: Vec<(&str, u64)> = report.owner.read.bad_rows.iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(bad, [("bad_value", 2), ("missing_value", 1), ("value_too_large", 1)]);
    assert_eq!(report.partner.read.bad_rows.get("missing_group"), Some(&1));
    let rejects = std::fs::read_to_string(dir.path().join("out/owner_rejects.csv")).unwrap();
    assert_eq!(
        rejects,
        "line,column,reason\n3,value,bad_value\n4,value,bad_value\n5,value,value_too_large\n6,value,missing_value\n"
    );
    let test = report.figures.groups.iter().find(|g| g.group == "test").unwrap();
    assert_eq!(test.sum, Figure::Value(12 + (1 << 32)));
    assert_eq!(test.matched_outcome_people, Figure::Value(2));
    let control = report.figures.groups.iter().find(|g| g.group == "control").unwrap();
    assert_eq!(control.matched_outcome_people, Figure::Suppressed(1));
}

#[test]
fn noise_is_reproducible_with_a_seed_recorded_and_needs_an_epsilon_in_range() {
    let dir = tempfile::tempdir().unwrap();
    let key = synth(dir.path(), 2000, 13);
    let mut o = options(dir.path(), key, 100);
    o.noise = Some(Noise { epsilon: 1.0, clip: 20_000 });
    o.seed = Some(5);
    let a = local::run(&o).unwrap();
    let b = local::run(&o).unwrap();
    assert_eq!(a.figures.groups, b.figures.groups);
    assert_eq!(a.epsilon, Some(1.0));
    assert!(a.owner.clipped_values > 0);
    // The seed is recorded, so nobody mistakes these figures for a release.
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(o.out_dir.join("measurement.json")).unwrap()).unwrap();
    assert_eq!(written["noise_seed"], 5);
    o.seed = None;
    assert_eq!(local::run(&o).unwrap().noise_seed, None);
    for epsilon in [0.0, -1.0, f64::NAN, 1e-9, 1e9] {
        o.noise = Some(Noise { epsilon, clip: 20_000 });
        assert!(matches!(local::run(&o), Err(local::MeasureFailure::BadNoise)), "{epsilon}");
    }
}

#[test]
fn the_command_line_prints_a_table_and_writes_measurement_json() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = Command::new(env!("CARGO_BIN_EXE_idmatch"))
        .args(["synth", "--rows", "1500", "--seed", "3", "--measure", "--out-dir"])
        .arg(d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Key::generate_to_file(&d.join("campaign.key")).unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_idmatch"))
            .arg("measure")
            .arg("--owner")
            .arg(d.join("outcomes.csv"))
            .arg("--partner")
            .arg(d.join("exposures.csv"))
            .args(["--value-col", "value", "--group-col", "arm", "--region", "US", "--key-file"])
            .arg(d.join("campaign.key"))
            .arg("--out-dir")
            .arg(d.join("out"))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&["--learner", "both", "--min-aggregate", "50"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("matched_people") && stdout.contains("lift (test vs control)"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/measurement.json")).unwrap()).unwrap();
    assert_eq!(json["learner"], "both");
    assert_eq!(json["groups"][0]["group"], "control");
    let out = run(&["--min-aggregate", "100000"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("<100000"));
    // --epsilon without --clip-value is a usage error.
    let out = run(&["--epsilon", "1"]);
    assert_eq!(out.status.code(), Some(2));
}

/// One row per purchase and per impression, as outcome and exposure data come: a
/// person's purchases are summed over all its rows (linked by id or by a shared
/// identifier), and a person exposed in both arms is left out of both and reported
/// — checked against a plaintext join of the same rows (issue 20, item 5).
#[test]
fn repeated_purchases_are_summed_and_a_person_in_both_arms_is_left_out() {
    let (dir, key) = keyed_dir();
    let d = dir.path();
    // 300 customers with 3 purchases of 1,000 each (the third row of each by phone
    // only, linked by the customer id), plus 200 customers with one purchase of 7.
    let mut outcomes = String::from("id,email,phone,value\n");
    for c in 0..300 {
        outcomes += &format!("c{c},buyer{c}@example.com,,1000\n");
        outcomes += &format!("c{c},buyer{c}@example.com,,1000\n");
        outcomes += &format!("c{c},,+1415555{c:04},1000\n");
    }
    for c in 300..500 {
        outcomes += &format!("c{c},buyer{c}@example.com,,7\n");
    }
    std::fs::write(d.join("outcomes.csv"), outcomes).unwrap();
    // Exposures: several impressions per person. test: customers 0..200 and
    // 300..400 (by email, twice each); control: 200..300 and 400..500 (by phone for
    // the first group, email otherwise); one more test impression carries customer
    // 299's email and phone, which links it to its control impression: both arms.
    let mut exposures = String::from("id,email,phone,arm\n");
    for c in (0..200).chain(300..400) {
        for i in 0..2 {
            exposures += &format!("x{c}-{i},buyer{c}@example.com,,test\n");
        }
    }
    for c in 200..300 {
        exposures += &format!("y{c},,+1415555{c:04},control\n");
    }
    for c in 400..500 {
        exposures += &format!("y{c},buyer{c}@example.com,,control\n");
    }
    exposures += "z299,buyer299@example.com,+14155550299,test\n";
    std::fs::write(d.join("exposures.csv"), exposures).unwrap();

    let report = local::run(&options(d, key, 50)).unwrap();
    let figures = |group: &str| report.figures.groups.iter().find(|g| g.group == group).unwrap().clone();
    let (test, control) = (figures("test"), figures("control"));
    // test: 200 three-purchase customers (600,000) + 100 one-purchase (700).
    assert_eq!(test.group_size, 300);
    assert_eq!(test.matched_outcome_people, Figure::Value(300));
    assert_eq!(test.sum, Figure::Value(200 * 3000 + 100 * 7));
    // control: 99 three-purchase customers (299 is in both arms: out) + 100 one-purchase.
    assert_eq!(control.group_size, 199);
    assert_eq!(control.matched_outcome_people, Figure::Value(199));
    assert_eq!(control.sum, Figure::Value(99 * 3000 + 100 * 7));
    assert_eq!(report.owner.people, 500);
    assert_eq!(report.owner.records_merged, 600);
    assert_eq!(report.partner.people_in_several_groups, 1);
    assert_eq!(report.partner.people, 500);
}

/// Opt-outs apply to the person, not the row: customer 250 opts out by email, and
/// its phone-only purchase row (linked by its id) — the row that matches its control
/// impression — is left out with it, so control neither counts nor sums it. The
/// suppression of one exposure row likewise takes the person's other impression out.
#[test]
fn an_opt_out_leaves_out_every_record_of_the_person() {
    let (dir, key) = keyed_dir();
    let d = dir.path();
    let mut outcomes = String::from("id,email,phone,value\n");
    for c in 0..300 {
        outcomes += &format!("c{c},buyer{c}@example.com,,1000\n");
        outcomes += &format!("c{c},,+1415555{c:04},1000\n");
    }
    std::fs::write(d.join("outcomes.csv"), outcomes).unwrap();
    // test: 0..150 by email; control: 150..300 by phone, customer 10 twice in test
    // (once by email, once by id only).
    let mut exposures = String::from("id,email,phone,arm\n");
    for c in 0..150 {
        exposures += &format!("x{c},buyer{c}@example.com,,test\n");
    }
    exposures += "x10,,,test\n";
    for c in 150..300 {
        exposures += &format!("y{c},,+1415555{c:04},control\n");
    }
    std::fs::write(d.join("exposures.csv"), exposures).unwrap();
    std::fs::write(d.join("optouts.csv"), "email\nBuyer250@Example.com\n").unwrap();
    std::fs::write(d.join("suppress.csv"), "email\nbuyer10@example.com\n").unwrap();

    let mut o = options(d, key, 50);
    o.optouts = Some(d.join("optouts.csv"));
    o.suppress = Some(d.join("suppress.csv"));
    let report = local::run(&o).unwrap();
    let figures = |group: &str| report.figures.groups.iter().find(|g| g.group == group).unwrap().clone();
    let (test, control) = (figures("test"), figures("control"));
    // Per row, customer 250's phone row would still match y250 (149 people, 150,000).
    assert_eq!(control.group_size, 150);
    assert_eq!(control.matched_outcome_people, Figure::Value(149));
    assert_eq!(control.sum, Figure::Value(149 * 2000));
    // Per row, x10's id-only impression would still count in test's size.
    assert_eq!(test.group_size, 149);
    assert_eq!(test.matched_outcome_people, Figure::Value(149));
    assert_eq!(test.sum, Figure::Value(149 * 2000));
    let owner = &report.owner;
    assert_eq!((owner.excluded_records, owner.people_excluded, owner.records_excluded_with_person), (1, 1, 1));
    assert_eq!((owner.records_after_exclusion, owner.people, owner.bundles_sent), (598, 299, 299));
    let partner = &report.partner;
    assert_eq!((partner.excluded_records, partner.people_excluded, partner.records_excluded_with_person), (1, 1, 1));
    assert_eq!(partner.records_after_exclusion, 299);
    let json = std::fs::read_to_string(d.join("out/measurement.json")).unwrap();
    assert!(json.contains("\"records_excluded_with_person\": 1"), "{json}");
}

/// An output directory that cannot be created fails the run before any input is
/// read (issue 20, item 7): here the inputs do not even exist, and the error is
/// the output's, with nothing written anywhere.
#[test]
fn an_unwritable_out_dir_fails_before_the_inputs_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a-file"), "not a directory").unwrap();
    let mut o = options(d, d.join("missing.key"), 1);
    o.owner = d.join("missing-outcomes.csv");
    o.out_dir = d.join("a-file").join("out");
    let err = local::run(&o).unwrap_err();
    assert!(matches!(err, local::MeasureFailure::Write { .. }), "{err}");
    assert!(err.to_string().contains("a-file"), "{err}");
    let entries: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries, ["a-file"]);
}
