//! The benchmark of issue 8: failover, safety under partition and API speed, electd side by
//! side with `etcdctl lock` in one run. Starts its own etcd and replicas; writes the figures as
//! data (`docs/benchmarks.json`) and the page rendered from them (`docs/benchmarks.md`), and
//! prints the page.
//!
//! ```sh
//! cargo bench --bench electd [-- --iterations N] [--out PAGE.md] [--only SCENARIO]
//! cargo bench --bench electd -- --render docs/benchmarks.json   # the page again, from the data
//! ```

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "scenarios/mod.rs"]
mod scenarios;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use scenarios::{BenchConfig, SCENARIOS};

const USAGE: &str = "usage: cargo bench --bench electd -- [--iterations N] [--out PAGE.md] \
                     [--only SCENARIO] [--quiet] | --render DATA.json";

fn main() -> ExitCode {
    if scenarios::helper_if_asked() {
        return ExitCode::SUCCESS;
    }
    let mut cfg = BenchConfig::full();
    let mut out = PathBuf::from("docs/benchmarks.md");
    let mut render: Option<PathBuf> = None;
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
            "--render" => value("--render").map(|v| render = Some(PathBuf::from(v))),
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

    if let Some(data) = render {
        return match render_page(&data) {
            Ok(page) => {
                eprintln!(
                    "electd bench: {} rendered to {}",
                    data.display(),
                    page.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("electd bench: {e}");
                ExitCode::FAILURE
            }
        };
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

    let data = scenarios::run(&cfg).data();
    let text = match scenarios::report::markdown(&data) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("electd bench: cannot render the page: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{text}");
    let json = out.with_extension("json");
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty())
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("electd bench: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for (path, contents) in [(&json, data.to_json()), (&out, text)] {
        if let Err(e) = std::fs::write(path, contents) {
            eprintln!("electd bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    eprintln!(
        "electd bench: figures written to {}, the page to {}",
        json.display(),
        out.display()
    );
    ExitCode::SUCCESS
}

/// Render the data file at `data` to the page beside it (`.md`); returns the page's path.
fn render_page(data: &Path) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(data)
        .map_err(|e| format!("cannot read {}: {e}", data.display()))?;
    let d = scenarios::Data::from_json(&text).map_err(|e| format!("{}: {e}", data.display()))?;
    let page_text =
        scenarios::report::markdown(&d).map_err(|e| format!("{}: {e}", data.display()))?;
    let page = data.with_extension("md");
    std::fs::write(&page, page_text)
        .map_err(|e| format!("cannot write {}: {e}", page.display()))?;
    Ok(page)
}
