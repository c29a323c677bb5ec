//! Human-readable rendering of reports: compact aligned tables for a terminal.

use std::fmt::Write;

use super::{Report, ValidateReport};
use crate::prune::Group;
use crate::validate::Validation;

/// Above this many EMP groups (row scope), the text shows a summary instead of every row.
const MAX_GROUP_ROWS: usize = 24;

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let target = r.output.as_deref().map(|o| format!(" -> {o}")).unwrap_or_default();
    let _ = writeln!(s, "emprune {} {}{target}", r.command, r.model);
    let _ = writeln!(s, "criterion {} | scope {} | beta {} | format {}\n", r.criterion, r.scope, r.beta, r.format);
    if r.level.is_some() {
        structures(&mut s, r);
    } else {
        groups(&mut s, &r.groups);
        tensors(&mut s, r);
    }
    for k in &r.skipped {
        let _ = writeln!(s, "skipped {}: {}", k.name, k.reason);
    }
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    if let Some(g) = &r.guard {
        let restored = if g.restored.is_empty() { "nothing".to_string() } else { g.restored.join(", ") };
        let _ = writeln!(
            s,
            "guard: restored {restored} dense after {} validations; sparsity {:.1}% -> {:.1}%{}",
            g.validations,
            100.0 * g.sparsity_before,
            100.0 * g.sparsity_after,
            if g.passed { "" } else { " (still failing)" }
        );
    }
    if let Some(v) = &r.validation {
        s.push('\n');
        validation(&mut s, v);
    }
    s
}

fn groups(s: &mut String, g: &[Group]) {
    if g.is_empty() {
        let _ = writeln!(s, "no prunable weights found\n");
        return;
    }
    if g.len() > MAX_GROUP_ROWS {
        summary(s, g);
        return;
    }
    let _ = writeln!(
        s,
        "{:<28} {:>10} {:>12} {:>10} {:>9} {:>7} {:>7}",
        "EMP group", "N", "N_eff", "keep", "sparsity", "s_eff", "bound"
    );
    for x in g {
        let _ = writeln!(
            s,
            "{:<28} {:>10} {:>12} {:>10} {:>8.1}% {:>7.4} {:>7}",
            clip(&x.name, 28),
            x.n,
            x.n_eff.map(|v| format!("{v:.1}")).unwrap_or_else(|| "all-zero".into()),
            x.keep,
            100.0 * super::sparsity(x.keep, x.n),
            x.s_eff,
            x.s_eff_bound.map(|b| format!("{b:.4}")).unwrap_or_else(|| "n/a".into())
        );
    }
    s.push('\n');
}

fn summary(s: &mut String, g: &[Group]) {
    let ratio: f64 = g.iter().map(|x| x.n_eff.unwrap_or(x.n as f64) / x.n.max(1) as f64).sum::<f64>() / g.len() as f64;
    let min_seff = g.iter().map(|x| x.s_eff).fold(f64::INFINITY, f64::min);
    let below = g.iter().filter(|x| x.s_eff_bound.is_some_and(|b| x.s_eff + 1e-9 < b)).count();
    let zero = g.iter().filter(|x| x.n_eff.is_none()).count();
    let _ = writeln!(
        s,
        "{} EMP groups: mean N_eff/N {:.3}, min s_eff {:.4}, below bound {}, all-zero {} (every group is in --json)\n",
        g.len(),
        ratio,
        min_seff,
        below,
        zero
    );
}

