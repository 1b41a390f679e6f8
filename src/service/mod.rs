//! The network side: the owner's gRPC matching server and the partner's client.
//!
//! - [`config`]: `server.toml`, validated at start and on reload;
//! - [`server`]: serving on a bound listener, health, reflection, graceful shutdown,
//!   configuration reloads;
//! - `state` (loading partners and campaigns), `auth` (credentials), `slots`
//!   (concurrency caps), `proving` (the owner's measurement proofs on a pool of
//!   their own, a cap on how many run at once), `error` (why the server could not start or reload);
//! - `shared` (what the server shares between streams: the configuration now,
//!   opt-outs, audit log, budgets, metrics, slots), `session` (the one skeleton of a
//!   stream: authenticate, admit, run, audit, count), `status` (refusals as gRPC
//!   statuses);
//! - `matcher` (the `Matcher` service: one match per stream: checks, opt-outs,
//!   budgets, results files), `runs` (sharded match runs: the streams of one run
//!   checked against each other, charged and audited once, one results file);
//! - [`client`]: the partner's client behind `idmatch match --server`;
//! - [`shard_files`]: one shard stream of a run from the files `idmatch shard`
//!   wrote (`idmatch match --server … --shard I/N --shard-files DIR`);
//! - [`measure_client`]: the partner's client behind `idmatch measure --server`;
//!   [`epsilon_ledger`]: its lifetime account of what owners learned about its
//!   exposures;
//! - [`admin_client`]: the owner's `OptOutAdmin` client behind `idmatch optout
//!   --server`;
//! - `convert`: engine messages ↔ protobuf wire types;
//! - `driver`: runs a role's state machine over a stream, off the async runtime;
//! - `admin`: the `OptOutAdmin` service over the opt-out store;
//! - `measure` (the `Measurer` service: one campaign measurement per stream),
//!   `frames` (the measurement roles over frames, shared with the client) and
//!   `measure_wire` (measurement messages ↔ frames: encoding, decoding, bounds);
//! - `audit`, `budget`, `metrics`: the audit log, daily budgets, Prometheus;
//!   `lockfile`: the lock that lets several server processes share the budget
//!   state and the runs (and several clients one epsilon ledger).

// The clients (feature `client`)...
pub mod client;
mod convert;
mod driver;
pub mod epsilon_ledger;
mod frames;
mod lockfile;
pub mod measure_client;
mod measure_wire;
pub mod shard_files;

// ...and the server (feature `server`).
#[cfg(feature = "server")]
mod admin;
// The owner's opt-out admin client (it reads lists with the store's rules).
#[cfg(feature = "server")]
pub mod admin_client;
#[cfg(feature = "server")]
mod audit;
#[cfg(feature = "server")]
mod auth;
#[cfg(feature = "server")]
mod budget;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
mod error;
#[cfg(feature = "server")]
mod matcher;
#[cfg(feature = "server")]
mod measure;
#[cfg(feature = "server")]
mod metrics;
#[cfg(feature = "server")]
mod proving;
#[cfg(feature = "server")]
mod runs;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
mod session;
#[cfg(feature = "server")]
mod shared;
#[cfg(feature = "server")]
mod slots;
#[cfg(feature = "server")]
mod state;
#[cfg(feature = "server")]
mod status;
