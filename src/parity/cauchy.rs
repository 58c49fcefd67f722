//! The layout-3 code: a systematic Cauchy Reed–Solomon code over GF(2^8)
//! (polynomial x^8 + x^4 + x^3 + x^2 + 1, 0x11d) whose coefficient for
//! member `i` in parity shard `j` depends only on `i` and `j`, never on how
//! many members the stripe has: a member joining a stripe adds its own
//! contribution to each shard, and nothing else changes.
//!
//! `coef(j, i) = y · (j ⊕ y)⁻¹` with `y = 16 + i` (`j < 16`, `i < 64`): the
//! Cauchy matrix `1 / (x_j ⊕ y_i)` with `x_j = j`, each column scaled so
//! that row 0 is all ones (shard 0 is the XOR of the members). Every square
//! submatrix of a Cauchy matrix is invertible, and scaling columns keeps
//! that, so any m lost shards of a row can be rebuilt.

/// Most members a layout-3 stripe can have.
pub const MAX_K: usize = 64;
/// Most parity shards a layout-3 stripe can have.
pub const MAX_M: usize = 16;

const fn tables() -> ([u8; 256], [u8; 512]) {
    let mut log = [0u8; 256];
    let mut exp = [0u8; 512];
    let mut x: u16 = 1;
    let mut i = 0;
    while i < 255 {
        exp[i] = x as u8;
        exp[i + 255] = x as u8;
        log[x as usize] = i as u8;
        x <<= 1;
        if x & 0x100 != 0 {
            x ^= 0x11d;
        }
        i += 1;
    }
    (log, exp)
}

const LOG_EXP: ([u8; 256], [u8; 512]) = tables();
static LOG: [u8; 256] = LOG_EXP.0;
static EXP: [u8; 512] = LOG_EXP.1;

const fn mul_table() -> [[u8; 256]; 256] {
    let (log, exp) = tables();
    let mut t = [[0u8; 256]; 256];
    let mut a = 1;
    while a < 256 {
        let mut b = 1;
        while b < 256 {
            t[a][b] = exp[log[a] as usize + log[b] as usize];
            b += 1;
        }
        a += 1;
    }
    t
}

/// `MUL[a][b] = a · b`: 64 KiB, one 256-byte row per coefficient.
static MUL: [[u8; 256]; 256] = mul_table();

fn mul(a: u8, b: u8) -> u8 {
    MUL[a as usize][b as usize]
}

fn inv(a: u8) -> u8 {
    debug_assert!(a != 0);
    EXP[255 - LOG[a as usize] as usize]
}

/// The coefficient of member `i` in parity shard `j`.
pub fn coef(j: usize, i: usize) -> u8 {
    assert!(j < MAX_M && i < MAX_K, "stripe shape out of range");
    let y = (16 + i) as u8;
    mul(y, inv(j as u8 ^ y))
}

/// `dst[x] ^= c · src[x]` for every `x < src.len()` (`dst` at least as long).
pub fn mul_add(c: u8, src: &[u8], dst: &mut [u8]) {
    let dst = &mut dst[..src.len()];
    match c {
        0 => {}
        1 => {
            for (d, s) in dst.chunks_exact_mut(8).zip(src.chunks_exact(8)) {
                let v = u64::from_ne_bytes((&*d).try_into().expect("8"))
                    ^ u64::from_ne_bytes(s.try_into().expect("8"));
                d.copy_from_slice(&v.to_ne_bytes());
            }
            let tail = src.len() / 8 * 8;
            for (d, s) in dst[tail..].iter_mut().zip(&src[tail..]) {
                *d ^= s;
            }
        }
        _ => {
            let row = &MUL[c as usize];
            for (d, s) in dst.iter_mut().zip(src) {
                *d ^= row[*s as usize];
            }
        }
    }
}

/// Adds member `i`'s bytes (`data`, the member from some offset; shorter
/// than the shards means zero-padded) to the shards at the same offset.
pub fn add_member(i: usize, data: &[u8], shards: &mut [Vec<u8>]) {
    for (j, p) in shards.iter_mut().enumerate() {
        if p.len() < data.len() {
            p.resize(data.len(), 0);
        }
        mul_add(coef(j, i), data, p);
    }
}

/// Inverts a square matrix over GF(2^8) (Gauss–Jordan); `None` when singular.
fn invert(mut a: Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>> {
    let n = a.len();
    let mut b: Vec<Vec<u8>> = (0..n)
        .map(|r| (0..n).map(|c| u8::from(r == c)).collect())
        .collect();
    for col in 0..n {
        let piv = (col..n).find(|r| a[*r][col] != 0)?;
        a.swap(col, piv);
        b.swap(col, piv);
        let f = inv(a[col][col]);
        for x in 0..n {
            a[col][x] = mul(a[col][x], f);
            b[col][x] = mul(b[col][x], f);
        }
        for r in 0..n {
            let g = a[r][col];
            if r != col && g != 0 {
                for x in 0..n {
                    a[r][x] ^= mul(g, a[col][x]);
                    b[r][x] ^= mul(g, b[col][x]);
                }
            }
        }
    }
    Some(b)
}

/// Rebuilds the missing members of one row of `len` bytes: `members[i]`
/// and `parity[j]` are `None` when damaged (present ones may be shorter
/// than `len`: zero-padded). Returns every member's bytes padded to `len`,
/// or `None` when fewer than k shards survive.
pub fn rebuild(
    members: &[Option<&[u8]>],
    parity: &[Option<&[u8]>],
    len: usize,
) -> Option<Vec<Vec<u8>>> {
    let lost: Vec<usize> = (0..members.len())
        .filter(|i| members[*i].is_none())
        .collect();
    let rows: Vec<usize> = (0..parity.len())
        .filter(|j| parity[*j].is_some())
        .take(lost.len())
        .collect();
    if rows.len() < lost.len() {
        return None;
    }
    // Syndromes: each surviving parity shard less what the sound members
    // put in it leaves the lost members' contributions.
    let syn: Vec<Vec<u8>> = rows
        .iter()
        .map(|j| {
            let mut s = vec![0u8; len];
            // unwrap: `rows` holds surviving shards only
            let p = parity[*j].expect("surviving shard");
            s[..p.len().min(len)].copy_from_slice(&p[..p.len().min(len)]);
            for (i, d) in members.iter().enumerate() {
                if let Some(d) = d {
                    mul_add(coef(*j, i), &d[..d.len().min(len)], &mut s);
                }
            }
            s
        })
        .collect();
    let sub = rows
        .iter()
        .map(|j| lost.iter().map(|i| coef(*j, *i)).collect())
        .collect();
    let inverse = invert(sub)?;
    let mut out: Vec<Vec<u8>> = members
        .iter()
        .map(|d| {
            let mut v = d.map_or_else(Vec::new, |d| d[..d.len().min(len)].to_vec());
            v.resize(len, 0);
            v
        })
        .collect();
    for (a, i) in lost.iter().enumerate() {
        for (b, s) in syn.iter().enumerate() {
            mul_add(inverse[a][b], s, &mut out[*i]);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_and_coefficients() {
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1);
        }
        for i in 0..MAX_K {
            assert_eq!(coef(0, i), 1, "shard 0 is the XOR");
            for j in 0..MAX_M {
                assert_ne!(coef(j, i), 0);
            }
        }
        let mut d = vec![7u8; 19];
        mul_add(1, &[7u8; 19], &mut d);
        assert_eq!(d, vec![0u8; 19]);
    }
}
