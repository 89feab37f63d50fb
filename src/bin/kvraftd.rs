//! kvraftd: one member of a kvraft cluster.
//!
//!     kvraftd --config conf/cluster.conf --id 2 [--data-dir DIR] [--bootstrap | --join]
//!     kvraftd --config conf/cluster.conf --id 2 [--data-dir DIR] --restore BACKUP
//!
//! Arguments and start-up only; everything else is `kvraft::node`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use kvraft::config::{Config, InitialClusterState};
use kvraft::raft::NodeId;

const USAGE: &str = "usage: kvraftd --config FILE --id N [--data-dir DIR] [--bootstrap | --join]
       kvraftd --config FILE --id N [--data-dir DIR] --restore BACKUP

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
  --restore BACKUP create this node's (absent or empty) data directory from BACKUP (made by
                   `kvctl snapshot save`) and exit. Do it on every member, then start one
                   with --bootstrap and the others plainly: the data comes up as a NEW
                   cluster (a new cluster id). A non-empty directory or a damaged backup is
                   refused (exit 2) and nothing is left behind
  RUST_LOG         log filter (default: info)

signals: SIGTERM/SIGINT stop (sync, then exit 0); SIGHUP reloads the TLS certificates

exit status: 0 stopped, 1 runtime failure, 2 configuration error,
             3 identity error (a log without its identity file, an identity file
               that does not read, or a data directory of another cluster than a
               majority of the configured members); systemd should not restart on 2 or 3";

struct Args {
    config: PathBuf,
    id: NodeId,
    data_dir: Option<PathBuf>,
    join: bool,
    bootstrap: bool,
    restore: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut config = None;
    let mut id = None;
    let mut data_dir = None;
    let mut join = false;
    let mut bootstrap = false;
    let mut restore = None;
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
            "--restore" => restore = Some(PathBuf::from(value("--restore")?)),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if join && bootstrap {
        return Err("--bootstrap and --join exclude each other".into());
    }
    if restore.is_some() && (join || bootstrap) {
        return Err(
            "--restore only creates the data directory; pass --bootstrap when starting the node afterwards".into(),
        );
    }
    Ok(Args {
        config: config.ok_or("--config is required")?,
        id: id.ok_or("--id is required")?,
        data_dir,
        join,
        bootstrap,
        restore,
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
    // The state machine's record pages ask for huge pages too (kv::records, "Huge pages").
    kvraft::kv::records::set_huge_pages(cfg.huge_pages);
    if cfg.huge_pages && args.restore.is_none() {
        if let Err(e) = huge_pages::reexec_if_needed() {
            log::warn!(
                "huge_pages: re-executing with {}: {e}; running with 4 KiB pages",
                huge_pages::TUNABLE
            );
        }
    }
    if let Some(backup) = &args.restore {
        return match kvraft::node::restore::restore(&cfg, backup) {
            Ok(r) => {
                println!(
                    "restored snapshot {} ({} keys, state hash {:016x}) into {}",
                    r.last,
                    r.keys,
                    r.state_hash,
                    r.data_dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kvraftd: restore: {e}");
                ExitCode::from(e.exit_code())
            }
        };
    }
    match kvraft::node::run(cfg, args.join) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("fatal: {e}");
            eprintln!("kvraftd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `huge_pages = true` (the config key): transparent huge pages for the heap.
///
/// The state machine's records are small `malloc`s in glibc's main heap (hundreds of MiB for a
/// million keys). `fork()` for a snapshot copies one page-table entry per mapped 4 KiB page and
/// takes a reference on each page: 17-260 ms for 1M keys in the cluster bench (the loop's one
/// pause, for every client at once), against 2-5 ms when the heap is in 2 MiB pages (one entry
/// each). glibc madvises its heap (`MADV_HUGEPAGE`) as it grows only under the tunable
/// `glibc.malloc.hugetlb=1`, read once by the dynamic loader at exec: so the process sets it
/// and executes itself again (same pid, same arguments) before doing anything else.
mod huge_pages {
    use std::ffi::OsString;
    use std::io;
    use std::os::unix::process::CommandExt;

    pub const TUNABLE: &str = "glibc.malloc.hugetlb=1";
    const VAR: &str = "GLIBC_TUNABLES";
    const THP_MODE: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

    /// Executes this program again with `TUNABLE` added to `GLIBC_TUNABLES`, unless that
    /// variable already sets `glibc.malloc.hugetlb` (this is the second run, or the operator
    /// chose) or the kernel never gives huge pages. Returns only without re-executing (`Ok`) or
    /// when `exec` failed.
    pub fn reexec_if_needed() -> io::Result<()> {
        let current = std::env::var_os(VAR);
        let Some(value) = with_tunable(current.as_deref()) else {
            return Ok(());
        };
        let thp = std::fs::read_to_string(THP_MODE).unwrap_or_default();
        if thp.contains("[never]") || thp.is_empty() {
            return Ok(());
        }
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_else(|| OsString::from("kvraftd"));
        // The binary's own path, not `/proc/self/exe`: the kernel names the process after the
        // file executed, and `/proc/self/exe` would rename it `exe` (so `pkill kvraftd`, and
        // tools that check /proc/PID/comm, would no longer find it). The link is the fallback
        // when the file was replaced or removed since this process started.
        let exe = std::env::current_exe()
            .ok()
            .filter(|p| p.is_file())
            .unwrap_or_else(|| "/proc/self/exe".into());
        Err(std::process::Command::new(exe)
            .arg0(arg0)
            .args(args)
            .env(VAR, value)
            .exec())
    }

    /// `GLIBC_TUNABLES` with `TUNABLE` added (`None`: it already sets `glibc.malloc.hugetlb`).
    pub fn with_tunable(current: Option<&std::ffi::OsStr>) -> Option<OsString> {
        let current = current
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = TUNABLE.split('=').next().expect("name=value");
        if current
            .split(':')
            .any(|t| t.split('=').next() == Some(name))
        {
            return None;
        }
        Some(OsString::from(if current.is_empty() {
            TUNABLE.to_string()
        } else {
            format!("{current}:{TUNABLE}")
        }))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_tunable_is_added_once_and_kept_beside_others() {
            let s = |v: &str| Some(OsString::from(v));
            assert_eq!(with_tunable(None), s(TUNABLE));
            assert_eq!(with_tunable(Some("".as_ref())), s(TUNABLE));
            assert_eq!(
                with_tunable(Some("glibc.malloc.arena_max=2".as_ref())),
                s("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
            );
            assert_eq!(with_tunable(Some(TUNABLE.as_ref())), None);
            assert_eq!(with_tunable(Some("glibc.malloc.hugetlb=0".as_ref())), None);
            assert_eq!(
                with_tunable(Some("a.b=1:glibc.malloc.hugetlb=2".as_ref())),
                None
            );
        }
    }
}
