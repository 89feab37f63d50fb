//! `kvctl status`: every member's health, role, term, leader, indexes, lag and last contact,
//! as a table or as JSON. Pure functions of the `INFO raft` replies gathered (`main.rs`).
//!
//! Lag and last contact come from the leader, the one node that knows them: its `peer_<id>`
//! lines (`match=..,next=..,lag=..,last_contact_ms=..`). Health, per member:
//! - `unreachable`: it did not answer;
//! - `no-leader`: it knows no leader of its term;
//! - `unknown`: the leader did not answer (or does not list it), so lag cannot be told;
//! - `silent`: the leader has not heard from it for more than an election timeout;
//! - `lagging`: it is more than `LAG_HEALTHY_MAX` entries behind the leader's log;
//! - `healthy`: otherwise (the leader itself is healthy when it answers).

use std::collections::HashMap;

use crate::args::Endpoint;
use crate::json::Json;

/// More entries behind the leader than this is `lagging`.
pub const LAG_HEALTHY_MAX: u64 = 1000;
/// The election timeout assumed when the leader's INFO does not say it.
const ELECTION_TIMEOUT_MS_DEFAULT: i64 = 500;

pub type Info = HashMap<String, String>;

/// One member's row.
#[derive(Debug, PartialEq)]
pub struct Member<'a> {
    pub id: Option<u64>,
    pub addr: &'a str,
    pub info: Option<&'a Info>,
    pub health: &'static str,
    pub lag: Option<u64>,
    pub last_contact_ms: Option<i64>,
}

/// What the leader reports of a follower: (lag, last contact in ms; negative if never).
fn peer_view(leader: &Info, id: u64) -> Option<(u64, i64)> {
    let line = leader.get(&format!("peer_{id}"))?;
    let field = |name: &str| {
        line.split(',')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    Some((
        field("lag")?.parse().ok()?,
        field("last_contact_ms")?.parse().ok()?,
    ))
}

/// The leader's INFO: the answering node that leads in the highest term.
fn leader_info(rows: &[(Endpoint, Option<Info>)]) -> Option<&Info> {
    rows.iter()
        .filter_map(|(_, i)| i.as_ref())
        .filter(|i| i.get("role").map(String::as_str) == Some("leader"))
        .max_by_key(|i| i.get("term").and_then(|t| t.parse::<u64>().ok()))
}

pub fn members(rows: &[(Endpoint, Option<Info>)]) -> Vec<Member<'_>> {
    let leader = leader_info(rows);
    let timeout = leader
        .and_then(|l| l.get("election_timeout_ms")?.parse::<i64>().ok())
        .unwrap_or(ELECTION_TIMEOUT_MS_DEFAULT);
    rows.iter()
        .map(|(e, info)| {
            let id = e.id.or_else(|| info.as_ref()?.get("node_id")?.parse().ok());
            let mut m = Member {
                id,
                addr: &e.addr,
                info: info.as_ref(),
                health: "unreachable",
                lag: None,
                last_contact_ms: None,
            };
            let Some(info) = info else { return m };
            let is_leader = leader.is_some_and(|l| std::ptr::eq(l, info));
            let view = leader.zip(id).and_then(|(l, id)| peer_view(l, id));
            m.health = if info.get("leader_id").is_none_or(|l| l == "0") {
                "no-leader"
            } else if is_leader {
                m.lag = Some(0);
                "healthy"
            } else if let Some((lag, contact)) = view {
                m.lag = Some(lag);
                m.last_contact_ms = (contact >= 0).then_some(contact);
                if contact < 0 || contact > timeout {
                    "silent"
                } else if lag > LAG_HEALTHY_MAX {
                    "lagging"
                } else {
                    "healthy"
                }
            } else {
                "unknown"
            };
            m
        })
        .collect()
}

const FIELDS: [&str; 6] = [
    "role",
    "term",
    "leader_id",
    "commit_index",
    "applied_index",
    "last_log_index",
];

/// The table: one row per endpoint.
pub fn status_table(rows: &[(Endpoint, Option<Info>)]) -> String {
    let mut table = vec![[
        "ID", "ADDRESS", "HEALTH", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST", "LAG",
        "CONTACT",
    ]
    .map(String::from)
    .to_vec()];
    for m in members(rows) {
        let mut row = vec![
            m.id.map_or("-".to_string(), |i| i.to_string()),
            m.addr.to_string(),
            m.health.to_string(),
        ];
        if let Some(info) = m.info {
            row.extend(
                FIELDS
                    .iter()
                    .map(|f| info.get(*f).cloned().unwrap_or_else(|| "?".to_string())),
            );
            row.push(m.lag.map_or("-".to_string(), |l| l.to_string()));
            let leads = m.info.and_then(|i| i.get("role")).map(String::as_str) == Some("leader");
            row.push(match m.last_contact_ms {
                Some(ms) => format!("{ms}ms"),
                None if leads && m.lag == Some(0) => "self".to_string(),
                None => "-".to_string(),
            });
        }
        table.push(row);
    }
    align(&table)
}

