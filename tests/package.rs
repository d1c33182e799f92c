//! The Debian package: `scripts/package.sh --lint` packages the binaries under test (the debug
//! build, so no release build runs inside the suite), lintian passes, and the package, unpacked
//! into an empty root, holds what an admin expects where Debian puts it, with working binaries.
//! What the package needs (cargo-deb, lintian, dpkg-deb) is installed by `scripts/setup.sh`,
//! which `scripts/package.sh` runs first; nothing is skipped when a tool is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A gzip file's text (man pages and the changelog are compressed in a package).
fn gunzip(path: &Path) -> String {
    stdout(&run(Command::new("gzip").arg("-dc").arg(path)))
}

/// The package built from the binaries this test run built, and the directory it lives in.
fn build_package() -> (tempfile::TempDir, PathBuf) {
    let binaries = Path::new(env!("CARGO_BIN_EXE_electd"))
        .parent()
        .expect("the binaries' directory");
    let out = tempfile::tempdir().unwrap();
    let built = run(Command::new(repo().join("scripts/package.sh"))
        .arg("--lint")
        .arg("--binaries")
        .arg(binaries)
        .arg("--out")
        .arg(out.path())
        .current_dir(repo()));
    let deb = PathBuf::from(
        stdout(&built)
            .lines()
            .last()
            .expect("package.sh prints the package's path"),
    );
    assert_eq!(deb.parent(), Some(out.path()), "{}", deb.display());
    (out, deb)
}

