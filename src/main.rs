//! The `emprune` binary: parse arguments, run the job, print the report, map the result to an
//! exit status (0 ok, 1 validation failed or `diff` found differences, 2 error). Errors are one line on stderr.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use emprune::cli::{Cli, Command, OutputArgs};
use emprune::report::text;

fn main() -> ExitCode {
    let cli = Cli::parse();
    emprune::progress::set_quiet(cli.quiet);
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("emprune: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the command; `Ok(false)` means validation failed.
fn run(cli: Cli) -> Result<bool> {
    match cli.command {
        Command::Inspect { model, prune, out } => {
            let report = match prune.structured()? {
                Some(sc) => emprune::structure::job::inspect(&model, &sc)?,
                None => emprune::inspect(&model, &prune.config()?)?,
            };
            emit(&out, &report, || text::render(&report))?;
            Ok(true)
        }
        Command::Prune { model, output, prune, format, guard, no_validate, validate, out } => {
            let opts = validate.options()?;
            let outcome = match prune.structured()? {
                Some(sc) => {
                    let sc = emprune::structure::plan::StructConfig { guard, ..sc };
                    emprune::structure::job::prune(&model, &output, &sc, (!no_validate).then_some(&opts))?
                }
                None => {
                    let how = emprune::Output { sparse: format == "sparse", guard };
                    emprune::prune_file_with(&model, &output, &prune.config()?, (!no_validate).then_some(&opts), &how)?
                }
            };
            emit(&out, &outcome.report, || text::render(&outcome.report))?;
            if !outcome.passed {
                eprintln!("emprune: validation failed; the pruned model was written to {} anyway", output.display());
            }
            Ok(outcome.passed)
        }
        Command::Validate { original, pruned, validate, out } => {
            let report = emprune::validate_files(&original, &pruned, &validate.options()?)?;
            emit(&out, &report, || text::render_validate(&report))?;
            Ok(report.validation.passed)
        }
        Command::Diff { a, b, all, out } => {
            let report = emprune::diff::diff(&a, &b)?;
            emit(&out, &report, || emprune::diff::text::render(&report, all))?;
            Ok(report.equivalent)
        }
    }
}

/// Prints text or JSON on stdout and writes the JSON report file if asked.
fn emit<T: serde::Serialize>(out: &OutputArgs, report: &T, text: impl FnOnce() -> String) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    if let Some(path) = &out.report {
        std::fs::write(path, &json).with_context(|| format!("cannot write report {}", path.display()))?;
    }
    if out.json {
        println!("{json}");
    } else {
        print!("{}", text());
    }
    Ok(())
}
