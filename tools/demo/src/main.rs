//! `episode-demo`: the whole pipeline on one machine, in one command.
//!
//! Makes a throwaway PKI (a CA, a server certificate for 127.0.0.1, a client
//! certificate for host `lab1`), starts the real receiver on a loopback port with
//! mTLS required, generates sample episodes (or uses `--data-root`), ships them with
//! the real shipper (a `ping`, then passes until the backlog is empty), and prints
//! where the archives landed and what the index says. Receiver and shipper run
//! in-process (their libraries), so `cargo run -p episode-demo` needs nothing else
//! built; everything else is real: TLS, files, fsync. Leaves its directory behind
//! (printed at the end) unless `--clean`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use episode_common::ByteSize;
use episode_common::logging::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "episode-demo",
    about = "Run receiver and shipper on loopback with throwaway certificates and sample episodes"
)]
struct Cli {
    /// Where to put the PKI, the receiver's store and the data root (default: a new temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Ship the episodes of this existing data root instead of generating some.
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Episodes to generate.
    #[arg(long, default_value_t = 12)]
    episodes: usize,
    /// Telemetry bytes per generated episode.
    #[arg(long, default_value_t = 2_000_000)]
    bytes: usize,
    /// Remove the demo directory at the end.
    #[arg(long)]
    clean: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    logging::init(LogFormat::Text, "episode-demo");
    let dir = match &cli.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.canonicalize()?
        }
        None => tempfile::Builder::new()
            .prefix("episode-demo-")
            .tempdir()?
            .keep(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(demo(&cli, &dir));
    rt.shutdown_timeout(Duration::from_secs(1));
    outcome?;
    if cli.clean {
        std::fs::remove_dir_all(&dir)?;
    } else {
        println!("\neverything is under {}", dir.display());
    }
    Ok(())
}

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn make_pki(dir: &Path) -> Result<Pki> {
    std::fs::create_dir_all(dir)?;
    let ca = episode_test_pki::Ca::new("episode-demo CA");
    let server = ca.server();
    let client = ca.client("lab1", -time::Duration::days(1), time::Duration::days(365));
    let pki = Pki {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("lab1.pem"),
        client_key: dir.join("lab1.key"),
    };
    for (path, text) in [
        (&pki.ca, ca.pem),
        (&pki.server_cert, server.cert),
        (&pki.server_key, server.key),
        (&pki.client_cert, client.cert),
        (&pki.client_key, client.key),
    ] {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(pki)
}

/// Sample episodes shaped like the recorder's: meta.json, events, labels, and a
/// per-process telemetry JSONL that compresses like real telemetry; done.marker last.
fn generate(data_root: &Path, n: usize, bytes: usize) -> Result<()> {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    const COMMS: [&str; 6] = ["python3", "chrome", "bash", "sshd", "Xorg", "node"];
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() as u64 * 1000;
    for i in 0..n {
        let started_ms = now_ms - ((n - i) as u64) * 600_000;
        let id = ulid(started_ms, &mut rng);
        let dir = data_root.join("episodes").join(&id);
        std::fs::create_dir_all(&dir)?;
        let started = started_ms / 1000;
        let meta = serde_json::json!({"episode_id": id, "host_id": "lab1", "code_commit": "3f2c1e9a0b7d4c5e6f708192a3b4c5d6e7f80912", "started_at": started, "ended_at": started + 600, "schema_version": 1});
        std::fs::write(dir.join("meta.json"), meta.to_string())?;
        std::fs::write(dir.join("labels.jsonl"), "{\"label\":\"demo\"}\n")?;
        let mut events = String::new();
        for k in 0..20 {
            events.push_str(&format!("{{\"ts\":{},\"kind\":\"key\"}}\n", started + k));
        }
        std::fs::write(dir.join("events.jsonl"), events)?;
        let mut telemetry =
            std::io::BufWriter::new(std::fs::File::create(dir.join("telemetry-proc.jsonl"))?);
        let (mut written, mut ts) = (0usize, started as f64);
        while written < bytes {
            ts += 0.1;
            let line = format!(
                "{{\"ts\":{ts:.1},\"pid\":{},\"comm\":\"{}\",\"cpu\":{:.2},\"rss_kb\":{}}}\n",
                rng.random_range(1..40_000),
                COMMS[rng.random_range(0..COMMS.len())],
                rng.random::<f64>() * 100.0,
                rng.random_range(1000..4_000_000)
            );
            telemetry.write_all(line.as_bytes())?;
            written += line.len();
        }
        telemetry.flush()?;
        std::fs::write(dir.join("done.marker"), "")?;
    }
    Ok(())
}

fn ulid(ms: u64, rng: &mut impl rand::Rng) -> String {
    const A: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut out = vec![0u8; 26];
    let mut v = ms;
    for slot in out[..10].iter_mut().rev() {
        *slot = A[(v % 32) as usize];
        v /= 32;
    }
    for slot in &mut out[10..] {
        *slot = A[rng.random_range(0..32)];
    }
    String::from_utf8(out).expect("ascii")
}

async fn demo(cli: &Cli, dir: &Path) -> Result<()> {
    println!("demo directory {}", dir.display());
    let pki = make_pki(&dir.join("pki"))?;
    println!(
        "1/5 throwaway PKI: CA, server certificate for 127.0.0.1, client certificate for host lab1"
    );

    let receiver_dir = dir.join("receiver");
    std::fs::create_dir_all(&receiver_dir)?;
    let receiver_toml = receiver_dir.join("receiver.toml");
    std::fs::write(
        &receiver_toml,
        format!(
            "listen = \"127.0.0.1:0\"\nstore_root = {:?}\nincoming_root = {:?}\nindex_path = {:?}\nfree_space_reserve = \"64MiB\"\n\
             [tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
            receiver_dir.join("store"),
            receiver_dir.join("incoming"),
            receiver_dir.join("index.jsonl"),
            pki.server_cert,
            pki.server_key,
            pki.ca
        ),
    )?;
    let config = episode_receiver::config::Config::load(&receiver_toml)?;
    let path = receiver_toml.clone();
    let (state, _) =
        tokio::task::spawn_blocking(move || episode_receiver::open(config, &path)).await??;
    let listener = episode_receiver::server::bind("127.0.0.1:0".parse()?).await?;
    let url = format!("https://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(episode_receiver::server::run(
        state,
        listener,
        None,
        async {
            let _ = stop_rx.await;
            "the demo ended"
        },
    ));
    println!(
        "2/5 receiver listening on {url} (mTLS required), store {}",
        receiver_dir.join("store").display()
    );

    let data_root = match &cli.data_root {
        Some(root) => root.clone(),
        None => {
            let root = dir.join("lab1");
            generate(&root, cli.episodes, cli.bytes)?;
            println!(
                "3/5 generated {} episodes of ~{} under {}",
                cli.episodes,
                ByteSize(cli.bytes as u64),
                root.display()
            );
            root
        }
    };
    if cli.data_root.is_some() {
        println!("3/5 shipping the episodes of {}", data_root.display());
    }
    let shipper_toml = dir.join("shipper.toml");
    std::fs::write(
        &shipper_toml,
        format!(
            "host_id = \"lab1\"\ndata_root = {:?}\nscan_interval = \"1s\"\n[receiver]\nurl = \"{url}\"\nca_bundle = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n\
             [retry]\ninitial_backoff = \"1s\"\nmax_backoff = \"5s\"\n",
            data_root, pki.ca, pki.client_cert, pki.client_key
        ),
    )?;
    let shipper_config = episode_shipper::config::Config::load(&shipper_toml)?;
    let transport = episode_shipper::transport::Transport::new(&shipper_config);
    match transport.health().await {
        Ok(a) if a.status == 200 => println!(
            "4/5 ping: receiver healthy, it sees us as {}",
            a.body["host_id"]
        ),
        Ok(a) => bail!("ping answered {}: {}", a.status, a.error()),
        Err(e) => bail!("ping failed: {e}"),
    }

    let started = Instant::now();
    let (mut shipped, mut bytes) = (0usize, 0u64);
    for _ in 0..20 {
        let pass = episode_shipper::daemon::once(shipper_config.clone()).await?;
        shipped += pass.shipped;
        bytes += pass.bytes;
        let remaining = pass.scanned - pass.shipped - pass.fatal;
        if remaining == 0 || pass.scanned == 0 {
            break;
        }
        println!(
            "    {remaining} episode(s) left ({}); next pass in 1s",
            pass.stopped_by.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "5/5 shipped {shipped} episode(s), {} of archives, in {secs:.2}s ({}/s)",
        ByteSize(bytes),
        ByteSize((bytes as f64 / secs.max(0.001)) as u64)
    );

    let _ = stop_tx.send(());
    server.await?;

    let store = receiver_dir.join("store").join("lab1");
    let mut archives: Vec<_> = std::fs::read_dir(&store)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    archives.sort();
    println!("\nstored under {}:", store.display());
    for path in archives.iter().take(5) {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        println!(
            "  {}  {}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            ByteSize(len)
        );
    }
    if archives.len() > 5 {
        println!("  … and {} more", archives.len() - 5);
    }
    let index = std::fs::read_to_string(receiver_dir.join("index.jsonl")).unwrap_or_default();
    println!(
        "index {} has {} row(s); the last one:",
        receiver_dir.join("index.jsonl").display(),
        index.lines().count()
    );
    if let Some(last) = index.lines().last() {
        let row: serde_json::Value = serde_json::from_str(last)?;
        println!("{}", serde_json::to_string_pretty(&row)?);
    }
    println!(
        "\nthe shipper's view (episode-shipper --config {} status):",
        shipper_toml.display()
    );
    print!(
        "{}",
        episode_shipper::status::render(&episode_shipper::status::collect(&shipper_config))
    );
    Ok(())
}
