//! CLI subcommands that need no configuration: `forecast` and `simulate`.

pub mod forecast;
pub mod simulate;
pub mod vm;

use std::io::Write;
use std::process::ExitCode;

/// Prints a command's output; a closed pipe (`| head`) is not an error worth a panic.
fn print(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let text = text.trim_end();
    let written = if text.is_empty() {
        Ok(())
    } else {
        writeln!(out, "{text}")
    };
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("betaas-agent: cannot write the output: {e}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}
