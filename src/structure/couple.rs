//! Coupling spaces into groups. Two layouts that meet in a residual Add (or any op that
//! combines them position by position) tie the structures at the same axis position
//! together, even when the layouts are cut differently — `conv(16)` added to
//! `Concat(conv(8), conv(8))` ties the first conv's channels 0–7 to one branch and 8–15 to the
//! other. A weighted union–find keeps, for every space, the offset of its first structure in
//! its group's index space; contradictory offsets block the group.

use std::collections::BTreeMap;

use super::{Group, Space};

/// `offset(b) − offset(a) = delta`: the structure at position `p` of `a` is structure
/// `p − delta` of `b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tie {
    pub a: usize,
    pub b: usize,
    pub delta: i64,
}

struct Forest {
    parent: Vec<usize>,
    /// Offset of a space relative to its parent.
    rel: Vec<i64>,
}

impl Forest {
    fn find(&mut self, x: usize) -> (usize, i64) {
        if self.parent[x] == x {
            return (x, 0);
        }
        let (root, up) = self.find(self.parent[x]);
        self.rel[x] += up;
        self.parent[x] = root;
        (root, self.rel[x])
    }

    /// Applies a tie; `false` if it contradicts an earlier one.
    fn union(&mut self, t: Tie) -> bool {
        let (ra, oa) = self.find(t.a);
        let (rb, ob) = self.find(t.b);
        if ra == rb {
            return ob - oa == t.delta;
        }
        let (keep, other, rel) = if ra < rb { (ra, rb, oa + t.delta - ob) } else { (rb, ra, ob - t.delta - oa) };
        self.parent[other] = keep;
        self.rel[other] = rel;
        true
    }
}

/// Groups the spaces; each group lists its members with their offsets (normalised so the
/// smallest is 0) and spans `n` structures.
pub fn groups(spaces: &[Space], ties: &[Tie]) -> Vec<Group> {
    let mut f = Forest { parent: (0..spaces.len()).collect(), rel: vec![0; spaces.len()] };
    let mut broken: BTreeMap<usize, String> = BTreeMap::new();
    for &t in ties {
        if !f.union(t) {
            let (root, _) = f.find(t.a);
            broken.entry(root).or_insert_with(|| {
                format!("{} and {} are tied at inconsistent positions", spaces[t.a].producer, spaces[t.b].producer)
            });
        }
    }
    let mut members: BTreeMap<usize, Vec<(usize, i64)>> = BTreeMap::new();
    for s in 0..spaces.len() {
        let (root, off) = f.find(s);
        members.entry(root).or_default().push((s, off));
    }
    members.into_iter().map(|(root, m)| group_of(spaces, root, &m, broken.get(&root).cloned())).collect()
}

fn group_of(spaces: &[Space], root: usize, m: &[(usize, i64)], broken: Option<String>) -> Group {
    let min = m.iter().map(|&(_, o)| o).min().unwrap_or(0);
    let offsets: Vec<usize> = m.iter().map(|&(_, o)| (o - min) as usize).collect();
    let n = m.iter().zip(&offsets).map(|(&(s, _), &o)| o + spaces[s].n).max().unwrap_or(0);
    let gaps = (0..n).any(|g| !m.iter().zip(&offsets).any(|(&(s, _), &o)| g >= o && g < o + spaces[s].n));
    let blocked = broken
        .or_else(|| gaps.then(|| format!("coupled producers around {} leave gaps", spaces[root].producer)))
        .or_else(|| m.iter().find_map(|&(s, _)| spaces[s].blocked.clone()));
    Group { kind: spaces[root].kind, spaces: m.iter().map(|&(s, _)| s).collect(), offsets, n, blocked }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::structure::Kind;

    fn sp(n: usize) -> Space {
        Space::new(Kind::Channel, format!("p{n}"), n)
    }

    #[test]
    fn a_wide_producer_ties_to_two_concatenated_branches() {
        let spaces = vec![sp(16), sp(8), sp(8), sp(4)];
        let g = groups(&spaces, &[Tie { a: 0, b: 1, delta: 0 }, Tie { a: 0, b: 2, delta: 8 }]);
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].spaces.clone(), g[0].offsets.clone(), g[0].n), (vec![0, 1, 2], vec![0, 0, 8], 16));
        assert!(g[0].blocked.is_none());
        assert_eq!(g[1].n, 4);
    }

    #[test]
    fn contradictory_ties_block_the_group() {
        let spaces = vec![sp(8), sp(8)];
        let g = groups(&spaces, &[Tie { a: 0, b: 1, delta: 0 }, Tie { a: 1, b: 0, delta: 2 }]);
        assert!(g[0].blocked.as_deref().unwrap().contains("inconsistent"));
    }

    #[test]
    fn equal_spaces_tied_at_zero_form_one_group() {
        let spaces = vec![sp(5), sp(5), sp(5)];
        let g = groups(&spaces, &[Tie { a: 2, b: 1, delta: 0 }, Tie { a: 1, b: 0, delta: 0 }]);
        assert_eq!((g.len(), g[0].n, g[0].offsets.clone()), (1, 5, vec![0, 0, 0]));
    }
}
