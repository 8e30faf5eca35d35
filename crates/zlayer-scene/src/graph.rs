//! The Z-order graph: who is in front of whom.
//!
//! An edge `i → j` means "i occludes j" (i is in front). The occluder set of i is
//! `O_i = { j : j → i }` (DESIGN.md §3). A pair declared in both directions is *unordered*:
//! both edges are dropped and the composition averages the two (DESIGN.md §4.1). Any other
//! cycle cannot be drawn with boxes and is rejected, naming the cycle.
//!
//! Depth level of i = length of the longest chain of occluders in front of it: 0 is
//! front-most. Drawing goes from the highest level to level 0.

/// A cycle of occlusion, as instance indices `a → b → … → a` (the first is not repeated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle(pub Vec<usize>);

/// A validated, acyclic occlusion relation over `n` instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcclusionGraph {
    front_of: Vec<Vec<usize>>,
    occluders: Vec<Vec<usize>>,
    unordered: Vec<(usize, usize)>,
    levels: Vec<usize>,
}

impl OcclusionGraph {
    /// Builds the graph from "i occludes j" edges. Duplicate edges are merged; mutual pairs
    /// become unordered; self-edges and indices `>= n` must be filtered out by the caller.
    pub fn from_edges(n: usize, edges: &[(usize, usize)]) -> Result<Self, Cycle> {
        let mut adj = vec![vec![false; n]; n];
        for &(i, j) in edges {
            assert!(
                i < n && j < n && i != j,
                "edge ({i}, {j}) invalid for {n} nodes"
            );
            adj[i][j] = true;
        }
        let mut unordered = Vec::new();
        // Index loops: the check reads adj[i][j] and adj[j][i] together.
        #[allow(clippy::needless_range_loop)]
        for i in 0..n {
            for j in i + 1..n {
                if adj[i][j] && adj[j][i] {
                    adj[i][j] = false;
                    adj[j][i] = false;
                    unordered.push((i, j));
                }
            }
        }
        let front_of: Vec<Vec<usize>> = (0..n)
            .map(|i| (0..n).filter(|&j| adj[i][j]).collect())
            .collect();
        let occluders: Vec<Vec<usize>> = (0..n)
            .map(|i| (0..n).filter(|&j| adj[j][i]).collect())
            .collect();
        if let Some(cycle) = find_cycle(&front_of) {
            return Err(cycle);
        }
        let levels = depth_levels(&front_of, &occluders);
        Ok(Self {
            front_of,
            occluders,
            unordered,
            levels,
        })
    }

    /// Number of instances.
    pub fn len(&self) -> usize {
        self.levels.len()
    }

    /// Whether there are no instances.
    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// `O_i`: the instances directly in front of `i`.
    pub fn occluders(&self, i: usize) -> &[usize] {
        &self.occluders[i]
    }

    /// All occluder sets, indexed by instance.
    pub fn occluder_sets(&self) -> &[Vec<usize>] {
        &self.occluders
    }

    /// The instances `i` is directly in front of.
    pub fn occludees(&self, i: usize) -> &[usize] {
        &self.front_of[i]
    }

    /// Ordered edges `(front, back)`, in index order.
    pub fn edges(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.front_of
            .iter()
            .enumerate()
            .flat_map(|(i, js)| js.iter().map(move |&j| (i, j)))
    }

    /// Pairs declared in both directions, `(i, j)` with `i < j`.
    pub fn unordered_pairs(&self) -> &[(usize, usize)] {
        &self.unordered
    }

    /// Depth level per instance: 0 = nothing in front of it.
    pub fn depth_levels(&self) -> &[usize] {
        &self.levels
    }

    /// Number of distinct depth levels (0 for an empty scene).
    pub fn level_count(&self) -> usize {
        self.levels.iter().max().map_or(0, |m| m + 1)
    }

    /// Painter's order: back-most first, ties in index order. Every occluder comes after
    /// everything it occludes.
    pub fn draw_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(self.levels[i]), i));
        order
    }
}

/// Longest-chain depth from the front, by Kahn's algorithm from the front-most nodes.
fn depth_levels(front_of: &[Vec<usize>], occluders: &[Vec<usize>]) -> Vec<usize> {
    let n = front_of.len();
    let mut indeg: Vec<usize> = occluders.iter().map(Vec::len).collect();
    let mut level = vec![0; n];
    let mut stack: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    while let Some(i) = stack.pop() {
        for &j in &front_of[i] {
            level[j] = level[j].max(level[i] + 1);
            indeg[j] -= 1;
            if indeg[j] == 0 {
                stack.push(j);
            }
        }
    }
    level
}

