//! Checks `perfvmm predict` against real runs in the nested harness and
//! prints the validation table of docs/predict.md.
//!
//!   predict-validate [--units N] [--runs NAME,...] [--console FILE]
//!
//! `--console FILE` reads a saved console instead of booting a guest (the
//! guest's console is saved to target/predict-validate.console).

use std::process::ExitCode;

use perfvmm_tests::predict::{checks, markdown, profiles, run_guest, RUNS};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut units = 20;
    let mut runs: Vec<String> = RUNS.iter().map(|s| s.to_string()).collect();
    let mut console_file: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--units", Some(v)) => match v.parse() {
                Ok(n) => units = n,
                Err(_) => return usage(),
            },
            ("--runs", Some(v)) => runs = v.split(',').map(str::to_string).collect(),
            ("--console", Some(v)) => console_file = Some(v.clone()),
            _ => return usage(),
        }
    }
    let console = match console_file {
        Some(f) => match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("predict-validate: {f}: {e}");
                return ExitCode::from(1);
            }
        },
        None => {
            let names: Vec<&str> = runs.iter().map(String::as_str).collect();
            eprintln!(
                "predict-validate: {} runs in a nested guest (several minutes)",
                names.len()
            );
            let out = run_guest(&names, units);
            let _ = std::fs::write("target/predict-validate.console", &out.console);
            for l in out
                .console
                .lines()
                .filter(|l| l.contains("scenario: predict"))
            {
                eprintln!("{l}");
            }
            out.console
        }
    };
    let p = match profiles(&console) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("predict-validate: {e}");
            return ExitCode::from(1);
        }
    };
    match checks(&p) {
        Ok(c) => {
            print!("{}", markdown(&c));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("predict-validate: {e}");
            ExitCode::from(1)
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: predict-validate [--units N] [--runs NAME,...] [--console FILE]");
    ExitCode::from(2)
}
