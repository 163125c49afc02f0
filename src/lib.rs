//! Weir: an L7 reverse proxy that splits HTTP traffic between versions of an application.
//!
//! Data plane: [`listener`] → [`proxy`] → [`snapshot`] routing → [`split`] → [`pool`] →
//! [`upstream`]. Control plane: [`admin`] (and later reloads, discovery, rollouts) → [`control`],
//! the one writer, which builds and stores the next [`snapshot::Snapshot`]. The two meet only in
//! an `ArcSwap`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod config;
pub mod control;
pub mod demo;
pub mod discovery;
pub mod health;
pub mod http1;
pub mod listener;
pub mod metrics;
pub mod outlier;
pub mod pool;
pub mod proxy;
pub mod revision;
pub mod server;
pub mod snapshot;
pub mod split;
pub mod upstream;

pub use config::Config;
pub use server::{Running, start};
