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
        Err(e) => (e.partial_report(), Some(e)),
    };
    if let Some(report) = &report {
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
        (Some(r), None) if r.summary.interrupted => exit::code(exit::INTERRUPTED),
        (Some(r), None) if !r.summary.complete => exit::code(exit::MISSING),
        _ => exit::code(exit::OK),
    }
}
