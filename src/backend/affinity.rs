//! Conversation affinity: weighted rendezvous (highest-random-weight) hashing of a
//! conversation key over a model's backends.
//!
//! Every backend gets a score from the key and the backend alone; the highest score serves the
//! conversation, the next one takes it while the first cannot. Adding or removing a backend
//! changes no other backend's score, so only the conversations it wins (or won) move, and a
//! weight-w backend wins a w/Σw share of them.
//!
//! The hash is stable and seedless, so every replica and every version agrees without talking:
//! FNV-1a (64-bit) of the key, and of the backend's `url` + `\n` + `actualModelName`; the two
//! XOR-ed and finished with SplitMix64's mixer (FNV alone spreads short, similar inputs poorly).
//! Its top 53 bits make u in (0, 1), and the score is `-weight / ln(u)`: the usual weighted
//! rendezvous score, under which the best backend is weight-w with probability w/Σw.

/// A conversation key as the ranking sees it: the key itself is personal data (a user id, a
/// chat id) and is never kept, logged or shown, only this hash of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(u64);

/// Hashes a conversation key.
pub fn key_hash(key: &str) -> KeyHash {
    KeyHash(fnv1a(key.as_bytes(), FNV_OFFSET))
}

/// The stable identity of a backend for the ranking: its URL and the model name it is sent,
/// not its place in the list, so reordering or editing other backends moves nothing.
pub fn backend_hash(url: &str, actual_model_name: &str) -> u64 {
    let h = fnv1a(url.as_bytes(), FNV_OFFSET);
    fnv1a(actual_model_name.as_bytes(), fnv1a(b"\n", h))
}

/// The score of one backend for a key: the highest serves the conversation.
pub fn score(key: KeyHash, backend: u64, weight: i64) -> f64 {
    let x = mix(key.0 ^ backend);
    // 53 bits (what an f64 holds exactly), shifted half a step off 0 so ln(u) is finite and
    // negative.
    let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(weight.max(0) as f64) / ln(u)
}

/// The natural logarithm of `x` in (0, 1), within one ulp of libm's. Not `f64::ln`: that is
/// the binary's only libm symbol, and loading libm costs every process about 0.3 MiB of
/// resident pages at start (the idle-memory goal). fdlibm's `__ieee754_log` (Sun Microsystems,
/// "freely granted, provided that this notice is preserved"): x = 2^k * (1 + f) with
/// 1 + f in [sqrt(2)/2, sqrt(2)), then log(1 + f) = f - f^2/2 + s*(f^2/2 + R(s*s)), s = f/(2 + f).
fn ln(x: f64) -> f64 {
    // The constants by their bits, as fdlibm lists them.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    const LG: [f64; 7] = [
        f64::from_bits(0x3fe5_5555_5555_5593),
        f64::from_bits(0x3fd9_9999_9997_fa04),
        f64::from_bits(0x3fd2_4924_9422_9359),
        f64::from_bits(0x3fcc_71c5_1d8e_78af),
        f64::from_bits(0x3fc7_4664_96cb_03de),
        f64::from_bits(0x3fc3_9a09_d078_c69f),
        f64::from_bits(0x3fc2_f112_df3e_5244),
    ];
    // Only normal, positive, finite inputs reach here (u is at least 2^-54).
    let bits = x.to_bits();
    let mut hx = (bits >> 32) as u32;
    hx += 0x3ff0_0000 - 0x3fe6_a09e;
    let k = (hx >> 20) as i32 - 0x3ff;
    hx = (hx & 0x000f_ffff) + 0x3fe6_a09e;
    let m = f64::from_bits((u64::from(hx) << 32) | (bits & 0xffff_ffff));
    let f = m - 1.0;
    let hfsq = 0.5 * f * f;
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let t1 = w * (LG[1] + w * (LG[3] + w * LG[5]));
    let t2 = z * (LG[0] + w * (LG[2] + w * (LG[4] + w * LG[6])));
    let r = t2 + t1;
    let dk = f64::from(k);
    s * (hfsq + r) + dk * LN2_LO - hfsq + f + dk * LN2_HI
}

