//! `mqtt-subscriber`: parse the command line, verify what arrives, print the verdict,
//! exit with a code that says how it went.

use std::process::ExitCode;

use clap::Parser;
use mqtt_protocol::{exit, logging, report, shutdown};
use mqtt_subscriber::SubscriberArgs;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = SubscriberArgs::parse();
    logging::init("info");
    let report_path = args.report_json.clone();
    let result = mqtt_subscriber::run(args, shutdown::on_signals()).await;
    let (report, error) = match &result {
        Ok(report) => (Some(report), None),
        Err(e) => (e.partial_report(), Some(e as &dyn std::fmt::Display)),
    };
    report::conclude(report, error, report_path.as_deref(), |r| {
        if r.interrupted {
            exit::INTERRUPTED
        } else if r.verdict.corrupt > 0 {
            exit::CORRUPT
        } else if !r.verdict.complete {
            exit::MISSING
        } else {
            exit::OK
        }
    })
}
