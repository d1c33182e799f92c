//! The `electd` binary's answers to bad input: exit 78 with a message naming the field, file
//! or flag and what is accepted; exit 64 for usage errors. No etcd needed: validation happens
//! before any connection.

mod common;

use std::process::Command;

use common::electd_binary;

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(electd_binary())
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().expect("exited normally"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_config_error(args: &[&str], env: &[(&str, &str)], needles: &[&str]) {
    let (code, err) = run(args, env);
    assert_eq!(code, 78, "{args:?} {env:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err:?} lacks {n:?}");
    }
}

#[test]
fn ttl_below_two_seconds() {
    assert_config_error(
        &["--election", "e", "--ttl", "1s"],
        &[],
        &["invalid ttl", "--ttl", "at least 2s"],
    );
}

#[test]
fn bad_duration() {
    assert_config_error(
        &["--election", "e", "--ttl", "5x"],
        &[],
        &["invalid ttl \"5x\"", "duration such as"],
    );
}

#[test]
fn empty_election_name() {
    assert_config_error(&["--election", ""], &[], &["invalid election", "non-empty"]);
}

#[test]
fn missing_election_name() {
    assert_config_error(
        &[],
        &[],
        &["missing election", "--election", "ELECTD_ELECTION"],
    );
}

#[test]
fn unparsable_endpoint() {
    assert_config_error(
        &["--election", "e", "--endpoints", "http://ok:2379,etcd:2379"],
        &[],
        &["invalid endpoints \"etcd:2379\"", "http://127.0.0.1:2379"],
    );
}

#[test]
fn env_values_are_named_by_variable() {
    assert_config_error(
        &["--election", "e"],
        &[("ELECTD_TTL", "0s")],
        &["ELECTD_TTL", "at least 2s"],
    );
}

#[test]
fn stop_grace_that_does_not_fit_the_ttl() {
    assert_config_error(
        &[
            "--election",
            "e",
            "--ttl",
            "3s",
            "--stop-grace",
            "3s",
            "--",
            "true",
        ],
        &[],
        &["does not fit inside the lease TTL", "--stop-grace"],
    );
}

#[test]
fn config_file_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("electd.toml");
    let f = file.to_str().unwrap();

    std::fs::write(&file, "election = \"e\"\nttl = \"5s\"\nttl_typo = 1\n").unwrap();
    assert_config_error(
        &["--config", f],
        &[],
        &["electd.toml", "line 3", "ttl_typo"],
    );

    std::fs::write(&file, "election = \"e\"\nttl = 5s\n").unwrap();
    assert_config_error(&["--config", f], &[], &["electd.toml", "line 2, column"]);

    std::fs::write(&file, "election = \"e\"\nttl = \"1s\"\n").unwrap();
    assert_config_error(
        &["--config", f],
        &[],
        &["invalid ttl", "electd.toml (key `ttl`)"],
    );

    assert_config_error(
        &["--config", "/nonexistent/electd.toml"],
        &[],
        &["cannot read config file", "/nonexistent/electd.toml"],
    );
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    let (code, err) = run(&["--no-such-flag"], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
    let out = Command::new(electd_binary())
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--endpoints",
        "--election",
        "--id",
        "--ttl",
        "--http",
        "--socket",
        "--stop-grace",
        "--on-exit",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

/// The commit `--version` must name: `git rev-parse --short=12 HEAD` when this crate is its own
/// git checkout, else None (then `unknown` is the only right answer).
fn checkout_commit() -> Option<String> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let top = git(&["rev-parse", "--show-toplevel"])?;
    let same = std::fs::canonicalize(top).ok()? == std::fs::canonicalize(dir).ok()?;
    same.then(|| git(&["rev-parse", "--short=12", "HEAD"]))?
}

#[test]
fn version_names_the_release_and_the_commit() {
    let expected = checkout_commit();
    for (name, binary) in [
        ("electd", electd_binary()),
        ("elect-run", env!("CARGO_BIN_EXE_elect-run")),
    ] {
        let out = Command::new(binary).arg("--version").output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{name} --version");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.trim(), format!("{name} {}", electd::VERSION));
        let rest = stdout
            .trim()
            .strip_prefix(&format!("{name} {} (commit ", env!("CARGO_PKG_VERSION")))
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{name} --version: {stdout:?}"));
        let commit = rest.strip_suffix("-dirty").unwrap_or(rest);
        match &expected {
            Some(head) => assert_eq!(commit, head, "{name} --version: {stdout:?}"),
            None => assert_eq!(rest, "unknown", "{name} --version: {stdout:?}"),
        }
        assert!(
            commit == "unknown"
                || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
            "{name} --version: {stdout:?}"
        );
    }
}

#[test]
fn values_etcd_would_refuse_are_configuration_errors_at_start() {
    assert_config_error(
        &["--election", "e", "--ttl", "9000000001s"],
        &[],
        &["invalid ttl", "--ttl", "etcd's largest lease TTL"],
    );
    // A 2 MB election name (too long for a flag or a variable: from the file).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("electd.toml");
    std::fs::write(&file, format!("election = \"{}\"\n", "x".repeat(2 << 20))).unwrap();
    let (code, err) = run(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("at most 512 bytes") && err.len() < 1000,
        "{err}"
    );
}
