//! Sharding (issue 21): `idmatch match --shards N` gives outputs identical byte for
//! byte to the unsharded match, and `idmatch shard` writes the shard files of
//! docs/PROTOCOL.md §13 with opt-outs applied first, atomically.

mod common;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use common::{idmatch, keygen, local_match, text};
use idmatch::key::Key;
use idmatch::normalize::Profile;
use idmatch::shard::file::{Expected, ShardReader};
use idmatch::shard::split::shard_file_name;
use idmatch::shard::{ShardFileError, ShardRule};
use idmatch::token::KeyFingerprint;

/// An owner's and a partner's file with everything the outputs must carry through
/// sharding: identifiers repeated across records (also between a kept and an
/// opted-out record), rejected identifiers, bad rows, records matching by email and
/// by phone, plus an opt-out list and a suppression list.
fn inputs(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let mut owner = String::from("id,email,phone\n");
    for i in 0..1500u32 {
        if i % 97 == 50 {
            owner += &format!("m{i},too,many,fields\n");
            continue;
        }
        let email = match i {
            _ if i % 13 == 0 => String::new(),
            _ if i % 11 == 0 => format!("not-an-email{i}"),
            // The previous record's address, spelled differently.
            _ if i % 7 == 0 => format!(" USER{}@Example.com ", i - 1),
            _ => format!("user{i}@example.com"),
        };
        let phone = match i {
            _ if i % 17 == 0 => "12".to_owned(),
            _ if i % 3 == 0 => format!("+1 415 555 {:04}", i),
            _ => String::new(),
        };
        owner += &format!("m{i},{email},{phone}\n");
    }
    let mut partner = String::from("id,email,phone\n");
    for i in 0..1200u32 {
        let j = 2 * i;
        let email = if i % 5 == 4 { format!("user{}@example.com", j - 2) } else { format!("user{j}@example.com") };
        let phone = match i % 4 {
            0 => format!("+1 (415) 555-{j:04}"),
            2 => format!("+1 (415) 555-{:04}", j + 3),
            _ => String::new(),
        };
        let email = if i % 19 == 0 { "broken@@example.com".to_owned() } else { email };
        partner += &format!("p{i},{email},{phone}\n");
    }
    // m21 holds user20's address, as m20 does: its opt-out leaves a kept copy.
    let optouts = "id,email\nm21,\nm300,\n,user40@example.com\n,USER600@example.com\n";
    let suppress = "id,email\np7,\n,user100@example.com\n";
    let write = |name: &str, content: &str| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    (
        write("owner.csv", &owner),
        write("partner.csv", &partner),
        write("optouts.csv", optouts),
        write("suppress.csv", suppress),
    )
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

#[test]
fn sharded_matches_equal_the_unsharded_match_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let (owner, partner, optouts, suppress) = inputs(dir.path());
    let lists = ["--optouts", optouts.to_str().unwrap(), "--suppress", suppress.to_str().unwrap(), "--write-rejects"];
    for (reveal, protocol) in
        [("both", "auto"), ("both", "ecdh"), ("partner", "ecdh"), ("owner", "oprf"), ("count", "ecdh")]
    {
        let run = |name: &str, shards: Option<&str>| {
            let out_dir = dir.path().join(format!("{reveal}-{protocol}-{name}"));
            let mut extra = vec!["--reveal", reveal, "--protocol", protocol];
            extra.extend(lists);
            if let Some(n) = shards {
                extra.extend(["--shards", n]);
            }
            let out = local_match(&owner, &partner, &key, &out_dir, &extra);
            assert!(out.status.success(), "{reveal}/{protocol}/{name}: {}", text(&out.stderr));
            if shards == Some("auto") {
                // A small input: one shard, and the plan said on standard error.
                assert!(text(&out.stderr).contains("--shards auto: 1 shards of up to "), "{}", text(&out.stderr));
            }
            files(&out_dir)
        };
        let unsharded = run("unsharded", None);
        let summary = &unsharded.iter().find(|(name, _)| name == "summary.json").unwrap().1;
        let summary: serde_json::Value = serde_json::from_slice(summary).unwrap();
        // The data exercise what sharding must carry through.
        assert!(summary["owner"]["duplicate_identifiers"].as_u64().unwrap() > 100, "{summary}");
        assert!(summary["owner"]["excluded_records"].as_u64().unwrap() >= 4, "{summary}");
        assert!(summary["partner"]["excluded_records"].as_u64().unwrap() >= 2, "{summary}");
        assert!(summary["owner"]["bad_rows"]["wrong_field_count"].as_u64().unwrap() > 10, "{summary}");
        assert!(summary["intersection"].as_u64().unwrap() > 300, "{summary}");
        if reveal == "both" {
            let matches = &unsharded.iter().find(|(name, _)| name == "partner_matches.csv").unwrap().1;
            assert!(text(matches).contains("email;phone"), "some records match by both kinds");
        }
        for shards in ["1", "3", "16", "auto"] {
            let sharded = run(&format!("shards{shards}"), Some(shards));
            assert_eq!(
                sharded.iter().map(|f| &f.0).collect::<Vec<_>>(),
                unsharded.iter().map(|f| &f.0).collect::<Vec<_>>(),
                "{reveal}/{protocol}: the same files, and no scratch file left"
            );
            for ((name, got), (_, want)) in sharded.iter().zip(&unsharded) {
                assert!(got == want, "{reveal}/{protocol}, {shards} shards: {name} differs");
            }
        }
    }
}

