//! `startup`: how long a server takes from exec to its readiness line.
//!
//! Owns one measurement loop: start the command with stdout piped, time until a line
//! starting with the expected text (`listening on` by default) appears, then SIGTERM
//! it and reap it (SIGKILL after 10 s). Its stderr goes to a file the caller names,
//! or nowhere. Runs and kills only the children it started.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::stats::median;

#[derive(Debug, Clone)]
pub struct Options {
    pub command: Vec<String>,
    pub runs: usize,
    pub expect: String,
    pub stderr: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub runs_s: Vec<f64>,
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL; reaps the child.
pub fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped, so the
        // pid cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn once(options: &Options) -> Result<f64> {
    let (program, args) = options
        .command
        .split_first()
        .context("no command given (after --)")?;
    let stderr = match &options.stderr {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        None => Stdio::null(),
    };
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let found = loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with(&options.expect) => {
                break Some(started.elapsed().as_secs_f64());
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break None,
        }
    };
    terminate(&mut child, Duration::from_secs(10));
    match found {
        Some(s) => Ok(s),
        None => bail!(
            "{program} exited (or closed stdout) without printing a line starting with {:?}",
            options.expect
        ),
    }
}

pub fn run(options: &Options) -> Result<Timing> {
    let mut runs = Vec::with_capacity(options.runs);
    for _ in 0..options.runs.max(1) {
        runs.push(once(options)?);
    }
    let min = runs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = runs.iter().copied().fold(0.0, f64::max);
    Ok(Timing {
        median_s: median(&runs).unwrap_or(0.0),
        runs_s: runs,
        min_s: min,
        max_s: max,
    })
}
