use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

use perfvmm::cli::Cli;
use perfvmm::vm::{self, VmConfig};

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();

    let cfg = VmConfig {
        kernel: cli.kernel,
        initrd: cli.initrd,
        cmdline: cli.cmdline,
        cpus: cli.cpus,
        memory: cli.memory.0,
        boot_timer: cli.boot_timer,
        hint_log: cli.hint_log,
    };
    match vm::run(&cfg, start) {
        Ok(reason) => {
            let code = reason.exit_code();
            if code == 0 {
                log::info!("{}", reason.describe());
            } else {
                eprintln!("perfvmm: {}", reason.describe());
            }
            // vCPU threads may still be inside KVM_RUN; leaving the process ends them.
            std::process::exit(code)
        }
        Err(e) => {
            eprintln!("perfvmm: {e}");
            ExitCode::from(1)
        }
    }
}
