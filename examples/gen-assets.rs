//! Generates what the Debian package ships besides the binaries, from the clap definitions in
//! `electd::cli` (so help, man pages and completions never drift apart):
//!
//! ```text
//! cargo run --release --example gen-assets -- target/assets
//! ```
//!
//! writes `OUT/man/*.1` (electd, one page per subcommand, elect-run) and
//! `OUT/completions/{bash,zsh,fish}/…` under the names the shells look for.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use electd::cli::{ElectRunCli, ElectdCli};

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: gen-assets OUT_DIR");
        std::process::exit(64);
    };
    let out = PathBuf::from(out);
    for cmd in [ElectdCli::command(), ElectRunCli::command()] {
        if let Err(e) = generate(cmd, &out) {
            eprintln!("gen-assets: {e}");
            std::process::exit(1);
        }
    }
}

fn generate(mut cmd: clap::Command, out: &Path) -> std::io::Result<()> {
    let name = cmd.get_name().to_string();
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    clap_mangen::generate_to(cmd.clone(), &man)?;
    for (shell, file) in [
        (Shell::Bash, name.clone()),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let dir = out.join("completions").join(shell.to_string());
        std::fs::create_dir_all(&dir)?;
        let mut f = std::fs::File::create(dir.join(file))?;
        clap_complete::generate(shell, &mut cmd, &name, &mut f);
    }
    Ok(())
}