/// A shortest cycle through the smallest-index node of the first non-trivial strongly
/// connected component, or `None` if the graph is acyclic.
fn find_cycle(front_of: &[Vec<usize>]) -> Option<Cycle> {
    let comp = strongly_connected(front_of);
    let n = front_of.len();
    let mut size = vec![0usize; n];
    for &c in &comp {
        size[c] += 1;
    }
    let start = (0..n).find(|&i| size[comp[i]] > 1)?;
    // BFS inside the component from start's successors back to start.
    let mut prev = vec![usize::MAX; n];
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(u) = queue.pop_front() {
        for &v in &front_of[u] {
            if comp[v] != comp[start] || prev[v] != usize::MAX {
                continue;
            }
            prev[v] = u;
            if v == start {
                let mut path = vec![u];
                while *path.last().unwrap() != start {
                    path.push(prev[*path.last().unwrap()]);
                }
                path.reverse();
                return Some(Cycle(path));
            }
            queue.push_back(v);
        }
    }
    unreachable!("a component of size > 1 contains a cycle through each of its nodes")
}

/// Kosaraju's algorithm, iterative; returns a component id per node.
fn strongly_connected(adj: &[Vec<usize>]) -> Vec<usize> {
    let n = adj.len();
    let mut rev = vec![Vec::new(); n];
    for (u, vs) in adj.iter().enumerate() {
        for &v in vs {
            rev[v].push(u);
        }
    }
    let mut seen = vec![false; n];
    let mut finish = Vec::with_capacity(n);
    for s in 0..n {
        if seen[s] {
            continue;
        }
        seen[s] = true;
        let mut stack = vec![(s, 0usize)];
        while let Some(&mut (u, ref mut k)) = stack.last_mut() {
            if let Some(&v) = adj[u].get(*k) {
                *k += 1;
                if !seen[v] {
                    seen[v] = true;
                    stack.push((v, 0));
                }
            } else {
                finish.push(u);
                stack.pop();
            }
        }
    }
    let mut comp = vec![usize::MAX; n];
    for (c, &s) in finish.iter().rev().enumerate() {
        if comp[s] != usize::MAX {
            continue;
        }
        comp[s] = c;
        let mut stack = vec![s];
        while let Some(u) = stack.pop() {
            for &v in &rev[u] {
                if comp[v] == usize::MAX {
                    comp[v] = c;
                    stack.push(v);
                }
            }
        }
    }
    comp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_levels_and_order() {
        // 2 occludes 1 occludes 0: 2 is front-most.
        let g = OcclusionGraph::from_edges(3, &[(2, 1), (1, 0)]).unwrap();
        assert_eq!(g.depth_levels(), &[2, 1, 0]);
        assert_eq!(g.draw_order(), vec![0, 1, 2]);
        assert_eq!(g.occluders(0), &[1]);
        assert_eq!(g.occluders(2), &[] as &[usize]);
    }

    #[test]
    fn longest_chain_sets_the_level() {
        // 0 over 1 over 2, and 0 over 2 directly: 2 is still two levels back.
        let g = OcclusionGraph::from_edges(3, &[(0, 1), (1, 2), (0, 2)]).unwrap();
        assert_eq!(g.depth_levels(), &[0, 1, 2]);
        assert_eq!(g.occluders(2), &[0, 1]);
    }

    #[test]
    fn mutual_pair_is_unordered() {
        let g = OcclusionGraph::from_edges(3, &[(0, 1), (1, 0), (2, 0)]).unwrap();
        assert_eq!(g.unordered_pairs(), &[(0, 1)]);
        assert_eq!(g.occluders(0), &[2]);
        assert_eq!(g.occluders(1), &[] as &[usize]);
    }

    #[test]
    fn three_cycle_is_named() {
        let err = OcclusionGraph::from_edges(4, &[(3, 1), (1, 2), (2, 3), (0, 1)]).unwrap_err();
        assert_eq!(err, Cycle(vec![1, 2, 3]));
    }

    #[test]
    fn every_draw_order_respects_every_edge() {
        // A pseudo-random DAG: edges only from lower to higher index, then relabelled.
        let n = 12;
        let perm: Vec<usize> = (0..n).map(|i| (i * 7 + 3) % n).collect();
        let mut edges = Vec::new();
        for i in 0..n {
            for j in i + 1..n {
                if (i * 31 + j * 17) % 5 == 0 {
                    edges.push((perm[i], perm[j]));
                }
            }
        }
        let g = OcclusionGraph::from_edges(n, &edges).unwrap();
        let order = g.draw_order();
        let pos: Vec<usize> = (0..n)
            .map(|i| order.iter().position(|&k| k == i).unwrap())
            .collect();
        for (front, back) in g.edges() {
            assert!(
                pos[back] < pos[front],
                "{back} must be drawn before {front}"
            );
            assert!(g.depth_levels()[back] > g.depth_levels()[front]);
        }
    }
}
