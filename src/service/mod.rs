//! The network side: the owner's gRPC matching server and the partner's client.
//!
//! - [`config`]: `server.toml`, validated at start;
//! - [`server`]: the `Matcher` service (authentication, limits, opt-outs at match
//!   start, results files, audit log), health, reflection, graceful shutdown;
//! - [`client`]: the partner's client behind `idmatch match --server`;
//! - [`convert`]: engine messages ↔ protobuf wire types;
//! - [`driver`]: runs a role's state machine over a stream, off the async runtime;
//! - [`admin`]: the `OptOutAdmin` service over the opt-out store;
//! - [`audit`], [`budget`], [`metrics`]: the audit log, daily budgets, Prometheus.

pub mod admin;
pub mod audit;
pub mod budget;
pub mod client;
pub mod config;
pub mod convert;
pub mod driver;
pub mod metrics;
pub mod server;
