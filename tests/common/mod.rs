//! Helpers shared by the tests that run the `idmatch` binary.
#![allow(dead_code)] // each test crate uses its own subset

pub mod measure;
pub mod pki;
pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the binary with `args`.
pub fn idmatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idmatch")).args(args).output().unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The shipped examples directory.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// The shipped example key, copied with the mode 0600 that key files must have
/// (a checkout gives it 0644).
pub fn example_key(dir: &Path) -> String {
    let key = dir.join("example-campaign.key");
    std::fs::copy(examples().join("campaign.key"), &key).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    key.to_str().unwrap().to_owned()
}

/// A new key file in `dir` made by `idmatch keygen`.
pub fn keygen(dir: &Path) -> String {
    let key = dir.join("campaign.key");
    let out = idmatch(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    key.to_str().unwrap().to_owned()
}

/// `idmatch match` of two local files into `out_dir`, with `extra` arguments.
pub fn local_match(owner: &Path, partner: &Path, key: &str, out_dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "match",
        "--owner",
        owner.to_str().unwrap(),
        "--partner",
        partner.to_str().unwrap(),
        "--key-file",
        key,
        "--out-dir",
        out_dir.to_str().unwrap(),
    ];
    args.extend(extra);
    idmatch(&args)
}

/// `idmatch tokens` of `input` into `output`, with `extra` arguments.
pub fn tokens(key: &str, input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args =
        vec!["tokens", "--key-file", key, "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()];
    args.extend(extra);
    idmatch(&args)
}

/// Writes `text` to `dir/name`, private to its owner (mode 0600 on Unix), as the
/// secrets among a test's files (keys, tokens, TLS private keys) must be.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::io::Write;
    let path = dir.join(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(&path).unwrap().write_all(text.as_bytes()).unwrap();
    path
}
