//! `mqtt-publisher`: parse the command line, run the simulator, print the summary,
//! exit with a code that says how it went.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use mqtt_protocol::{exit, logging, report, shutdown};
use mqtt_publisher::PublisherArgs;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = PublisherArgs::parse();
    if let Err(message) = args.validate() {
        PublisherArgs::command()
            .error(clap::error::ErrorKind::ValueValidation, message)
            .exit();
    }
    logging::init("info");
    let report_path = args.report_json.clone();
    let result = mqtt_publisher::run(args, shutdown::on_signals()).await;
    let (report, error) = match &result {
        Ok(report) => (Some(report), None),
        Err(e) => (e.partial_report(), Some(e as &dyn std::fmt::Display)),
    };
    report::conclude(report, error, report_path.as_deref(), |r| {
        if r.summary.interrupted {
            exit::INTERRUPTED
        } else if !r.summary.complete {
            exit::MISSING
        } else {
            exit::OK
        }
    })
}
