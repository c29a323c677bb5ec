//! Runtime dispatch of hot loops to an AVX2 build. The crate targets baseline x86-64 (SSE2),
//! where the vectorised loops of this crate — score masses, keep-masks, masked copies, row
//! selection — run two f64 or four f32 lanes wide. [`avx2_dispatch!`] defines a function that
//! runs the same body compiled with AVX2 enabled when the CPU has it (checked at run time, the
//! answer cached by std), and the baseline build otherwise.
//!
//! The results are bit-identical either way: the bodies spell out their lanes and their order
//! of additions, the compiler may not reassociate floating-point adds, and FMA is not enabled,
//! so `a * a + b` is never contracted.

/// `avx2_dispatch! { pub fn name(a: A, b: B) -> R = body; }` defines `name`, calling `body`
/// (an `#[inline(always)]` function with the same arguments) from an AVX2-enabled copy when
/// the CPU supports AVX2.
macro_rules! avx2_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:path;) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                // SAFETY: the CPU supports AVX2, checked just above.
                return unsafe { avx2($($arg),*) };
            }
            $body($($arg),*)
        }
    };
}

pub(crate) use avx2_dispatch;

#[cfg(test)]
mod tests {
    #[inline(always)]
    fn sum_squares_body(v: &[f32]) -> f64 {
        let mut lanes = [0f64; 4];
        for (j, &x) in v.iter().enumerate() {
            lanes[j % 4] += x as f64 * x as f64;
        }
        (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
    }

    avx2_dispatch! { fn sum_squares(v: &[f32]) -> f64 = sum_squares_body; }

    #[test]
    fn dispatched_and_baseline_builds_agree_bit_for_bit() {
        let v: Vec<f32> = (0..1001).map(|i| ((i * 7919) % 1000) as f32 * 1.37e-3 - 0.4).collect();
        assert_eq!(sum_squares(&v).to_bits(), sum_squares_body(&v).to_bits());
    }
}
