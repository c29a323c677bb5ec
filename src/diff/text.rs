//! The text rendering of a diff: a side-by-side summary, then changed nodes, interface
//! changes and a tensor table (changed rows only unless `all`), then the verdict.

use std::fmt::Write;

use super::tensors::{TensorRow, TensorStat};
use super::{Change, DiffReport};

pub fn render(r: &DiffReport, all: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "emprune diff {} {}\n", r.a.path, r.b.path);
    summary(&mut s, r);
    let _ = writeln!(s, "\nnodes: {} added, {} removed, {} changed", r.nodes_added, r.nodes_removed, r.nodes_changed);
    for n in &r.nodes {
        let op = match n.change {
            Change::Added => format!("+ {}", n.op_b.as_deref().unwrap_or("")),
            Change::Removed => format!("- {}", n.op_a.as_deref().unwrap_or("")),
            _ => format!("~ {}", n.op_a.as_deref().unwrap_or("")),
        };
        let _ = writeln!(s, "  {op:<16} {}{}", graph_prefix(&n.graph), n.node);
        for d in &n.details {
            let _ = writeln!(s, "      {d}");
        }
    }
    for io in &r.io {
        let _ = writeln!(
            s,
            "  {} {} {}: {} -> {}",
            sign(io.change),
            io.kind,
            io.name,
            io.a.as_deref().unwrap_or("(none)"),
            io.b.as_deref().unwrap_or("(none)")
        );
    }
    let _ = writeln!(s, "tensors: {} changed of {}", r.tensors_changed, r.tensors.len());
    tensor_table(&mut s, r, all);
    let verdict = if r.equivalent { "models are equivalent" } else { "models differ" };
    let _ = writeln!(s, "\n{verdict}");
    s
}

fn summary(s: &mut String, r: &DiffReport) {
    let (a, b) = (&r.a, &r.b);
    let _ = writeln!(s, "{:<16} {:>18} {:>18} {:>9}", "", "A", "B", "B/A");
    let rows: [(&str, u64, u64, fn(u64) -> String); 8] = [
        ("model file", a.model_bytes, b.model_bytes, bytes),
        ("external data", a.data_bytes, b.data_bytes, bytes),
        ("nodes", a.nodes as u64, b.nodes as u64, count),
        ("tensors", a.tensors as u64, b.tensors as u64, count),
        ("params", a.params, b.params, count),
        ("non-zero params", a.nonzero_params, b.nonzero_params, count),
        ("MACs", a.macs, b.macs, count),
        ("non-zero MACs", a.nonzero_macs, b.nonzero_macs, count),
    ];
    for (label, x, y, f) in rows {
        let ratio = if x > 0 { format!("{:.3}", y as f64 / x as f64) } else { "-".into() };
        let _ = writeln!(s, "{label:<16} {:>18} {:>18} {ratio:>9}", f(x), f(y));
    }
    if !(a.macs_exact && b.macs_exact) {
        let _ = writeln!(s, "(some MACs count 1 position where a shape is unknown)");
    }
}

fn tensor_table(s: &mut String, r: &DiffReport, all: bool) {
    let rows: Vec<&TensorRow> = r.tensors.iter().filter(|t| all || t.change != Change::Same).collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n  {:<34} {:<14} {:<20} {:<8} {:<18} {:>23} {:>15} {:>21}",
        "tensor", "change", "shape", "dtype", "storage", "non-zero A -> B", "sparsity A -> B", "N_eff A -> B"
    );
    for t in rows {
        let change = match t.change {
            Change::Changed => t.changed.join(","),
            other => format!("{other:?}").to_lowercase(),
        };
        let a = t.a.as_ref();
        let b = t.b.as_ref();
        let _ = writeln!(
            s,
            "{} {:<34} {:<14} {:<20} {:<8} {:<18} {:>23} {:>15} {:>21}",
            sign(t.change),
            clip(&format!("{}{}", graph_prefix(&t.graph), t.name), 34),
            change,
            pair(a, b, |x| shape(&x.shape)),
            pair(a, b, |x| short_type(&x.dtype)),
            pair(a, b, |x| x.storage.clone()),
            arrow(a, b, |x| x.nonzero.to_string()),
            arrow(a, b, |x| format!("{:.1}%", 100.0 * x.sparsity)),
            arrow(a, b, |x| x.n_eff.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into())),
        );
    }
}

fn sign(c: Change) -> char {
    match c {
        Change::Same => ' ',
        Change::Added => '+',
        Change::Removed => '-',
        Change::Changed => '~',
    }
}

fn graph_prefix(g: &str) -> String {
    if g == "main" {
        String::new()
    } else {
        format!("{g}/")
    }
}

/// One value when both sides agree, `a -> b` when they differ.
fn pair(a: Option<&TensorStat>, b: Option<&TensorStat>, f: impl Fn(&TensorStat) -> String) -> String {
    match (a.map(&f), b.map(&f)) {
        (Some(x), Some(y)) if x == y => x,
        _ => arrow(a, b, f),
    }
}

fn arrow(a: Option<&TensorStat>, b: Option<&TensorStat>, f: impl Fn(&TensorStat) -> String) -> String {
    format!("{} -> {}", a.map(&f).unwrap_or_else(|| "·".into()), b.map(&f).unwrap_or_else(|| "·".into()))
}

fn shape(d: &[i64]) -> String {
    format!("[{}]", d.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","))
}

fn short_type(t: &str) -> String {
    match t {
        "float" => "f32".into(),
        "float16" => "f16".into(),
        "bfloat16" => "bf16".into(),
        "double" => "f64".into(),
        other => other.into(),
    }
}

fn clip(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        s.into()
    } else {
        let tail: String = s.chars().rev().take(w - 1).collect::<Vec<_>>().into_iter().rev().collect();
        format!("…{tail}")
    }
}

fn count(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes(v: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = v as f64;
    let mut u = 0;
    while x >= 1024.0 && u < UNITS.len() - 1 {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}
