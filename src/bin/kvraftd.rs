//! kvraftd: one member of a kvraft cluster.
//!
//!     kvraftd --config conf/cluster.conf --id 2 [--data-dir DIR] [--bootstrap | --join]
//!
//! Arguments and start-up only; everything else is `kvraft::node`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use kvraft::config::{Config, InitialClusterState};
use kvraft::raft::NodeId;

const USAGE: &str = "usage: kvraftd --config FILE --id N [--data-dir DIR] [--bootstrap | --join]

  --config FILE    the cluster config (members and tuning keys); see README
  --id N           this node's id (a node.N line of the config)
  --data-dir DIR   overrides data_dir from the config
  --bootstrap      on an empty data directory, form a NEW cluster with this node as its
                   only voter (initial_cluster_state = new); the other configured members
                   are admitted as they connect. Once, on one node; ignored when the data
                   directory already holds a cluster
  --join           the default without --bootstrap (kept for old scripts): an empty node
                   waits for the cluster's leader to admit it (configured members are
                   admitted on their own; others need MEMBER ADD)
  RUST_LOG         log filter (default: info)

signals: SIGTERM/SIGINT stop (sync, then exit 0); SIGHUP reloads the TLS certificates

exit status: 0 stopped, 1 runtime failure, 2 configuration error,
             3 identity error (a log without its identity file, or an identity file
               that does not read); systemd should not restart on 2 or 3";

struct Args {
    config: PathBuf,
    id: NodeId,
    data_dir: Option<PathBuf>,
    join: bool,
    bootstrap: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut config = None;
    let mut id = None;
    let mut data_dir = None;
    let mut join = false;
    let mut bootstrap = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--config" | "-c" => config = Some(PathBuf::from(value("--config")?)),
            "--id" => {
                let v = value("--id")?;
                let n: u64 = v
                    .parse()
                    .map_err(|_| format!("--id {v:?} is not a positive integer"))?;
                if n == 0 {
                    return Err("--id must be positive".into());
                }
                id = Some(NodeId(n));
            }
            "--data-dir" => data_dir = Some(PathBuf::from(value("--data-dir")?)),
            "--join" => join = true,
            "--bootstrap" => bootstrap = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if join && bootstrap {
        return Err("--bootstrap and --join exclude each other".into());
    }
    Ok(Args {
        config: config.ok_or("--config is required")?,
        id: id.ok_or("--id is required")?,
        data_dir,
        join,
        bootstrap,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("kvraftd: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let id = args.id;
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |buf, record| {
            writeln!(
                buf,
                "{} [node {id}] {:5} {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            )
        })
        .init();
    let cfg = match Config::load(&args.config, id, args.data_dir.as_deref()) {
        Ok(mut c) => {
            if args.bootstrap {
                c.initial_cluster_state = InitialClusterState::New;
            }
            c
        }
        Err(e) => {
            eprintln!("kvraftd: {e}");
            return ExitCode::from(2);
        }
    };
    match kvraft::node::run(cfg, args.join) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("fatal: {e}");
            eprintln!("kvraftd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
