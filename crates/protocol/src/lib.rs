//! The pipeline's domain, shared by the broker, the publisher and the subscriber: the
//! reading and its encodings, topics, verification, timing, report types, merging the
//! reports of share members, exit codes, what a process cost and the shutdown signal.
//! Command lines, connections and terminals belong to `mqtt-client`.

pub mod exit;
pub mod merge;
pub mod reading;
pub mod report;
pub mod resources;
pub mod shutdown;
pub mod timing;
pub mod topic;
pub mod verify;
