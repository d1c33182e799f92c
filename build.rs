//! Sets `ELECTD_GIT_COMMIT` for `--version` and `electd_info`: the commit the sources were built
//! from (`git rev-parse --short=12 HEAD`), with `-dirty` when the sources that go into the
//! binaries (`src/`, `build.rs`, `Cargo.toml`, `Cargo.lock`) differ from it, or `unknown`
//! outside a git checkout of this crate (a Docker build context, a crates.io tarball).
//! `ELECTD_GIT_COMMIT` in the build environment wins (`docker build --build-arg`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The sources whose changes make a build `-dirty` (and rerun this script).
const SOURCES: [&str; 4] = ["src", "build.rs", "Cargo.toml", "Cargo.lock"];

fn main() {
    println!("cargo:rerun-if-env-changed=ELECTD_GIT_COMMIT");
    let commit = match std::env::var("ELECTD_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => from_git().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=ELECTD_GIT_COMMIT={commit}");
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn from_git() -> Option<String> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    // Only this crate's own checkout: a tarball unpacked inside some other repository must not
    // borrow that repository's commit.
    let top = PathBuf::from(git(&manifest, &["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != manifest.canonicalize().ok()? {
        return None;
    }
    // Rerun when HEAD moves: HEAD itself (a checkout), the branch it points at (a commit; in a
    // worktree both live in the common git dir, which `--git-path` resolves), packed refs, and
    // the index (staging changes what `git status` reports).
    let mut watch = vec!["HEAD".to_string(), "packed-refs".into(), "index".into()];
    if let Some(head_ref) = git(&manifest, &["symbolic-ref", "-q", "HEAD"]) {
        watch.push(head_ref);
    }
    for name in watch {
        if let Some(path) = git(&manifest, &["rev-parse", "--git-path", &name]) {
            let path = manifest.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    let commit = git(&manifest, &["rev-parse", "--short=12", "HEAD"])?;
    let mut status = vec!["status", "--porcelain", "--"];
    status.extend(SOURCES);
    let dirty = !git(&manifest, &status)?.is_empty();
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}