#[test]
fn a_repeated_id_is_refused_as_the_unsharded_match_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let (_, partner, _, _) = inputs(dir.path());
    let mut owner = String::from("id,email\n");
    for i in 0..500 {
        let id = match i {
            321 => "m17".to_owned(),
            400 => "m5".to_owned(),
            _ => format!("m{i}"),
        };
        owner += &format!("{id},user{i}@example.com\n");
    }
    let owner = common::write(dir.path(), "repeats.csv", &owner);
    let unsharded = local_match(&owner, &partner, &key, &dir.path().join("a"), &[]);
    let sharded = local_match(&owner, &partner, &key, &dir.path().join("b"), &["--shards", "4"]);
    assert_eq!(unsharded.status.code(), Some(1));
    assert_eq!(sharded.status.code(), Some(1));
    let stderr = text(&sharded.stderr);
    assert!(stderr.contains("line 323") && stderr.contains("line 19"), "{stderr}");
    assert_eq!(stderr, text(&unsharded.stderr));
    assert!(!dir.path().join("b").exists(), "a failed run leaves no output directory");
}

/// `idmatch shard` of `input` with `extra` arguments.
fn split(key: &str, input: &Path, out_dir: &Path, shards: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "shard",
        "--key-file",
        key,
        "--input",
        input.to_str().unwrap(),
        "--out-dir",
        out_dir.to_str().unwrap(),
        "--shards",
        shards,
    ];
    args.extend(extra);
    idmatch(&args)
}

/// Reads every entry of shard `index` of `shards` in `dir`.
fn read_shard(
    dir: &Path,
    key: &Key,
    shards: u32,
    index: u32,
) -> Result<Vec<(idmatch::shard::file::ShardEntry, String)>, ShardFileError> {
    let fingerprint = KeyFingerprint::of(key);
    let expected = Expected { fingerprint: &fingerprint, profile: Profile::IdmatchV1, shards, index };
    let mut reader = ShardReader::open(&dir.join(shard_file_name(index, shards)), expected)?;
    let (mut entries, mut id) = (Vec::new(), String::new());
    while let Some(entry) = reader.next_entry(&mut id)? {
        entries.push((entry, id.clone()));
    }
    reader.finish()?;
    Ok(entries)
}

