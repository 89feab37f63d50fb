//! kvctl's command line: options, the endpoint list, and the usage text. No I/O beyond
//! reading the config file that names the endpoints.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kvraft::client::blocking::ClientTls;
use kvraft::config::load_members;

pub const USAGE: &str = "\
usage: kvctl [-e host:port[,host:port...]] [-c FILE] [-t SECONDS]
             [--tls --cacert CA.pem [--cert CERT.pem --key KEY.pem]] [--user USER] [--password PW]
             [COMMAND ARGS...]

Commands:
  put KEY VALUE            store VALUE under KEY (SET); prints OK
  get KEY                  print KEY's value; a missing key prints nothing and exits 1
  del KEY...               delete keys; prints how many existed
  cas KEY OLD NEW          set KEY to NEW if it holds OLD; prints 1 if it did, else 0
  range FROM TO [LIMIT]    print `key<TAB>value` lines for FROM <= key < TO
  incr KEY                 add 1 to the integer at KEY; prints the result
  status                   one line per member: role, term, leader, commit, applied, last index
  ANYTHING ...             sent as a raw command (kvctl info raft, kvctl dbsize)
With no command, kvctl reads one command per line from stdin (words split on whitespace,
\"double quotes\" allowed) and prints one answer per line, over one connection.

Options:
  -e, --endpoints LIST     client addresses to try in turn (a bare port means 127.0.0.1:PORT)
  -c, --config FILE        take the endpoints from FILE's client= addresses
                           (default conf/cluster.conf, else 127.0.0.1:6001,6002,6003)
  -t, --timeout SECONDS    give up after this long (default 10); retries while no leader
  --tls                    speak TLS to the client port (needs --cacert)
  --cacert FILE            trust servers whose certificate this CA signed (implies --tls)
  --cert FILE, --key FILE  present this client certificate (tls_client_auth = require)
  --user USER              AUTH as USER (`default` or `admin`); default: the default user
  --password PW            AUTH with PW (visible in `ps`: prefer the KVRAFT_PASSWORD
                           environment variable, which is used when --password is not given)
Every write goes through an exactly-once session (opened on the first write), so kvctl
resends it after a lost leader or connection and the cluster applies it once.
  -h, --help               this text

Exit status: 0 success, 1 `get` of a missing key, 2 error.";

/// Parsed command line.
#[derive(Debug, PartialEq)]
pub struct Options {
    pub endpoints: Option<Vec<String>>,
    pub config: Option<PathBuf>,
    pub timeout: Duration,
    pub tls: bool,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `--user`: the user to AUTH as.
    pub user: Option<String>,
    /// `--password` (the caller falls back to `KVRAFT_PASSWORD`).
    pub password: Option<String>,
    pub words: Vec<String>,
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Invocation {
    Help,
    Run(Box<Options>),
}

/// Options come first; the first word that is not an option starts the command, and every
/// word after it belongs to the command (so `kvctl put k -v` stores "-v").
pub fn parse_options(argv: &[String]) -> Result<Invocation, String> {
    let mut opts = Options {
        endpoints: None,
        config: None,
        timeout: Duration::from_secs(10),
        tls: false,
        cacert: None,
        cert: None,
        key: None,
        user: None,
        password: None,
        words: Vec::new(),
    };
    let mut i = 0;
    while i < argv.len() {
        let arg = argv[i].as_str();
        let mut value = || {
            i += 1;
            argv.get(i)
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg {
            "-h" | "--help" => return Ok(Invocation::Help),
            "-e" | "--endpoints" => opts.endpoints = Some(parse_endpoints(&value()?)?),
            "-c" | "--config" => opts.config = Some(PathBuf::from(value()?)),
            "-t" | "--timeout" => opts.timeout = parse_timeout(&value()?)?,
            "--tls" => opts.tls = true,
            "--cacert" => opts.cacert = Some(PathBuf::from(value()?)),
            "--cert" => opts.cert = Some(PathBuf::from(value()?)),
            "--key" => opts.key = Some(PathBuf::from(value()?)),
            "--user" => opts.user = Some(value()?),
            "--password" => opts.password = Some(value()?),
            "--" => {
                opts.words.extend(argv[i + 1..].iter().cloned());
                break;
            }
            _ if arg.starts_with('-') && opts.words.is_empty() && arg.len() > 1 => {
                return Err(format!("unknown option `{arg}`"))
            }
            _ => {
                opts.words.extend(argv[i..].iter().cloned());
                break;
            }
        }
        i += 1;
    }
    Ok(Invocation::Run(Box::new(opts)))
}

/// The TLS configuration the options ask for: none without `--tls` or `--cacert`.
pub fn client_tls(opts: &Options) -> Result<Option<ClientTls>, String> {
    let cert_key = match (&opts.cert, &opts.key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        _ => return Err("--cert and --key go together".to_string()),
    };
    match &opts.cacert {
        Some(ca) => ClientTls::load(ca, cert_key).map(Some),
        None if opts.tls || cert_key.is_some() => {
            Err("TLS needs --cacert (the CA that signed the servers' certificates)".to_string())
        }
        None => Ok(None),
    }
}

fn parse_timeout(v: &str) -> Result<Duration, String> {
    let secs: f64 = v.parse().map_err(|_| format!("bad timeout `{v}`"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("timeout `{v}` must be from 0 to 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `host:port,host:port`; a bare port means 127.0.0.1.
fn parse_endpoints(list: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.parse::<u16>().is_ok() {
            out.push(format!("127.0.0.1:{part}"));
        } else if part
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            out.push(part.to_string());
        } else {
            return Err(format!("bad endpoint `{part}` (expected host:port)"));
        }
    }
    if out.is_empty() {
        return Err("no endpoints given".to_string());
    }
    Ok(out)
}

/// One endpoint of the cluster, with the member id when the config file names it.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub id: Option<u64>,
    pub addr: String,
}

/// The endpoints to use: `-e`, else `-c FILE`, else conf/cluster.conf if it exists, else the
/// default three local ports. Never empty.
pub fn endpoints(opts: &Options) -> Result<Vec<Endpoint>, String> {
    let unnamed = |addr: &str| Endpoint {
        id: None,
        addr: addr.to_string(),
    };
    if let Some(list) = &opts.endpoints {
        return Ok(list.iter().map(|a| unnamed(a)).collect());
    }
    let path = opts
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("conf/cluster.conf"));
    if opts.config.is_none() && !Path::new(&path).exists() {
        return Ok(["127.0.0.1:6001", "127.0.0.1:6002", "127.0.0.1:6003"]
            .iter()
            .map(|a| unnamed(a))
            .collect());
    }
    // Never empty: the config parser refuses a file without members.
    let members = load_members(&path).map_err(|e| e.to_string())?;
    Ok(members
        .iter()
        .map(|m| Endpoint {
            id: Some(m.id.0),
            addr: m.client.to_string(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_come_before_the_command_and_the_rest_is_the_command() {
        let Ok(Invocation::Run(o)) = parse_options(&argv("-e 6001,h:7 -t 2.5 put k -v")) else {
            panic!()
        };
        assert_eq!(
            o.endpoints,
            Some(vec!["127.0.0.1:6001".into(), "h:7".into()])
        );
        assert_eq!(o.timeout, Duration::from_millis(2500));
        assert_eq!(o.words, argv("put k -v"));
        assert_eq!(parse_options(&argv("--help")), Ok(Invocation::Help));
        assert!(parse_options(&argv("-x get k")).is_err());
        assert!(parse_options(&argv("-t 0 get k")).is_err());
        assert!(parse_options(&argv("-e")).is_err());
        assert!(parse_options(&argv("-e nohostport get k")).is_err());
        let Ok(Invocation::Run(o)) = parse_options(&argv("--user admin --password pw member list"))
        else {
            panic!()
        };
        assert_eq!(
            (o.user.as_deref(), o.password.as_deref()),
            (Some("admin"), Some("pw"))
        );
        assert_eq!(o.words, argv("member list"));
        assert!(parse_options(&argv("--password")).is_err());
    }

    #[test]
    fn tls_options_need_a_ca_and_a_certificate_needs_its_key() {
        let run = |s: &str| match parse_options(&argv(s)) {
            Ok(Invocation::Run(o)) => o,
            other => panic!("{s}: {other:?}"),
        };
        let o = run("--tls --cacert ca.pem --cert c.pem --key c.key get k");
        assert_eq!(o.cacert, Some(PathBuf::from("ca.pem")));
        assert_eq!((o.tls, o.words.len()), (true, 2));
        assert!(client_tls(&run("get k")).unwrap().is_none());
        let err = client_tls(&run("--tls get k")).unwrap_err();
        assert!(err.contains("--cacert"), "{err}");
        let err = client_tls(&run("--cacert ca.pem --cert c.pem get k")).unwrap_err();
        assert!(err.contains("--key"), "{err}");
        let err = client_tls(&run("--cacert /nonexistent/ca.pem get k")).unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
