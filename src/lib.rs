//! idmatch: privacy-preserving identifier matching.
//!
//! A consumer company (the **owner**) and a marketing partner (the **partner**) find
//! the members they have in common, by email address or phone number, without
//! either side learning the other's other identifiers. Identifiers are normalized
//! identically on both sides, turned into keyed tokens under a per-campaign key, and
//! compared by private set intersection: ECDH on ristretto255 (secure against a
//! partner that deviates from the protocol), or an OPRF engine (PaXoS PSI on an
//! actively secure OT extension: far faster, and also secure against a deviating
//! partner). Opt-outs are applied before
//! anything leaves the owner. Campaigns are measured over the intersection with
//! encrypted sums ([`measure`]).
//!
//! # Layout
//!
//! Data flows one way:
//! CSV or Parquet rows → [`records`] → [`normalize`] → [`token`] → [`optout`] filter →
//! [`prepare`]d side → [`psi`] (blind, exchange, re-blind) or [`measure`] → matches
//! or figures → output files.
//!
//! - [`normalize`]: named, versioned normalization profiles for emails and phones,
//!   with machine-readable reject reasons.
//! - [`key`]: 32-byte secret keys and key files (redacted, zeroized).
//! - [`token`]: keyed tokens, `HMAC-SHA256(key, kind ":" normalized)`.
//! - [`records`]: CSV/TSV and Parquet reading (parsing on one thread, normalizing
//!   and tokenizing on all cores; a Parquet file's rows, decoded by the `parquet`
//!   feature's column reader, go through the same per-row work as CSV rows) with
//!   column detection and a [`records::Mode`] per kind of file (match, export,
//!   outcomes, exposures, list), record sets of tokens, reject reports.
//! - [`optout`]: the opt-out source trait, the file-backed list, and the durable
//!   SQLite opt-out store (`optout::store`).
//! - [`psi`]: the matching engine: group operations, protocol messages, one state
//!   machine per role, the in-memory transport.
//! - [`prepare`]: one side from its file to its engine's input: read under the
//!   campaign tokenizer, checked against a required [`prepare::Filter`] (an opt-out
//!   list or store, a suppression list, or an explicit `Filter::None`), one exclusion
//!   flag per record, then the set to blind, the measurement's people or exposures
//!   (`measure::side`), or the token export. Every entry point (local match and
//!   measure, the partner's clients, the owner's server, `idmatch tokens`, the
//!   Python package) reads its sides through it.
//! - [`local_match`]: `idmatch match` on two local files, end to end, in memory or
//!   out of core shard by shard (`local_match::sharded`, `--shards`).
//! - [`shard`]: the keyed partition into shards (docs/PROTOCOL.md §13), the shard
//!   files, and the streaming split (`idmatch shard`, the sharded local match).
//! - [`measure`]: campaign measurement (`idmatch measure`): private intersection-sum
//!   with lift, by ECDH blinding, twisted ElGamal and the owner's range proofs; `measure::side` turns a
//!   prepared side into the owner's people or the partner's exposures.
//! - [`output`]: output files (matches, token exports, JSON reports) that appear
//!   whole or not at all.
//! - [`progress`]: how far long work has got, told to a [`progress::Progress`] the
//!   caller implements (the library draws nothing).
//! - [`service`]: the gRPC matching server, the `OptOutAdmin` service, the partner's
//!   client, the owner's opt-out admin client, and what they need (configuration,
//!   audit log, budgets, metrics).
//! - [`synth`]: realistic synthetic data with a known truth.
//!
//! The command line lives in the `idmatch` binary (`src/main.rs` and its `cli`
//! module: argument structures and glue only), not in this library.
//! - [`wire`]: protobuf types generated from `proto/` (the gRPC contract).
//!
//! `docs/PROTOCOL.md` specifies the wire protocol byte for byte; `docs/PRIVACY.md`
//! says what each party learns.
//!
//! # Features
//!
//! The core — [`normalize`], [`key`], [`token`], [`records`], [`optout`] lists,
//! [`psi`], [`local_match`], [`shard`], [`measure`], [`synth`], [`output`] — builds with
//! `--no-default-features`. On by default:
//! - `sqlite`: the durable opt-out store (`optout::store`, bundled SQLite);
//! - `service` = `server`: the owner's gRPC server (`service::server`,
//!   `service::config`: axum, Prometheus, health, reflection), with `sqlite` and
//!   `client`;
//! - `client` (in `server`; alone for the Python package): the partners' gRPC
//!   clients (`service::client`, `service::measure_client`) and the wire types
//!   (`wire`: tonic, tokio), without the server or SQLite;
//! - `progress-bars` (in `cli`; also the Python package's): `progress::Bars`,
//!   progress bars on stderr (indicatif). Without it the library reports progress
//!   only to a [`progress::Progress`] its caller implements;
//! - `cli`: the `idmatch` binary (clap), which needs both.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// No `unwrap`/`expect` outside tests: input never panics (issue 9).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod key;
pub mod local_match;
pub mod measure;
pub mod normalize;
pub mod optout;
pub mod output;
pub mod prepare;
pub mod progress;
pub mod psi;
pub mod records;
#[cfg(feature = "client")]
pub mod service;
pub mod shard;
pub mod synth;
pub mod token;

/// Protobuf types generated from `proto/idmatch/v1/` by `build.rs` (protox, no
/// `protoc`): the `Matcher` and `OptOutAdmin` services and their messages.
// Generated code: the field and message docs live in the `.proto` files.
#[allow(missing_docs)]
#[cfg(feature = "client")]
pub mod wire {
    tonic::include_proto!("idmatch.v1");
}
