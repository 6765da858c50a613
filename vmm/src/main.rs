use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

use perfvmm::boot;
use perfvmm::builder::{self, VmConfig, VmError};
use perfvmm::cli::{Cli, Command, CtlRequest};
use perfvmm::control::snapshot::Endpoint;
use perfvmm::migration::{self, receive::Received};
use perfvmm::policy::Policy;
use perfvmm::predict::read_text;

/// The log filter unless `RUST_LOG` names one. The virtio-queue crate logs
/// an error for each malformed queue or chain a guest offers, outside
/// perfvmm's guest-triggered log limit (`virtio_mmio::LogLimit`); perfvmm's
/// devices count and report the same conditions themselves, so its lines
/// are off by default (`RUST_LOG=virtio_queue=debug` turns them back on).
fn log_filter(verbose: u8) -> String {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    format!("{level},virtio_queue=off")
}

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = Cli::parse();
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(log_filter(cli.verbose)),
    )
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
    if let Some(Command::Simulate {
        trace,
        policy,
        latency,
        seed,
        json,
    }) = cli.command
    {
        return match simulate_command(&trace, policy.as_deref(), &latency, seed, json) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("perfvmm: {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(Command::Predict(args)) = cli.command {
        return match perfvmm::predict::run(&args) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("perfvmm predict: {e}");
                ExitCode::from(1)
            }
        };
    }
    let (kernel, restore) = match (cli.kernel, cli.restore, &cli.incoming) {
        (Some(k), None, None) => (k, None),
        (None, Some(dir), None) => (std::path::PathBuf::new(), Some(dir)),
        (None, None, Some(_)) => (std::path::PathBuf::new(), None),
        _ => {
            eprintln!("perfvmm: give --kernel, --restore DIR or --incoming ADDR");
            return ExitCode::from(2);
        }
    };
    let cfg = VmConfig {
        kernel,
        unpacker: if cli.guest_decompress {
            boot::Unpacker::Guest
        } else {
            boot::Unpacker::Vmm
        },
        policy: cli.policy,
        decision_log: cli.decision_log,
        initrd: cli.initrd,
        cmdline: cli.cmdline,
        cpus: cli.cpus,
        memory: cli.memory,
        api_sock: cli.api_sock,
        boot_timer: cli.boot_timer,
        seccomp: !cli.no_seccomp,
        hint_log: cli.hint_log,
        log_limit: cli.log_limit,
        api_sock_group: cli.api_sock_group,
        policy_dir: cli.policy_dir,
        snapshot_dir: cli.snapshot_dir,
        allow_migrate: cli.allow_migrate,
    };
    let vm = match (&restore, &cli.incoming) {
        (Some(dir), _) => builder::restore(&cfg, dir, start),
        (None, Some(at)) => incoming(&cfg, at),
        (None, None) => builder::build(&cfg, start),
    };
    let run = vm.and_then(|vm| Ok(vm.run()?));
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

/// Waits at `at` for a migrating VM and builds it with its vCPUs held;
/// tells the source it is ready, and lets the vCPUs run only once the
/// source has handed the VM over (until then the source may run it).
fn incoming(cfg: &VmConfig, at: &Endpoint) -> Result<perfvmm::vm::Vm, VmError> {
    let limits = builder::incoming_limits(cfg)?;
    let Received {
        state,
        mem,
        mut source,
    } = migration::receive::listen(at, limits)?;
    match builder::restore_migrated(cfg, state, mem, Instant::now()) {
        Ok(mut vm) => {
            source.answer(Ok(()))?;
            source.await_commit()?;
            vm.release();
            Ok(vm)
        }
        Err(e) => {
            let _ = source.answer(Err(&e.to_string()));
            Err(e)
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
        CtlRequest::Migrate { to, downtime_ms } => (
            "PUT",
            "/migrate",
            Some(json!({ "to": to, "downtime_ms": downtime_ms })),
        ),
        CtlRequest::Snapshot { name, stop } => (
            "PUT",
            "/snapshot",
            Some(json!({ "name": name, "stop": stop })),
        ),
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

/// The largest trace `perfvmm simulate` reads.
const MAX_TRACE_BYTES: u64 = 256 << 20;
/// The largest latency file it reads.
const MAX_LATENCY_BYTES: u64 = 16 << 20;

/// `perfvmm simulate`: the report, as a table or JSON.
fn simulate_command(
    trace_path: &Path,
    policy: Option<&Path>,
    latency: &str,
    seed: u64,
    json: bool,
) -> Result<String, String> {
    use perfvmm::policy::simulate::{simulate, LatencyModel, SimConfig, Trace};
    let text = read_text("trace", trace_path, MAX_TRACE_BYTES)?;
    let trace = Trace::parse(&text).map_err(|e| format!("{}: {e}", trace_path.display()))?;
    let policy = match policy {
        Some(p) => Policy::load(p).map_err(|e| e.to_string())?,
        None => Policy::default(),
    };
    let model = match LatencyModel::builtin(latency) {
        Some(m) => m,
        None => {
            let text = read_text("latency file", Path::new(latency), MAX_LATENCY_BYTES)
                .map_err(|e| format!("--latency takes nested, hardware or a file: {e}"))?;
            LatencyModel::from_json(latency, &text).map_err(|e| format!("{latency}: {e}"))?
        }
    };
    // perfvmm's own timing.
    let cfg = SimConfig {
        tick: perfvmm::control::events::POLICY_TICK,
        stats_period: perfvmm::actuators::memory::STATS_PERIOD,
        ..SimConfig::new(policy, model, seed)
    };
    let report = simulate(&trace, &cfg);
    if json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            trace: &'a Path,
            #[serde(flatten)]
            report: &'a perfvmm::policy::simulate::Report,
        }
        let out = Out {
            trace: trace_path,
            report: &report,
        };
        let text = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
        return Ok(text + "\n");
    }
    let source = match trace.header.source.as_str() {
        "" => String::new(),
        s => format!(" ({s})"),
    };
    Ok(format!(
        "trace {}{source}\n{}",
        trace_path.display(),
        report.table()
    ))
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn the_guest_triggerable_queue_crate_lines_are_off_at_every_level() {
        for v in 0..4 {
            let f = log_filter(v);
            assert!(f.ends_with(",virtio_queue=off"), "{f}");
        }
        assert!(log_filter(0).starts_with("warn,"));
        assert!(log_filter(2).starts_with("debug,"));
    }
}