#[test]
fn debian_package_installs_binaries_docs_unit_and_user() {
    let (_dir, deb) = build_package();
    let arch = stdout(&run(Command::new("dpkg").arg("--print-architecture")));
    let version = format!("{}-1", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        deb.file_name().unwrap().to_string_lossy(),
        format!("electd_{version}_{arch}.deb")
    );

    // Control fields.
    let field = |name: &str| stdout(&run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name)));
    assert_eq!(field("Package"), "electd");
    assert_eq!(field("Version"), version);
    assert_eq!(field("Architecture"), arch);
    let depends = field("Depends");
    assert!(
        depends.contains("adduser"),
        "postinst may need adduser: {depends}"
    );
    assert!(depends.contains("libc6"), "{depends}");

    // Unpacked into an empty root.
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root));
    let expected = [
        "usr/bin/electd",
        "usr/bin/elect-run",
        "usr/share/man/man1/electd.1.gz",
        "usr/share/man/man1/elect-run.1.gz",
        "usr/share/man/man1/electd-status.1.gz",
        "usr/share/man/man1/electd-resign.1.gz",
        "usr/share/man/man1/electd-pause.1.gz",
        "usr/share/man/man1/electd-resume.1.gz",
        "usr/share/bash-completion/completions/electd",
        "usr/share/bash-completion/completions/elect-run",
        "usr/share/zsh/vendor-completions/_electd",
        "usr/share/zsh/vendor-completions/_elect-run",
        "usr/share/fish/vendor_completions.d/electd.fish",
        "usr/share/fish/vendor_completions.d/elect-run.fish",
        "lib/systemd/system/electd@.service",
        "usr/lib/sysusers.d/electd.conf",
        "usr/share/lintian/overrides/electd",
        "usr/share/doc/electd/copyright",
        "usr/share/doc/electd/changelog.Debian.gz",
        "usr/share/doc/electd/README.md",
        "usr/share/doc/electd/operations.md",
        "usr/share/doc/electd/app-contract.md",
        "usr/share/doc/electd/examples/clients/electd_client.py",
        "usr/share/doc/electd/examples/clients/leader-only.sh",
        "usr/share/doc/electd/examples/example.env",
        "usr/share/doc/electd/examples/elect-run.crontab.example",
        "usr/share/doc/electd/examples/electd.example.toml",
        "usr/share/doc/electd/examples/prometheus/electd-rules.yml",
        "usr/share/doc/electd/examples/grafana/electd.json",
    ];
    for file in expected {
        let path = root.join(file);
        let meta =
            std::fs::metadata(&path).unwrap_or_else(|e| panic!("the package lacks /{file}: {e}"));
        assert!(meta.is_file() && meta.len() > 0, "/{file} is empty");
    }
    // Nothing else: a file added to the package is added to this list on purpose.
    let listing = stdout(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    for line in listing.lines().filter(|l| !l.starts_with('d')) {
        let path = line
            .split_whitespace()
            .last()
            .unwrap()
            .trim_start_matches("./");
        assert!(
            expected.contains(&path),
            "unexpected file /{path} in the package"
        );
    }
    // Only the two binaries, no third.
    let bins: Vec<_> = std::fs::read_dir(root.join("usr/bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(bins.len(), 2, "{bins:?}");

    // The packaged binaries run and name this build.
    for (name, bin) in [
        ("electd", "usr/bin/electd"),
        ("elect-run", "usr/bin/elect-run"),
    ] {
        let out = run(Command::new(root.join(bin)).arg("--version"));
        assert_eq!(stdout(&out), format!("{name} {}", electd::VERSION));
    }

    // Man pages and completions come from the clap definitions: every flag is in them.
    let man = gunzip(&root.join("usr/share/man/man1/electd.1.gz"));
    assert!(man.lines().any(|l| l.starts_with(".TH electd 1 ")), "{man}");
    for flag in [
        "\\-\\-ttl",
        "\\-\\-stop\\-grace",
        "\\-\\-socket",
        "electd\\-status(1)",
    ] {
        assert!(man.contains(flag), "electd(1) lacks {flag}");
    }
    assert!(
        man.contains(electd::GIT_COMMIT),
        "electd(1) names the commit"
    );
    let run_man = gunzip(&root.join("usr/share/man/man1/elect-run.1.gz"));
    for flag in ["\\-\\-once\\-per", "\\-\\-wait"] {
        assert!(run_man.contains(flag), "elect-run(1) lacks {flag}");
    }
    let bash =
        std::fs::read_to_string(root.join("usr/share/bash-completion/completions/electd")).unwrap();
    for word in ["--election", "status", "resign", "complete -F"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    assert!(
        std::fs::read_to_string(root.join("usr/share/zsh/vendor-completions/_electd"))
            .unwrap()
            .starts_with("#compdef electd")
    );
    let changelog = gunzip(&root.join("usr/share/doc/electd/changelog.Debian.gz"));
    assert!(
        changelog.starts_with(&format!("electd ({version}) ")),
        "{changelog}"
    );

    // The unit runs the packaged binary as the user the package creates, and the examples are
    // the repository's.
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/electd@.service")).unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit has no {key}="))
            .to_string()
    };
    let exec = value("ExecStart");
    let binary = exec.split_whitespace().next().unwrap();
    assert!(
        root.join(binary.trim_start_matches('/')).is_file(),
        "ExecStart runs {binary}, which the package does not install"
    );
    assert_eq!(value("User"), "electd");
    assert_eq!(value("Group"), "electd");
    let sysusers = std::fs::read_to_string(root.join("usr/lib/sysusers.d/electd.conf")).unwrap();
    let user_line: Vec<&str> = sysusers
        .lines()
        .find(|l| l.starts_with("u "))
        .expect("a `u` line")
        .split_whitespace()
        .collect();
    assert_eq!(user_line[1], "electd");
    assert_eq!(user_line.last(), Some(&"/usr/sbin/nologin"));
    let env_file = value("EnvironmentFile");
    let env_dir = Path::new(&env_file)
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    for example in [
        "deploy/systemd/example.env",
        "deploy/systemd/elect-run.crontab.example",
    ] {
        let name = Path::new(example).file_name().unwrap();
        assert_eq!(
            std::fs::read(root.join("usr/share/doc/electd/examples").join(name)).unwrap(),
            std::fs::read(repo().join(example)).unwrap(),
            "{example}"
        );
    }

    // Maintainer scripts: valid sh; postinst creates the user both ways and the environment
    // files' directory; md5sums cover every file.
    let control = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(control.path()));
    for script in ["postinst", "postrm"] {
        let path = control.path().join(script);
        run(Command::new("sh").arg("-n").arg(&path));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{script} is not executable");
    }
    let postinst = std::fs::read_to_string(control.path().join("postinst")).unwrap();
    for needle in ["systemd-sysusers electd.conf", "adduser", env_dir.as_str()] {
        assert!(postinst.contains(needle), "postinst lacks {needle}");
    }
    run(Command::new("md5sum")
        .arg("--check")
        .arg("--quiet")
        .arg(control.path().join("md5sums"))
        .current_dir(root));
    let sums = std::fs::read_to_string(control.path().join("md5sums")).unwrap();
    assert_eq!(sums.lines().count(), expected.len(), "{sums}");
}
