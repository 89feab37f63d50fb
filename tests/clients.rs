//! The client matrix: real Redis client libraries against a real 3-node cluster. Each runs the
//! same short script (tools/clients/): connect; SET/GET/INCR/MGET/DEL; a MULTI/EXEC that
//! applies whole (and one that aborts: a queueing error, or in redis-py a broken WATCH); a pipeline of 1,000 commands; SCAN over 10,000 keys (each exactly
//! once); a pool of 50 concurrent users; a leader change in the middle of a stream of writes,
//! ridden out by the client's own retry. Each script runs through the leader and through a
//! follower, and must exit 0 printing `OK <client> <version>`.
//!
//! The tools come from `make setup` (redis-py from pip, node-redis and ioredis from npm in
//! tools/clients/, redis-cli and redis-benchmark from Debian). A missing tool skips its row
//! with a message, unless `KVRAFT_REQUIRE_CLIENTS=1` (set by `make test` and
//! `make test-clients`), which makes it a failure. One more cluster runs the script with
//! `requirepass` and `adminpass` set, every client authenticated (`MATRIX_PASSWORD`).

mod harness;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use harness::{serial, Cluster, Options};

const LONG: Duration = Duration::from_secs(30);

fn tools() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/clients")
}

/// Whether a row's tool is present; a missing one fails when clients are required.
fn available(what: &str, probe: &mut Command) -> bool {
    let ok = probe.output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        let msg = format!("{what} is not installed (make setup)");
        assert!(
            std::env::var_os("KVRAFT_REQUIRE_CLIENTS").is_none(),
            "{msg}"
        );
        eprintln!("{msg}; skipping its row of the client matrix");
    }
    ok
}

/// Run one row through the leader, then through a follower.
fn run_row(c: &Cluster, name: &str, program: &str, args: &[&str]) {
    run_row_env(c, name, program, args, &[]);
}

/// `run_row` with environment variables for the script (`MATRIX_PASSWORD`, ...).
fn run_row_env(c: &Cluster, name: &str, program: &str, args: &[&str], env: &[(&str, &str)]) {
    for via in ["leader", "follower"] {
        let leader = c.wait_leader(LONG);
        let node = match via {
            "leader" => leader,
            _ => (1..=3).find(|&id| id != leader).expect("a follower"),
        };
        let port = c.node(node).client.port().to_string();
        let run = format!("{}-{via}", name.replace(' ', "-"));
        let mut cmd = Command::new(program);
        cmd.args(args).arg(&port).arg(&run).current_dir(tools());
        cmd.envs(env.iter().copied());
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{name}: cannot run {program}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || !stdout.contains("OK ") {
            c.dump_logs();
            panic!(
                "{name} through the {via} failed ({}):\n{stdout}\n{stderr}",
                out.status
            );
        }
        eprintln!("{name} through the {via}: {}", stdout.trim());
    }
}

fn python_has_redis() -> bool {
    available(
        "redis-py",
        Command::new("python3").args(["-c", "import redis"]),
    )
}

fn node_has(module: &str) -> bool {
    available(
        module,
        Command::new("node")
            .args(["-e", &format!("require('{module}')")])
            .current_dir(tools()),
    )
}

#[test]
fn redis_py_default_and_resp2_pass_the_matrix() {
    if !python_has_redis() {
        return;
    }
    let _g = serial();
    let c = Cluster::start(Options::default());
    run_row(&c, "redis-py default", "python3", &["matrix.py"]);
    run_row(
        &c,
        "redis-py resp2",
        "python3",
        &["matrix.py", "--proto", "2"],
    );
}

#[test]
fn node_redis_resp2_and_resp3_and_ioredis_pass_the_matrix() {
    let (node_redis, ioredis) = (node_has("redis"), node_has("ioredis"));
    let _g = serial();
    let c = Cluster::start(Options::default());
    if node_redis {
        run_row(
            &c,
            "node-redis resp2",
            "node",
            &["matrix.js", "node-redis", "2"],
        );
        run_row(
            &c,
            "node-redis resp3",
            "node",
            &["matrix.js", "node-redis", "3"],
        );
    }
    if ioredis {
        run_row(&c, "ioredis", "node", &["matrix.js", "ioredis", "2"]);
    }
}

#[test]
fn redis_cli_and_redis_benchmark_pass_the_matrix() {
    if !available("redis-cli", Command::new("redis-cli").arg("--version"))
        || !available(
            "redis-benchmark",
            Command::new("redis-benchmark").arg("--version"),
        )
    {
        return;
    }
    let _g = serial();
    let c = Cluster::start(Options::default());
    run_row(&c, "redis-cli", "sh", &["matrix.sh"]);
}

/// The password row: a cluster with `requirepass` and `adminpass`; redis-py (AUTH in RESP2,
/// HELLO 3 AUTH in RESP3), node-redis (RESP3: HELLO 3 AUTH) and redis-cli/redis-benchmark run
/// the whole script authenticated, TRANSFER as `admin` (issue 18).
#[test]
fn clients_with_passwords_pass_the_matrix() {
    let (py, node_redis) = (python_has_redis(), node_has("redis"));
    let cli = available("redis-cli", Command::new("redis-cli").arg("--version"));
    let _g = serial();
    let c = Cluster::start(Options {
        extra: vec![
            "requirepass = matrix-data-pw".into(),
            "adminpass = matrix-admin-pw".into(),
        ],
        ..Options::default()
    });
    let env = [
        ("MATRIX_PASSWORD", "matrix-data-pw"),
        ("MATRIX_ADMINPASS", "matrix-admin-pw"),
    ];
    if py {
        run_row_env(&c, "redis-py auth", "python3", &["matrix.py"], &env);
        let args = ["matrix.py", "--proto", "3"];
        run_row_env(&c, "redis-py auth resp3", "python3", &args, &env);
    }
    if node_redis {
        let args = ["matrix.js", "node-redis", "3"];
        run_row_env(&c, "node-redis auth resp3", "node", &args, &env);
    }
    if cli {
        run_row_env(&c, "redis-cli auth", "sh", &["matrix.sh"], &env);
    }
}
