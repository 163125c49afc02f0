//! Weir: an L7 reverse proxy that splits HTTP traffic between versions of an application.
//!
//! Two planes that meet in one place. The [`data`] plane serves requests: listener → HTTP/1
//! framing rules → proxy → split → pool → upstream, reading the routing state through a
//! read-only [`data::snapshot::Routes`]. The [`control`] plane changes that state: admin
//! commands, reloads and discovery events go to one task, which builds the next snapshot
//! ([`control::build`]) and stores it with the one [`data::snapshot::Writer`]. [`config`] (the
//! schema) and [`metrics`] are shared by both; [`server`] wires them together. [`ctl`] is the
//! admin API's command-line client.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod control;
pub mod ctl;
pub mod data;
pub mod demo;
pub mod metrics;
pub mod server;

pub use config::Config;
pub use server::{Running, start};
