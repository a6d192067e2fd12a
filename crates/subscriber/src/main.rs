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
        Err(e) => (e.partial_report(), Some(e)),
    };
    if let Some(report) = report {
        eprintln!("{report}");
        if let Some(path) = &report_path {
            if let Err(e) = report::write_json(report, path) {
                eprintln!("error: cannot write the report to {}: {e}", path.display());
                return exit::code(exit::RUNTIME_ERROR);
            }
        }
    }
    match (report, error) {
        (_, Some(error)) => {
            eprintln!("error: {error}");
            exit::code(exit::RUNTIME_ERROR)
        }
        (Some(r), None) if r.interrupted => exit::code(exit::INTERRUPTED),
        (Some(r), None) if r.verdict.corrupt > 0 => exit::code(exit::CORRUPT),
        (Some(r), None) if !r.verdict.complete => exit::code(exit::MISSING),
        _ => exit::code(exit::OK),
    }
}
