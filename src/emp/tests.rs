//! Unit and property tests of the EMP rule: the invariants of DESIGN.md §1.

use super::*;
use crate::rng::Rng;
use proptest::prelude::*;

fn n_eff(s: &[f32]) -> f64 {
    Mass::of(s).unwrap().n_eff().unwrap()
}

#[test]
fn uniform_scores_give_n() {
    for n in [1usize, 2, 7, 1000, 123_457] {
        let ne = n_eff(&vec![0.3; n]);
        assert!((ne - n as f64).abs() < 1e-9 * n as f64, "n={n} ne={ne}");
        assert_eq!(keep_count(n, Some(ne), 1.0), n);
    }
}

#[test]
fn one_hot_gives_one() {
    let mut s = vec![0.0f32; 500];
    s[17] = -4.0;
    assert_eq!(n_eff(&s), 1.0);
    let (d, _, mask, s_eff) = prune_vector(&s, 1.0).unwrap();
    assert_eq!(d.keep, 1);
    assert!(mask[17] && mask.iter().filter(|&&m| m).count() == 1);
    assert_eq!(s_eff, 1.0);
}

#[test]
fn k_equal_values_plus_zeros_keep_exactly_k() {
    // 1/Σw² for k equal weights can land just below k; the floor must still give k.
    for n in [10usize, 97, 1000, 4096] {
        for k in 1..=n.min(60) {
            let mut s = vec![0.0f32; n];
            for i in 0..k {
                s[(i * 7919) % n] = 0.1 + 0.2; // 0.30000000000000004 → rounding noise
            }
            let ne = Mass::of(&s).unwrap().n_eff();
            assert_eq!(keep_count(n, ne, 1.0), k, "n={n} k={k} ne={ne:?}");
        }
    }
}

fn sample_ratio(f: impl Fn(&mut Rng) -> f64) -> f64 {
    let mut rng = Rng::new(7);
    let s: Vec<f32> = (0..400_000).map(|_| f(&mut rng) as f32).collect();
    n_eff(&s) / s.len() as f64
}

#[test]
fn distribution_ratios_match_theory() {
    let gauss = sample_ratio(|r| r.normal());
    assert!((gauss - 2.0 / std::f64::consts::PI).abs() < 0.005, "gaussian {gauss}");
    let unif = sample_ratio(|r| 2.0 * r.uniform() - 1.0);
    assert!((unif - 0.75).abs() < 0.005, "uniform {unif}");
    let laplace = sample_ratio(|r| {
        let u = r.uniform() - 0.5;
        -u.signum() * (1.0 - 2.0 * u.abs()).max(1e-300).ln()
    });
    assert!((laplace - 0.5).abs() < 0.006, "laplace {laplace}");
}

#[test]
fn all_zero_is_a_no_op() {
    let s = vec![0.0f32; 9];
    let (d, cut, mask, s_eff) = prune_vector(&s, 1.0).unwrap();
    assert_eq!(d.n_eff, None);
    assert_eq!(d.keep, 9);
    assert_eq!(cut, Cut::ALL);
    assert!(mask.iter().all(|&m| m));
    assert_eq!(s_eff, 1.0);
}

#[test]
fn non_finite_scores_are_errors() {
    assert!(Mass::of(&[1.0, f32::NAN]).is_err());
    assert!(Mass::of(&[f32::INFINITY]).is_err());
}

#[test]
fn ties_are_broken_by_lower_index() {
    // N_eff of [2,1,1,1,1] = 36/8 = 4.5 → keep 4: the 2 and the first three 1s.
    let s = [1.0f32, 1.0, 2.0, 1.0, 1.0];
    let (d, cut, mask, _) = prune_vector(&s, 1.0).unwrap();
    assert_eq!(d.keep, 4);
    assert_eq!(cut, Cut { value: 1.0, ties: 3 });
    assert_eq!(mask, [true, true, true, true, false]);
}

#[test]
fn ties_span_parts_in_order() {
    let a = [1.0f32, 3.0];
    let b = [1.0f32, 1.0];
    let cut = Cut::find_in_parts(&[&a, &b], 3);
    let mut used = 0;
    let mut kept = vec![];
    cut.apply(&a, &mut used, |_, k| kept.push(k));
    cut.apply(&b, &mut used, |_, k| kept.push(k));
    assert_eq!(kept, [true, true, true, false]);
}

#[test]
fn beta_scales_the_keep_count() {
    let s: Vec<f32> = (1..=100).map(|i| i as f32).collect();
    let ne = n_eff(&s); // (5050)² / 338350 = 75.37…
    assert!((ne - 5050.0f64.powi(2) / 338_350.0).abs() < 1e-9);
    assert_eq!(keep_count(100, Some(ne), 1.0), 75);
    assert_eq!(keep_count(100, Some(ne), 0.5), 37);
    assert_eq!(keep_count(100, Some(ne), 2.0), 100);
    assert_eq!(keep_count(100, Some(ne), 0.001), 1);
}

#[test]
fn bound_is_not_applicable_for_small_keep_or_beta() {
    assert_eq!(mass_bound(10, 1, 1.0), None);
    assert_eq!(mass_bound(10, 5, 0.9), None);
    assert_eq!(mass_bound(10, 10, 1.0), Some(1.0));
    let b = mass_bound(10, 5, 1.0).unwrap();
    // 0.5 + 0.5·sqrt(4/(6·9))
    assert!((b - (0.5 + 0.5 * (4.0f64 / 54.0).sqrt())).abs() < 1e-15);
}

fn scores() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(prop_oneof![Just(0.0f32), -1e3f32..1e3f32, Just(1.0f32)], 1..400)
}

proptest! {
    #[test]
    fn n_eff_is_between_one_and_n(s in scores()) {
        if let Some(ne) = Mass::of(&s).unwrap().n_eff() {
            prop_assert!(ne >= 1.0 && ne <= s.len() as f64);
        }
    }

    #[test]
    fn n_eff_is_scale_and_sign_invariant(s in scores(), k in 1e-3f32..1e3f32, flip in any::<bool>()) {
        let t: Vec<f32> = s.iter().map(|v| if flip { -v * k } else { v * k }).collect();
        match (Mass::of(&s).unwrap().n_eff(), Mass::of(&t).unwrap().n_eff()) {
            (Some(a), Some(b)) => prop_assert!((a - b).abs() <= 1e-4 * a),
            (a, b) => prop_assert_eq!(a.is_none(), b.is_none()),
        }
    }

    #[test]
    fn exactly_keep_entries_survive_and_they_are_the_largest(s in scores(), beta in 0.1f64..2.0) {
        let (d, _, mask, _) = prune_vector(&s, beta).unwrap();
        prop_assert_eq!(mask.iter().filter(|&&m| m).count(), d.keep);
        prop_assert!(d.keep >= 1 && d.keep <= s.len());
        let min_kept = s.iter().zip(&mask).filter(|(_, &m)| m).map(|(v, _)| v.abs()).fold(f32::INFINITY, f32::min);
        let max_dropped = s.iter().zip(&mask).filter(|(_, &m)| !m).map(|(v, _)| v.abs()).fold(0.0f32, f32::max);
        prop_assert!(min_kept >= max_dropped);
    }

    #[test]
    fn bound_holds_for_beta_at_least_one(s in scores(), beta in 1.0f64..1.5) {
        let (d, _, _, s_eff) = prune_vector(&s, beta).unwrap();
        if let Some(b) = d.bound(beta) {
            prop_assert!(s_eff + 1e-9 >= b, "s_eff {} < bound {} (n={}, keep={})", s_eff, b, d.n, d.keep);
        }
    }
}