/// Backend indices in rendezvous order for `key`: best first. `backends` holds each one's
/// `backend_hash` and weight.
pub fn rank(key: KeyHash, backends: &[(u64, i64)]) -> Vec<usize> {
    let mut scored: Vec<(f64, usize)> = backends
        .iter()
        .enumerate()
        .map(|(i, (h, w))| (score(key, *h, *w), i))
        .collect();
    // Equal scores (practically only equal backends) fall back to list order, deterministically.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, i)| i).collect()
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// SplitMix64's finalizer: every input bit reaches every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(weights: &[i64]) -> Vec<(u64, i64)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| (backend_hash(&format!("http://gpu-{}:8000", i), "llama"), *w))
            .collect()
    }

    fn spread(n: usize, backends: &[(u64, i64)]) -> Vec<usize> {
        let mut counts = vec![0; backends.len()];
        for c in 0..n {
            counts[rank(key_hash(&format!("chat-{}", c)), backends)[0]] += 1;
        }
        counts
    }

    /// Each backend's share within ±10% of its weight's share.
    fn within_weights(counts: &[usize], weights: &[i64], tolerance: f64) {
        let n: usize = counts.iter().sum();
        let total: i64 = weights.iter().sum();
        for (c, w) in counts.iter().zip(weights) {
            let want = n as f64 * *w as f64 / total as f64;
            let off = (*c as f64 - want).abs() / want;
            assert!(
                off <= tolerance,
                "{:?} against weights {:?}",
                counts,
                weights
            );
        }
    }

    #[test]
    fn the_hash_is_fixed_so_every_replica_agrees() {
        // FNV-1a test vectors: the hash must never change between builds or versions, or
        // replicas of different versions would send one conversation to different backends.
        assert_eq!(key_hash(""), KeyHash(0xcbf2_9ce4_8422_2325));
        assert_eq!(key_hash("a"), KeyHash(0xaf63_dc4c_8601_ec8c));
        assert_eq!(key_hash("foobar"), KeyHash(0x8594_4171_f739_67e8));
        let b = backends(&[1, 1, 1]);
        assert_eq!(rank(key_hash("chat-1"), &b), rank(key_hash("chat-1"), &b));
        let order = rank(key_hash("conversation 42"), &b);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2], "every backend once");
    }

    #[test]
    fn a_thousand_conversations_spread_within_the_weights() {
        for weights in [vec![1, 1, 1], vec![1, 2, 3], vec![2, 1, 1], vec![5, 1]] {
            within_weights(&spread(1000, &backends(&weights)), &weights, 0.10);
            // Over many more, the shares converge on the weights.
            within_weights(&spread(60_000, &backends(&weights)), &weights, 0.03);
        }
    }

    #[test]
    fn adding_or_removing_a_backend_moves_only_its_share() {
        let three = backends(&[1, 1, 1]);
        let four = backends(&[1, 1, 1, 1]);
        let n = 2000;
        let (mut moved, mut to_new) = (0, 0);
        for c in 0..n {
            let k = key_hash(&format!("chat-{}", c));
            let (before, after) = (rank(k, &three)[0], rank(k, &four)[0]);
            if before != after {
                moved += 1;
                to_new += usize::from(after == 3);
            }
            // Removing a backend: its conversations go to their second choice, nobody else moves.
            let without_1: Vec<(u64, i64)> = vec![three[0], three[2]];
            let survivors = rank(k, &without_1)[0];
            let expected =
                rank(k, &three)
                    .into_iter()
                    .find(|b| *b != 1)
                    .map(|b| if b == 2 { 1 } else { 0 });
            assert_eq!(Some(survivors), expected, "conversation {}", c);
        }
        assert_eq!(
            moved, to_new,
            "a conversation only ever moves to the new backend"
        );
        // The new backend takes about a quarter.
        assert!((400..=600).contains(&moved), "{} of {} moved", moved, n);
    }

    #[test]
    fn ln_is_within_one_ulp_of_libm() {
        let ulps = |a: f64, b: f64| (a.to_bits() as i64 - b.to_bits() as i64).abs();
        let mut x = 0x1234_5678_9abc_def0u64;
        for i in 0..200_000u64 {
            x = mix(x.wrapping_add(i));
            let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            assert!(
                ulps(ln(u), u.ln()) <= 1,
                "ln({:e}) = {:e}, libm {:e}",
                u,
                ln(u),
                u.ln()
            );
        }
        for u in [
            0.5 / (1u64 << 53) as f64,
            0.5,
            0.25,
            1.0 - f64::EPSILON / 2.0,
            std::f64::consts::FRAC_1_SQRT_2,
        ] {
            assert!(ulps(ln(u), u.ln()) <= 1, "ln({:e})", u);
        }
    }

    #[test]
    fn weight_zero_or_equal_scores_stay_deterministic() {
        let b = vec![(1, 0), (2, 1)];
        assert!((0..100).all(|c| rank(key_hash(&c.to_string()), &b)[0] == 1));
        let same = vec![(7, 1), (7, 1)];
        assert_eq!(rank(key_hash("x"), &same), vec![0, 1]);
    }
}
