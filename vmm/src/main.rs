use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

use perfvmm::builder::{self, VmConfig};
use perfvmm::cli::{Cli, Command, CtlRequest};
use perfvmm::policy::Policy;

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

    if let Some(Command::Policy {
        print_default,
        check,
    }) = cli.command
    {
        return policy_command(print_default, check);
    }
    if let Some(Command::Ctl { api_sock, request }) = cli.command {
        return ctl_command(&api_sock, request);
    }
    let Some(kernel) = cli.kernel else {
        eprintln!("perfvmm: --kernel is required");
        return ExitCode::from(2);
    };
    let cfg = VmConfig {
        kernel,
        policy: cli.policy,
        decision_log: cli.decision_log,
        initrd: cli.initrd,
        cmdline: cli.cmdline,
        cpus: cli.cpus,
        memory: cli.memory,
        api_sock: cli.api_sock,
        boot_timer: cli.boot_timer,
        hint_log: cli.hint_log,
        log_limit: cli.log_limit,
        api_sock_group: cli.api_sock_group,
        policy_dir: cli.policy_dir,
    };
    let run = builder::build(&cfg, start).and_then(|vm| Ok(vm.run()?));
    match run {
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

fn policy_command(print_default: bool, check: Option<std::path::PathBuf>) -> ExitCode {
    if let Some(path) = check {
        return match Policy::load(&path) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("perfvmm: {e}");
                ExitCode::from(1)
            }
        };
    }
    if print_default {
        print!("{}", Policy::default_toml());
        return ExitCode::SUCCESS;
    }
    eprintln!("perfvmm policy: give --print-default or --check FILE");
    ExitCode::from(2)
}

fn ctl_command(sock: &std::path::Path, request: CtlRequest) -> ExitCode {
    use serde_json::json;
    let (method, path, body) = match request {
        CtlRequest::Status => ("GET", "/status", None),
        CtlRequest::Decisions => ("GET", "/decisions", None),
        CtlRequest::Metrics => ("GET", "/metrics", None),
        CtlRequest::Resize { vcpus, memory } => {
            let body = match (vcpus, memory) {
                (Some(n), None) => json!({ "vcpus": n }),
                (None, Some(m)) => json!({ "memory": m }),
                _ => {
                    eprintln!("perfvmm ctl resize: give one of --vcpus and --memory");
                    return ExitCode::from(2);
                }
            };
            ("PUT", "/resize", Some(body))
        }
        CtlRequest::Reload { policy } => {
            let body = match policy {
                Some(p) => match std::path::absolute(&p) {
                    Ok(p) => json!({ "path": p }),
                    Err(e) => {
                        eprintln!("perfvmm ctl: {}: {e}", p.display());
                        return ExitCode::from(1);
                    }
                },
                None => json!({}),
            };
            ("PUT", "/policy/reload", Some(body))
        }
    };
    match perfvmm::control::http::call(sock, method, path, body.as_ref()) {
        Ok((200, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((code, body)) => {
            eprint!("perfvmm ctl: {code}: {body}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("perfvmm ctl: {}: {e}", sock.display());
            ExitCode::from(1)
        }
    }
}
