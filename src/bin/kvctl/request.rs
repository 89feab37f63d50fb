//! kvctl's verbs turned into the commands the server gets (`put` is `SET`, ...), with their
//! arity checked before anything is sent.

/// A kvctl verb turned into the command the server gets, and how to show its reply.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub args: Vec<Vec<u8>>,
    pub shape: Shape,
}

/// What kind of answer the verb promises on stdout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shape {
    /// `put`: +OK.
    Ok,
    /// `get`: the raw value; nil is "missing".
    Value,
    /// `del`, `cas`, `incr`: the integer.
    Integer,
    /// `range`: key/value pairs.
    Pairs,
    /// Anything else, shown as redis-cli does.
    Raw,
}

/// Map one command (words) to a request. `status` is handled before this.
pub fn build_request(words: &[Vec<u8>]) -> Result<Request, String> {
    let Some(verb) = words.first() else {
        return Err("empty command".to_string());
    };
    let verb_lc = String::from_utf8_lossy(verb).to_ascii_lowercase();
    let rest = &words[1..];
    let with = |name: &[u8], shape| {
        let mut args = vec![name.to_vec()];
        args.extend(rest.iter().cloned());
        Ok(Request { args, shape })
    };
    let arity = |ok: bool, usage: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("usage: kvctl {usage}"))
        }
    };
    match verb_lc.as_str() {
        "put" => arity(rest.len() == 2, "put KEY VALUE").and_then(|_| with(b"SET", Shape::Ok)),
        "get" => arity(rest.len() == 1, "get KEY").and_then(|_| with(b"GET", Shape::Value)),
        "del" => arity(!rest.is_empty(), "del KEY...").and_then(|_| with(b"DEL", Shape::Integer)),
        "cas" => {
            arity(rest.len() == 3, "cas KEY OLD NEW").and_then(|_| with(b"CAS", Shape::Integer))
        }
        "incr" => arity(rest.len() == 1, "incr KEY").and_then(|_| with(b"INCR", Shape::Integer)),
        "range" => {
            arity(rest.len() == 2 || rest.len() == 3, "range FROM TO [LIMIT]")?;
            range_request(rest)
        }
        _ => Ok(Request {
            args: words.to_vec(),
            shape: Shape::Raw,
        }),
    }
}

/// `range FROM TO [LIMIT]` as `RANGE FROM TO [LIMIT n]`.
fn range_request(rest: &[Vec<u8>]) -> Result<Request, String> {
    let mut args = vec![b"RANGE".to_vec(), rest[0].clone(), rest[1].clone()];
    if let Some(limit) = rest.get(2) {
        if !limit.iter().all(u8::is_ascii_digit) || limit.is_empty() {
            return Err("range: LIMIT must be a whole number".to_string());
        }
        args.push(b"LIMIT".to_vec());
        args.push(limit.clone());
    }
    Ok(Request {
        args,
        shape: Shape::Pairs,
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use kvraft::client::split_args;

    pub fn words(s: &str) -> Vec<Vec<u8>> {
        split_args(s.as_bytes()).unwrap()
    }

    #[test]
    fn verbs_map_to_server_commands_with_their_arity_checked() {
        let r = build_request(&words("put k \"v v\"")).unwrap();
        assert_eq!(r.args, words("SET k \"v v\""));
        assert_eq!(r.shape, Shape::Ok);
        assert_eq!(build_request(&words("GET k")).unwrap().args, words("GET k"));
        assert_eq!(
            build_request(&words("del a b")).unwrap().args,
            words("DEL a b")
        );
        assert_eq!(
            build_request(&words("cas k 1 2")).unwrap().args,
            words("CAS k 1 2")
        );
        assert_eq!(
            build_request(&words("range a z 10")).unwrap().args,
            words("RANGE a z LIMIT 10")
        );
        assert_eq!(
            build_request(&words("range a z")).unwrap().args,
            words("RANGE a z")
        );
        assert_eq!(
            build_request(&words("incr n")).unwrap().args,
            words("INCR n")
        );
        let raw = build_request(&words("info raft")).unwrap();
        assert_eq!((raw.args, raw.shape), (words("info raft"), Shape::Raw));
        for bad in [
            "put k",
            "get",
            "get a b",
            "del",
            "cas k 1",
            "range a",
            "range a z x",
            "incr",
        ] {
            assert!(build_request(&words(bad)).is_err(), "{bad}");
        }
    }
}
