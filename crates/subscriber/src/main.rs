//! `mqtt-subscriber`: parse the command line, verify what arrives (or merge the reports
//! of several subscribers), print the verdict, exit with a code that says how it went.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use mqtt_client::{logging, shutdown};
use mqtt_protocol::verify::Verdict;
use mqtt_protocol::{exit, report};
use mqtt_subscriber::cli::{Command, MergeArgs};
use mqtt_subscriber::SubscriberArgs;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = SubscriberArgs::parse();
    if let Some(Command::Merge(merge)) = &args.command {
        return merge_reports(merge);
    }
    if let Err(message) = args.validate() {
        SubscriberArgs::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
    logging::init("info");
    let report_path = args.client.report_json.clone();
    let result = mqtt_subscriber::run(args, shutdown::on_signals()).await;
    report::conclude_run(&result, report_path.as_deref(), |r| {
        if r.interrupted {
            exit::INTERRUPTED
        } else if r.share_group.is_some() && r.verdict.corrupt == 0 {
            // A member sees only its share; `merge` judges completeness.
            exit::OK
        } else {
            verdict_code(&r.verdict)
        }
    })
}

fn merge_reports(args: &MergeArgs) -> ExitCode {
    let result = mqtt_subscriber::merge::run(args);
    let error = result.as_ref().err().map(|e| e as &dyn std::fmt::Display);
    report::conclude(
        result.as_ref().ok(),
        error,
        args.report_json.as_deref(),
        |r| verdict_code(&r.verdict),
    )
}

fn verdict_code(v: &Verdict) -> u8 {
    if v.corrupt > 0 {
        exit::CORRUPT
    } else if !v.complete {
        exit::MISSING
    } else {
        exit::OK
    }
}