/// The same as one JSON object: `{"leader": id|null, "members": [...]}`; numbers are
/// numbers, an unknown one is null.
pub fn status_json(rows: &[(Endpoint, Option<Info>)]) -> String {
    let ms = members(rows);
    let leader = leader_info(rows).map_or(Json::Null, |l| Json::int_or_null(l.get("node_id")));
    let members = ms
        .iter()
        .map(|m| {
            let num = |k: &str| Json::int_or_null(m.info.and_then(|i| i.get(k)));
            let text = |k: &str| {
                m.info
                    .and_then(|i| i.get(k))
                    .map_or(Json::Null, |v| Json::str(v.clone()))
            };
            Json::Obj(vec![
                ("id", m.id.map_or(Json::Null, |i| Json::Int(i as i64))),
                ("address", Json::str(m.addr)),
                ("health", Json::str(m.health)),
                ("reachable", Json::Bool(m.info.is_some())),
                ("role", text("role")),
                ("term", num("term")),
                ("leader", num("leader_id")),
                ("commit_index", num("commit_index")),
                ("applied_index", num("applied_index")),
                ("last_log_index", num("last_log_index")),
                ("lag", m.lag.map_or(Json::Null, |l| Json::Int(l as i64))),
                (
                    "last_contact_ms",
                    m.last_contact_ms.map_or(Json::Null, Json::Int),
                ),
                ("voting", num("voting")),
                ("cluster_id", text("cluster_id")),
                ("state_hash", text("state_hash")),
            ])
        })
        .collect();
    let mut out = Json::Obj(vec![("leader", leader), ("members", Json::Arr(members))]).render();
    out.push('\n');
    out
}

/// Cells padded to their column's width, two spaces apart, trailing blanks trimmed.
pub fn align(table: &[Vec<String>]) -> String {
    let mut widths = Vec::new();
    for row in table {
        widths.resize(widths.len().max(row.len()), 0);
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let mut out = String::new();
    for row in table {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::parse_info;

    fn ep(id: Option<u64>, port: u16) -> Endpoint {
        Endpoint {
            id,
            addr: format!("127.0.0.1:{port}"),
        }
    }

    fn rows() -> Vec<(Endpoint, Option<Info>)> {
        let leader = parse_info(
            "# Raft\r\nnode_id:1\r\nrole:leader\r\nterm:4\r\nleader_id:1\r\ncommit_index:2000\r\n\
             applied_index:2000\r\nlast_log_index:2001\r\nelection_timeout_ms:500\r\n\
             peer_2:match=2001,next=2002,lag=0,last_contact_ms=12\r\n\
             peer_3:match=2,next=3,lag=1999,last_contact_ms=40\r\n\
             peer_4:match=2001,next=2002,lag=0,last_contact_ms=900\r\n",
        );
        let follower = |id: u64| {
            parse_info(&format!(
                "node_id:{id}\r\nrole:follower\r\nterm:4\r\nleader_id:1\r\ncommit_index:2000\r\n\
                 applied_index:2000\r\nlast_log_index:2001\r\n"
            ))
        };
        let lost = parse_info("node_id:5\r\nrole:candidate\r\nterm:9\r\nleader_id:0\r\n");
        vec![
            (ep(None, 6001), Some(leader)),
            (ep(Some(2), 6002), Some(follower(2))),
            (ep(Some(3), 6003), Some(follower(3))),
            (ep(Some(4), 6004), Some(follower(4))),
            (ep(Some(5), 6005), Some(lost)),
            (ep(Some(6), 6006), None),
        ]
    }

    #[test]
    fn health_lag_and_contact_come_from_the_leader() {
        let rows = rows();
        let got: Vec<_> = members(&rows)
            .iter()
            .map(|m| (m.id, m.health, m.lag, m.last_contact_ms))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(1), "healthy", Some(0), None),
                (Some(2), "healthy", Some(0), Some(12)),
                (Some(3), "lagging", Some(1999), Some(40)),
                (Some(4), "silent", Some(0), Some(900)),
                (Some(5), "no-leader", None, None),
                (Some(6), "unreachable", None, None),
            ]
        );
    }

    #[test]
    fn the_table_has_a_row_per_member_and_marks_the_unreachable_one() {
        let t = status_table(&rows());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "ID", "ADDRESS", "HEALTH", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST",
                "LAG", "CONTACT"
            ]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "1",
                "127.0.0.1:6001",
                "healthy",
                "leader",
                "4",
                "1",
                "2000",
                "2000",
                "2001",
                "0",
                "self"
            ]
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            [
                "3",
                "127.0.0.1:6003",
                "lagging",
                "follower",
                "4",
                "1",
                "2000",
                "2000",
                "2001",
                "1999",
                "40ms"
            ]
        );
        assert_eq!(lines[6], "6   127.0.0.1:6006  unreachable");
    }

    #[test]
    fn the_json_names_the_leader_and_gives_numbers_as_numbers() {
        let j = status_json(&rows());
        assert!(j.starts_with(r#"{"leader":1,"members":[{"id":1,"address":"127.0.0.1:6001","health":"healthy","reachable":true,"role":"leader","term":4,"#), "{j}");
        assert!(j.contains(r#"{"id":6,"address":"127.0.0.1:6006","health":"unreachable","reachable":false,"role":null,"term":null,"#), "{j}");
        assert!(j.ends_with("]}\n"));
    }
}
