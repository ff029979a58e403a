//! `episode-pkgdocs [OUT_DIR]`: the man pages and bash/zsh/fish completions of
//! episode-shipper, episode-receiver and episode-doctor, generated from the clap
//! definitions the binaries parse with, so they cannot drift from the real options.
//!
//! Writes `OUT_DIR/man/*.1` (a page per program and per subcommand) and
//! `OUT_DIR/completions/{bash,zsh,fish}/`; the packages' `[package.metadata.deb]`
//! assets read them from `packaging/generated/` (the default OUT_DIR).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

fn main() -> anyhow::Result<()> {
    let out = std::env::args_os().nth(1).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/generated"),
        PathBuf::from,
    );
    let commands = [
        episode_shipper::cli::Cli::command(),
        episode_receiver::cli::Cli::command(),
        episode_doctor::cli::Cli::command(),
    ];
    // Start clean: a page of a subcommand that is gone must not be packaged.
    for dir in ["man", "completions"] {
        match std::fs::remove_dir_all(out.join(dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("clearing {}", out.join(dir).display()));
            }
            _ => {}
        }
    }
    let man = out.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    for command in &commands {
        clap_mangen::generate_to(command.clone(), &man).with_context(|| {
            format!(
                "writing the man pages of {} into {}",
                command.get_name(),
                man.display()
            )
        })?;
    }
    for (shell, dir) in [
        (Shell::Bash, "bash"),
        (Shell::Zsh, "zsh"),
        (Shell::Fish, "fish"),
    ] {
        let dir = out.join("completions").join(dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for command in &commands {
            let mut command = command.clone();
            let name = command.get_name().to_owned();
            clap_complete::generate_to(shell, &mut command, &name, &dir).with_context(|| {
                format!(
                    "writing the {shell} completion of {name} into {}",
                    dir.display()
                )
            })?;
        }
    }
    println!("{}", out.display());
    Ok(())
}
