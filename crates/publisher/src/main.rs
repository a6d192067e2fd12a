//! `mqtt-publisher`: parse the command line, run the simulator, print the summary,
//! exit with a code that says how it went.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use mqtt_client::{logging, shutdown};
use mqtt_protocol::resources::raise_open_file_limit;
use mqtt_protocol::{exit, report};
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
    check_open_file_limit(args.devices, args.rate.is_some());
    let report_path = args.client.report_json.clone();
    let result = mqtt_publisher::run(args, shutdown::on_signals()).await;
    report::conclude_run(&result, report_path.as_deref(), |r| {
        if r.summary.interrupted {
            exit::INTERRUPTED
        } else if !r.summary.complete {
            exit::MISSING
        } else {
            exit::OK
        }
    })
}

/// Each device is a socket of its own (and, when paced, a timer of its own): lift the soft
/// limit on open files to the hard one (1,024 by default on many systems), and say so if
/// even that is too low.
fn check_open_file_limit(devices: u32, paced: bool) {
    let Some(limit) = raise_open_file_limit() else {
        return;
    };
    // Sockets (and timers) plus stdio, the runtime's own descriptors and some slack.
    let needed = u64::from(devices) * (1 + u64::from(paced)) + 64;
    if limit < needed {
        tracing::warn!(
            "the open-file limit is {limit} but {devices} devices need about {needed}; \
             connections may fail (raise it with `ulimit -n`)"
        );
    }
}