fn tensors(s: &mut String, r: &Report) {
    let _ = writeln!(
        s,
        "{:<32} {:<8} {:<14} {:<5} {:>10} {:>10} {:>9}",
        "weight", "op", "shape", "dtype", "N", "kept", "sparsity"
    );
    for t in &r.tensors {
        let shape = t.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        let _ = writeln!(
            s,
            "{:<32} {:<8} {:<14} {:<5} {:>10} {:>10} {:>8.1}%",
            clip(&t.name, 32),
            t.op,
            shape,
            t.dtype,
            t.n,
            t.kept,
            100.0 * t.sparsity
        );
    }
    let tt = &r.totals;
    let _ = writeln!(
        s,
        "{:<32} {:<8} {:<14} {:<5} {:>10} {:>10} {:>8.1}%",
        "total",
        "",
        "",
        "",
        tt.params,
        tt.kept,
        100.0 * tt.sparsity
    );
    let _ = writeln!(s, "size: {} -> {} bytes", tt.bytes_before, tt.bytes_after);
    if r.format == "sparse" {
        let sparse: Vec<&str> = r.tensors.iter().filter(|t| t.format == "sparse").map(|t| t.name.as_str()).collect();
        let _ = writeln!(
            s,
            "sparse: {} of {} weights written as sparse tensors ({} bytes saved){}{}",
            tt.sparse_tensors,
            r.tensors.len(),
            tt.sparse_bytes_saved,
            if sparse.is_empty() { "" } else { ": " },
            sparse.join(", ")
        );
    }
}

/// Structured runs: one row per structure group, then parameters, MACs and size.
fn structures(s: &mut String, r: &Report) {
    let _ = writeln!(
        s,
        "{:<8} {:<28} {:>5} {:>8} {:>5} {:>7} {:>7}  removed / blocked by",
        "kind", "producer", "N", "N_eff", "kept", "s_eff", "bound"
    );
    for x in &r.structures {
        let what = match &x.blocked {
            Some(b) => format!("blocked: {b}"),
            None => format!("{:?}", x.removed),
        };
        let _ = writeln!(
            s,
            "{:<8} {:<28} {:>5} {:>8} {:>5} {:>7.4} {:>7}  {what}",
            format!("{:?}", x.kind).to_lowercase(),
            clip(&x.producer, 28),
            x.n,
            x.n_eff.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
            x.kept,
            x.s_eff,
            x.s_eff_bound.map(|b| format!("{b:.4}")).unwrap_or_else(|| "n/a".into()),
        );
    }
    let t = &r.totals;
    let _ = writeln!(s, "\nparameters {} -> {} ({:.1}% fewer)", t.params, t.kept, 100.0 * t.sparsity);
    if let (Some(a), Some(b)) = (t.macs_before, t.macs_after) {
        let _ = writeln!(s, "MACs       {a} -> {b}");
    }
    let _ = writeln!(s, "size: {} -> {} bytes", t.bytes_before, t.bytes_after);
}

pub fn render_validate(r: &ValidateReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "emprune validate {} {}", r.original, r.pruned);
    validation(&mut s, &r.validation);
    s
}

fn validation(s: &mut String, v: &Validation) {
    let verdict = if v.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(s, "validation with tract: {verdict} (min cosine {})", v.min_cosine);
    for i in &v.inputs {
        let _ = writeln!(s, "  input {} {:?} {} from {}", i.name, i.shape, i.dtype, i.source);
    }
    let _ = writeln!(
        s,
        "  {:<20} {:<12} {:>11} {:>11} {:>10} {:>8}",
        "output", "shape", "max|d|", "rel L2", "cosine", "argmax"
    );
    for o in &v.outputs {
        let shape = o.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        let am = o.argmax_agreement.map(|a| format!("{:.1}%", 100.0 * a)).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "  {:<20} {:<12} {:>11.4e} {:>11.4e} {:>10.6} {:>8}",
            clip(&o.name, 20),
            shape,
            o.max_abs,
            o.rel_l2,
            o.cosine,
            am
        );
    }
    let _ = writeln!(
        s,
        "  latency (median): original {:.3} ms, pruned {:.3} ms",
        v.latency_original_ms, v.latency_pruned_ms
    );
    if let Some(a) = &v.accuracy {
        let _ = writeln!(
            s,
            "  accuracy on {} labels: original {:.2}%, pruned {:.2}%",
            a.samples,
            100.0 * a.original,
            100.0 * a.pruned
        );
    }
    if let Some(n) = &v.precision_note {
        let _ = writeln!(s, "  note: {n}");
    }
    for f in &v.failures {
        let _ = writeln!(s, "  FAIL {f}");
    }
}

fn clip(x: &str, w: usize) -> String {
    if x.chars().count() <= w {
        x.to_string()
    } else {
        let tail: String = x.chars().rev().take(w - 1).collect::<Vec<_>>().into_iter().rev().collect();
        format!("…{tail}")
    }
}
