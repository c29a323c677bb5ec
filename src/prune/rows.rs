//! Rows of a weight: the entries feeding one output unit. Given the stored shape and its unit
//! axes, maps each flat index to its row, in flat order.

/// Row structure of one weight.
#[derive(Clone, Debug)]
pub struct Rows {
    pub count: usize,
    pub len: usize,
    shape: Vec<usize>,
    unit: Vec<bool>,
}

/// How rows sit in flat order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Row `r` is the contiguous run `r*len..(r+1)*len` (unit axes lead).
    Leading,
    /// The row of flat index `i` is `i % count` (the unit axis is the last significant one).
    Trailing,
    /// Any other layout.
    General,
}

impl Rows {
    /// The layout, ignoring axes of size 1.
    pub fn kind(&self) -> Kind {
        let significant: Vec<usize> = (0..self.shape.len()).filter(|&a| self.shape[a] != 1 || self.unit[a]).collect();
        let only = |a: usize| (0..self.shape.len()).all(|u| !self.unit[u] || u == a || self.shape[u] == 1);
        match (significant.first(), significant.last()) {
            (Some(&a), _) if only(a) && self.unit[a] => Kind::Leading,
            (_, Some(&a)) if only(a) && self.unit[a] => Kind::Trailing,
            _ => Kind::General,
        }
    }

    pub fn new(shape: &[usize], unit_axes: &[usize]) -> Self {
        let unit: Vec<bool> = (0..shape.len()).map(|a| unit_axes.contains(&a)).collect();
        let count: usize = shape.iter().zip(&unit).filter(|(_, &u)| u).map(|(d, _)| d).product();
        let n: usize = shape.iter().product();
        Self { count, len: if count == 0 { 0 } else { n / count }, shape: shape.to_vec(), unit }
    }

    /// Row id of every flat index, in flat order.
    pub fn ids(&self) -> Vec<u32> {
        let n = self.count * self.len;
        let rank = self.shape.len();
        // Fast paths: rows are the leading axis (contiguous) or the trailing axis (strided).
        if self.unit.first() == Some(&true) && self.unit.iter().skip(1).all(|u| !u) {
            return (0..n).map(|i| (i / self.len.max(1)) as u32).collect();
        }
        if self.unit.last() == Some(&true) && self.unit.iter().take(rank - 1).all(|u| !u) {
            let last = self.shape[rank - 1].max(1);
            return (0..n).map(|i| (i % last) as u32).collect();
        }
        self.ids_general(n)
    }

    /// The values of `flat` regrouped row after row (row `r` at `r*len..(r+1)*len`), each row
    /// in flat order.
    pub fn gather(&self, flat: &[f32]) -> Vec<f32> {
        let rank = self.shape.len();
        if self.unit.first() == Some(&true) && self.unit.iter().skip(1).all(|u| !u) {
            return flat.to_vec(); // rows are already contiguous
        }
        if self.unit.last() == Some(&true) && self.unit.iter().take(rank - 1).all(|u| !u) {
            return transpose(flat, self.len, self.count);
        }
        let mut by_row = vec![0f32; flat.len()];
        let mut fill = vec![0usize; self.count];
        for (i, r) in self.ids().into_iter().enumerate() {
            let r = r as usize;
            by_row[r * self.len + fill[r]] = flat[i];
            fill[r] += 1;
        }
        by_row
    }

    fn ids_general(&self, n: usize) -> Vec<u32> {
        let rank = self.shape.len();
        // Row-id stride of each unit axis (row-major over the unit axes).
        let mut rstride = vec![0usize; rank];
        let mut acc = 1;
        for a in (0..rank).rev() {
            if self.unit[a] {
                rstride[a] = acc;
                acc *= self.shape[a];
            }
        }
        let mut idx = vec![0usize; rank];
        let mut row = 0usize;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(row as u32);
            for a in (0..rank).rev() {
                idx[a] += 1;
                row += rstride[a];
                if idx[a] < self.shape[a] {
                    break;
                }
                row -= rstride[a] * idx[a];
                idx[a] = 0;
            }
        }
        out
    }
}

/// `[rows, cols]` row-major → `[cols, rows]`, in cache-sized tiles.
fn transpose(flat: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 64;
    let mut out = vec![0f32; flat.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = flat[r * cols + c];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_trailing_and_mixed_unit_axes() {
        assert_eq!(Rows::new(&[2, 3], &[0]).ids(), [0, 0, 0, 1, 1, 1]);
        assert_eq!(Rows::new(&[2, 3], &[1]).ids(), [0, 1, 2, 0, 1, 2]);
        // [b=2, k=2, n=2] MatMul B: rows per (b, n).
        assert_eq!(Rows::new(&[2, 2, 2], &[0, 2]).ids(), [0, 1, 0, 1, 2, 3, 2, 3]);
        let r = Rows::new(&[2, 2, 2], &[0, 2]);
        assert_eq!((r.count, r.len), (4, 2));
        // ConvTranspose [C=2, M=3, k=1]: rows along axis 1.
        assert_eq!(Rows::new(&[2, 3, 1], &[1]).ids(), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn kinds_ignore_axes_of_size_one() {
        assert_eq!(Rows::new(&[4, 3, 1, 1], &[0]).kind(), Kind::Leading);
        assert_eq!(Rows::new(&[1, 4, 3], &[1]).kind(), Kind::Leading);
        assert_eq!(Rows::new(&[4, 3], &[1]).kind(), Kind::Trailing);
        assert_eq!(Rows::new(&[4, 3, 1], &[1]).kind(), Kind::Trailing);
        assert_eq!(Rows::new(&[2, 4, 3], &[0, 2]).kind(), Kind::General);
        assert_eq!(Rows::new(&[2, 3, 5], &[1]).kind(), Kind::General);
    }

    #[test]
    fn gather_fast_paths_match_the_general_one() {
        let flat: Vec<f32> = (0..2 * 3 * 70).map(|i| i as f32).collect();
        for (shape, unit) in [(vec![6, 70], vec![0]), (vec![70, 6], vec![1]), (vec![2, 3, 70], vec![0, 2])] {
            let r = Rows::new(&shape, &unit);
            let mut want = vec![0f32; flat.len()];
            let mut fill = vec![0usize; r.count];
            for (i, id) in r.ids().into_iter().enumerate() {
                want[id as usize * r.len + fill[id as usize]] = flat[i];
                fill[id as usize] += 1;
            }
            assert_eq!(r.gather(&flat), want, "{shape:?} {unit:?}");
        }
    }
}
