//! The network side: the owner's gRPC matching server and the partner's client.
//!
//! - [`config`]: `server.toml`, validated at start and on reload;
//! - [`server`]: serving on a bound listener, health, reflection, graceful shutdown,
//!   configuration reloads;
//! - `state` (loading partners and campaigns), `auth` (credentials), `slots`
//!   (concurrency caps), `session` (one match: checks, opt-outs, budgets, results
//!   files, audit log);
//! - [`client`]: the partner's client behind `idmatch match --server`;
//! - [`measure_client`]: the partner's client behind `idmatch measure --server`;
//! - [`admin_client`]: the owner's `OptOutAdmin` client behind `idmatch optout
//!   --server`;
//! - `convert`: engine messages ↔ protobuf wire types;
//! - `driver`: runs a role's state machine over a stream, off the async runtime;
//! - `admin`: the `OptOutAdmin` service over the opt-out store;
//! - `measure` (the `Measurer` service: one campaign measurement per stream) and
//!   `frames` (the measurement roles over frames, shared with the client);
//! - `audit`, `budget`, `metrics`: the audit log, daily budgets, Prometheus.

mod admin;
pub mod admin_client;
mod audit;
mod auth;
mod budget;
pub mod client;
pub mod config;
mod convert;
mod driver;
mod frames;
mod measure;
pub mod measure_client;
mod metrics;
pub mod server;
mod session;
mod slots;
mod state;