#[test]
fn idmatch_shard_writes_keyed_shards_without_opted_out_records() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = keygen(dir.path());
    let key = Key::load(Path::new(&key_file)).unwrap();
    let (owner, _, optouts, _) = inputs(dir.path());
    let out_dir = dir.path().join("shards");
    let out = split(&key_file, &owner, &out_dir, "5", &["--optouts", optouts.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("records excluded by opt-outs: 4"), "{stdout}");

    let rule = ShardRule::new(&key, NonZeroU32::new(5).unwrap());
    let mut ids = std::collections::BTreeSet::new();
    let mut entries = 0;
    for index in 0..5 {
        let path = out_dir.join(shard_file_name(index, 5));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        for (entry, id) in read_shard(&out_dir, &key, 5, index).unwrap() {
            assert_eq!(rule.shard_of(&entry.token), index, "every token is in its shard");
            ids.insert(id);
            entries += 1;
        }
    }
    for opted_out in ["m21", "m300", "m40", "m600"] {
        assert!(!ids.contains(opted_out), "{opted_out} reached a shard");
    }
    assert!(ids.contains("m20") && ids.contains("m601") && entries > 1500, "{entries}");

    // Another key, another N, another shard, a truncated file: each refused.
    let other = Key::from_bytes([9; 32]);
    let err = read_shard(&out_dir, &other, 5, 0).unwrap_err();
    assert!(err.to_string().contains("another campaign key"), "{err}");
    std::fs::copy(out_dir.join(shard_file_name(2, 5)), out_dir.join(shard_file_name(2, 6))).unwrap();
    let err = read_shard(&out_dir, &key, 6, 2).unwrap_err();
    assert!(err.to_string().contains("one of 5 shards, not of 6"), "{err}");
    let bytes = std::fs::read(out_dir.join(shard_file_name(3, 5))).unwrap();
    std::fs::write(out_dir.join(shard_file_name(3, 5)), &bytes[..bytes.len() - 7]).unwrap();
    let err = read_shard(&out_dir, &key, 5, 3).unwrap_err();
    assert!(matches!(err, ShardFileError::Truncated { .. }) && err.to_string().contains("truncated"), "{err}");

    // A failed split leaves the directory as it was; a new split replaces the old one.
    let broken = common::write(dir.path(), "broken.csv", "id,email\nm1,\"a@example.com\nm2,b@example.com\n");
    let before = files(&out_dir);
    let out = split(&key_file, &broken, &out_dir, "3", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("never closed"), "{}", text(&out.stderr));
    assert!(files(&out_dir) == before, "a failed split changes nothing");
    let out = split(&key_file, &owner, &out_dir, "3", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let names: Vec<String> = files(&out_dir).into_iter().map(|f| f.0).collect();
    assert_eq!(names, (0..3).map(|i| shard_file_name(i, 3)).collect::<Vec<_>>());
}

#[test]
fn idmatch_shard_and_sharded_matches_take_an_optout_store() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let store_key = dir.path().join("store.key");
    assert!(idmatch(&["keygen", "--out", store_key.to_str().unwrap()]).status.success());
    let db = dir.path().join("optouts.db");
    let (owner, partner, optouts, _) = inputs(dir.path());
    let out = idmatch(&[
        "optout",
        "import",
        optouts.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--store-key",
        store_key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let store = ["--optout-db", db.to_str().unwrap(), "--store-key", store_key.to_str().unwrap()];

    let (by_list, by_store) = (dir.path().join("list"), dir.path().join("store"));
    assert!(split(&key, &owner, &by_list, "4", &["--optouts", optouts.to_str().unwrap()]).status.success());
    let out = split(&key, &owner, &by_store, "4", &store);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(files(&by_list) == files(&by_store), "the store excludes what the list excludes");

    let unsharded = local_match(&owner, &partner, &key, &dir.path().join("a"), &store);
    let mut sharded_args = store.to_vec();
    sharded_args.extend(["--shards", "4"]);
    let sharded = local_match(&owner, &partner, &key, &dir.path().join("b"), &sharded_args);
    assert!(unsharded.status.success() && sharded.status.success(), "{}", text(&sharded.stderr));
    assert!(files(&dir.path().join("a")) == files(&dir.path().join("b")));
}
