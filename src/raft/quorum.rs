//! Quorum arithmetic: the commit index is the largest index held by a majority of voters.

use super::types::LogIndex;

/// The highest index that a majority of `matches` (one per voter) have reached: sort
/// descending and take the majority-th largest. Not a gate on acks (seed lesson 10): it is
/// recomputed from all match indexes whenever one of them changes.
pub fn committed_index(matches: &mut [LogIndex]) -> LogIndex {
    assert!(!matches.is_empty(), "no voters");
    let quorum = matches.len() / 2 + 1;
    matches.sort_unstable_by(|a, b| b.cmp(a));
    matches[quorum - 1]
}

/// Whether `granted` of `voters` votes are a majority.
pub fn is_majority(granted: usize, voters: usize) -> bool {
    granted > voters / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(v: &[u64]) -> Vec<LogIndex> {
        v.iter().map(|&i| LogIndex(i)).collect()
    }

    #[test]
    fn commit_is_the_majority_th_largest_match_index() {
        assert_eq!(committed_index(&mut idx(&[5])), LogIndex(5));
        assert_eq!(committed_index(&mut idx(&[5, 1])), LogIndex(1));
        assert_eq!(committed_index(&mut idx(&[5, 1, 3])), LogIndex(3));
        assert_eq!(committed_index(&mut idx(&[2, 9, 9, 1])), LogIndex(2));
        assert_eq!(committed_index(&mut idx(&[7, 1, 7, 2, 4])), LogIndex(4));
        assert_eq!(committed_index(&mut idx(&[0, 0, 8, 8, 8])), LogIndex(8));
    }

    #[test]
    fn majority_needs_more_than_half() {
        assert!(is_majority(1, 1));
        assert!(!is_majority(1, 2));
        assert!(is_majority(2, 3));
        assert!(!is_majority(2, 4));
        assert!(is_majority(3, 5));
    }
}
