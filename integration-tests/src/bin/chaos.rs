//! `chaos`: fault injection against the whole system on tansu and PostgreSQL; see
//! `saga_integration_tests::chaos`. The last line is the figures; the exit code is 1 on any violation, or when more than
//! `--max-unintended-pct` (5) of the sagas ended otherwise than intended.

use clap::Parser;
use saga_integration_tests::chaos::{run, Options};

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let code = runtime.block_on(async {
        match run(Options::parse()).await {
            Ok(report) => {
                println!("{}", report.figures());
                match report.failure() {
                    Some(why) => {
                        eprintln!("chaos: failed: {why}");
                        std::process::ExitCode::from(1)
                    }
                    None => std::process::ExitCode::SUCCESS,
                }
            }
            Err(e) => {
                eprintln!("chaos: {e:#}");
                std::process::ExitCode::from(2)
            }
        }
    });
    // Blocking reads of a broker that stopped answering (tansu's storage can die and leave the
    // process up) must not hold the exit: the run is over and its verdict printed.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    code
}
