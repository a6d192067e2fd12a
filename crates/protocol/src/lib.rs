//! Everything the pipeline's broker, publisher and subscriber share: the reading and
//! its encodings, topics, verification, report types, connection options, exit codes
//! and the shutdown signal.

pub mod connect;
pub mod exit;
pub mod failover;
pub mod logging;
pub mod merge;
pub mod progress;
pub mod reading;
pub mod reconnect;
pub mod report;
pub mod resources;
pub mod shutdown;
pub mod timing;
pub mod topic;
pub mod verify;
