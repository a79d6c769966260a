//! The work a job does, deterministic so results can be checked and costs shaped by payload.

/// `iterations` rounds of 64-bit mixing (splitmix64 steps) over the input's FNV-1a hash.
/// Cost is linear in `iterations`; the result depends only on the payload.
pub fn hash(input: &str, iterations: u32) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in input.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    for i in 0..iterations {
        h = h.wrapping_add(0x9e37_79b9_7f4a_7c15 ^ u64::from(i));
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h = z ^ (z >> 31);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_is_deterministic_and_depends_on_both_inputs() {
        assert_eq!(hash("abc", 1000), hash("abc", 1000));
        assert_ne!(hash("abc", 1000), hash("abc", 1001));
        assert_ne!(hash("abc", 1000), hash("abd", 1000));
        assert_eq!(hash("", 0), "cbf29ce484222325");
    }
}
