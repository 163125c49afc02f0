//! Progressive rollouts run by Weir: steps, canary analysis and automatic rollback.

pub mod analysis;
