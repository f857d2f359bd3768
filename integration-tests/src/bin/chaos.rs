//! `chaos`: fault injection against the whole system on tansu and PostgreSQL; see
//! `saga_integration_tests::chaos`. The last line is the figures; the exit code is 1 on any violation.

use clap::Parser;
use saga_integration_tests::chaos::{run, Options};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Options::parse()).await {
        Ok(report) => {
            println!("{}", report.figures());
            std::process::ExitCode::from(u8::from(!report.verdict.violations.is_empty()))
        }
        Err(e) => {
            eprintln!("chaos: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
