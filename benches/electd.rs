//! The benchmark of issue 8: failover, safety under partition and API speed, electd side by
//! side with `etcdctl lock` in one run. Starts its own etcd and replicas; writes
//! `docs/benchmarks.md` and prints the same report.
//!
//! ```sh
//! cargo bench --bench electd [-- --iterations N] [--out PATH] [--only SCENARIO]
//! ```

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "scenarios/mod.rs"]
mod scenarios;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use scenarios::{BenchConfig, SCENARIOS};

const USAGE: &str = "usage: cargo bench --bench electd -- [--iterations N] [--out PATH] \
                     [--only SCENARIO] [--quiet]";

fn main() -> ExitCode {
    if scenarios::helper_if_asked() {
        return ExitCode::SUCCESS;
    }
    let mut cfg = BenchConfig::full();
    let mut out = PathBuf::from("docs/benchmarks.md");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        let parsed: Result<(), String> = match arg.as_str() {
            // cargo bench passes --bench to harness-less benchmarks.
            "--bench" => Ok(()),
            "--iterations" => value("--iterations").and_then(|v| match v.parse() {
                Ok(n) if n > 0 => {
                    cfg.iterations = n;
                    Ok(())
                }
                _ => Err(format!(
                    "--iterations: expected a positive number, got {v:?}"
                )),
            }),
            "--out" => value("--out").map(|v| out = PathBuf::from(v)),
            "--only" => value("--only").and_then(|v| {
                if SCENARIOS.contains(&v.as_str()) {
                    cfg.only = Some(v);
                    Ok(())
                } else {
                    Err(format!(
                        "--only: unknown scenario {v:?}; one of {}",
                        SCENARIOS.join(", ")
                    ))
                }
            }),
            "--quiet" => {
                cfg.verbose = false;
                Ok(())
            }
            "-h" | "--help" => {
                println!("{USAGE}\nscenarios: {}", SCENARIOS.join(", "));
                return ExitCode::SUCCESS;
            }
            other => Err(format!("unknown argument {other:?}\n{USAGE}")),
        };
        if let Err(e) = parsed {
            eprintln!("electd bench: {e}");
            return ExitCode::from(64);
        }
    }

    let electd = Path::new(common::electd_binary());
    if !electd.is_file() {
        eprintln!(
            "electd bench: the electd binary is missing at {}; build it with \
             `cargo build --release --bin electd` (cargo bench normally builds it first)",
            electd.display()
        );
        return ExitCode::from(69);
    }

    let report = scenarios::run(&cfg);
    let text = report.markdown();
    println!("{text}");
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty())
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("electd bench: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    if let Err(e) = std::fs::write(&out, text) {
        eprintln!("electd bench: cannot write {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    eprintln!("electd bench: report written to {}", out.display());
    ExitCode::SUCCESS
}
