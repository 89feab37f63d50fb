//! Redis's glob patterns (`KEYS`, `SCAN MATCH`, `CONFIG GET`): `*` any run, `?` any byte,
//! `[abc]`, `[^abc]`, `[a-z]` one byte of a class, `\x` the byte x.
//!
//! Matches what Redis's `stringmatchlen` accepts, including its quirks (a range may be written
//! backwards, `[a-]` holds `a` and `-`... up to the end of the pattern when `]` is missing, an
//! empty string matches only the empty pattern), but runs in O(pattern × string) steps
//! without recursion: a `*` is retried from one place only (the classic greedy algorithm,
//! equivalent here because every other token matches exactly one byte).

/// Whether `pattern` matches the whole of `s`; `nocase` folds ASCII case.
pub fn matches(pattern: &[u8], s: &[u8], nocase: bool) -> bool {
    if s.is_empty() {
        // Redis's loop runs only while both are non-empty.
        return pattern.is_empty();
    }
    let (mut p, mut i) = (0usize, 0usize);
    // After the last `*` seen: where its pattern resumes, and the next string position to try.
    let mut star: Option<(usize, usize)> = None;
    loop {
        if p < pattern.len() && pattern[p] == b'*' {
            p += 1;
            star = Some((p, i));
            continue;
        }
        if i == s.len() && p == pattern.len() {
            return true;
        }
        if p < pattern.len() && i < s.len() {
            if let Some(next) = match_one(pattern, p, s[i], nocase) {
                p = next;
                i += 1;
                continue;
            }
        }
        match star {
            Some((sp, si)) if si < s.len() => {
                star = Some((sp, si + 1));
                p = sp;
                i = si + 1;
            }
            _ => return false,
        }
    }
}

fn fold(b: u8, nocase: bool) -> u8 {
    if nocase {
        b.to_ascii_lowercase()
    } else {
        b
    }
}

/// If the one-byte token at `pattern[p]` (not `*`) matches `c`, the position after it.
fn match_one(pattern: &[u8], p: usize, c: u8, nocase: bool) -> Option<usize> {
    match pattern[p] {
        b'?' => Some(p + 1),
        b'[' => match_class(pattern, p + 1, c, nocase),
        b'\\' if p + 1 < pattern.len() => {
            (fold(pattern[p + 1], nocase) == fold(c, nocase)).then_some(p + 2)
        }
        b => (fold(b, nocase) == fold(c, nocase)).then_some(p + 1),
    }
}

/// A `[...]` class whose body starts at `pattern[p]`.
fn match_class(pattern: &[u8], mut p: usize, c: u8, nocase: bool) -> Option<usize> {
    let negate = pattern.get(p) == Some(&b'^');
    if negate {
        p += 1;
    }
    let c = fold(c, nocase);
    let mut hit = false;
    loop {
        match pattern.get(p) {
            // Unterminated: the class ends with the pattern (its last byte is its last member).
            None => {
                p = pattern.len() - 1;
                break;
            }
            Some(b']') => break,
            Some(b'\\') if p + 1 < pattern.len() => {
                p += 1;
                hit |= fold(pattern[p], nocase) == c;
            }
            Some(&start) if p + 2 < pattern.len() && pattern[p + 1] == b'-' => {
                let (a, b) = (fold(start, nocase), fold(pattern[p + 2], nocase));
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                hit |= (lo..=hi).contains(&c);
                p += 2;
            }
            Some(&b) => hit |= fold(b, nocase) == c,
        }
        p += 1;
    }
    (hit != negate).then_some(p + 1)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs_match_as_redis_does() {
        let m = |p: &str, s: &str| matches(p.as_bytes(), s.as_bytes(), false);
        assert!(m("*", "anything"));
        assert!(m("h?llo", "hello") && m("h?llo", "hallo") && !m("h?llo", "hllo"));
        assert!(m("h*llo", "hllo") && m("h*llo", "heeeello"));
        assert!(m("h[ae]llo", "hello") && !m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo") && !m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo") && m("h[b-a]llo", "hallo") && !m("h[a-b]llo", "hcllo"));
        assert!(m("a\\*b", "a*b") && !m("a\\*b", "axb"));
        assert!(m("key:*:x", "key:1:2:x") && !m("key:*:x", "key:1:2:y"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx") && !m("*a*b*c*", "xxaxxcxxbxx"));
        assert!(!m("", "a") && m("", "") && !m("*", ""));
        assert!(matches(b"HeLLo*", b"hello world", true));
        assert!(m("[abc", "c") && !m("[abc", "d"));
    }

    #[test]
    fn many_stars_do_not_blow_up() {
        let pattern = "a*".repeat(2000) + "b";
        let s = "a".repeat(3000);
        assert!(!matches(pattern.as_bytes(), s.as_bytes(), false));
    }
}
