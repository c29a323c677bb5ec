#!/usr/bin/env python3
"""Runs the emprune benchmark and prints a Markdown table.

For each model made by gen_models.py and each scope, measures wall time and peak RSS
(`/usr/bin/time`) of `emprune prune --no-validate`, of the I/O floor (`cp` of the model and
its data file, then `sync`, since emprune fsyncs its output), of the straightforward
onnx+numpy implementation (py_emp.py, whose kept counts must equal emprune's), and of
onnxsim 0.8.1's magnitude pruning at emprune's sparsity (sim_prune.py; per-row or global
only). Page cache warm for every run (each input is read once before timing). Before every
timed run the scratch folder is emptied, then `sync` and a one-second pause let the freed
blocks settle. emprune and cp run REPEATS times (default 3; the median is reported, with the
range); Python and onnxsim, which take minutes, run once.

usage: run_bench.py MODELS_DIR SCRATCH_DIR EMPRUNE_BIN PYTHON [size ...]

With EMPRUNE_ONLY=1 in the environment only emprune and cp are timed (quick re-runs).
"""
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 1800
REPEATS = int(os.environ.get("REPEATS", "3"))
SKIP = {("large", "global", "python"): "not run: a full f32 copy of 1.6 G scores plus numpy's partition copy needs ~20 GB"}


def timed(cmd):
    """(wall seconds, peak RSS MiB, stdout, error or None)."""
    full = ["/usr/bin/time", "-f", "%e %M"] + cmd
    try:
        p = subprocess.run(full, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, None, "", f"timeout after {TIMEOUT}s"
    last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "0 0"
    try:
        wall, rss = last.split()
        wall, rss = float(wall), int(rss) / 1024
    except ValueError:
        wall, rss = None, None
    # The last lines are /usr/bin/time's ("Command exited ..." and the "%e %M" line).
    lines = [l for l in p.stderr.strip().splitlines()[:-1] if not l.startswith("Command exited")]
    err = None if p.returncode == 0 else (lines or ["failed"])[-1][:120]
    return wall, rss, p.stdout, err


def files(model):
    fs = [model]
    if os.path.exists(model + ".data"):
        fs.append(model + ".data")
    return fs


def clean(scratch):
    for f in os.listdir(scratch):
        os.remove(os.path.join(scratch, f))
    subprocess.run(["sync"])
    time.sleep(1)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def cp_time(model, scratch):
    """(median, min, max) wall seconds of copying the model files then `sync`."""
    cmd = ["sh", "-c", " && ".join(f"cp {f} {scratch}/" for f in files(model)) + " && sync"]
    walls = []
    for _ in range(REPEATS):
        clean(scratch)
        walls.append(timed(cmd)[0])
    clean(scratch)
    return median(walls), min(walls), max(walls)


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) // 2**20 for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} vCPUs ({cpu}), {mem} GiB RAM, Linux {os.uname().release}, load average at start {os.getloadavg()[0]:.2f}"


def main():
    models, scratch, emprune, python = sys.argv[1:5]
    sizes = sys.argv[5:] or ["small", "medium", "large"]
    os.makedirs(scratch, exist_ok=True)
    print(f"machine: {machine()}; emprune and cp: median of {REPEATS} runs (range)", flush=True)
    rows = []
    for size in sizes:
        model = os.path.join(models, f"{size}.onnx")
        total = sum(os.path.getsize(f) for f in files(model))
        for f in files(model):  # warm the page cache
            subprocess.run(["cat", f], stdout=subprocess.DEVNULL)
        cp = cp_time(model, scratch)
        for scope in ["tensor", "row", "global"]:
            out = os.path.join(scratch, "out.onnx")
            walls, rss, err = [], 0, None
            for _ in range(REPEATS):
                clean(scratch)
                w, r, stdout, err = timed([emprune, "prune", model, "-o", out, "--scope", scope, "--no-validate", "--json", "--quiet"])
                if err:
                    break
                walls.append(w)
                rss = max(rss, r)
            if err:
                print(f"emprune failed on {size} {scope}: {err}", file=sys.stderr)
                continue
            wall, wall_range = median(walls), (min(walls), max(walls))
            rep = json.loads(stdout)
            kept = {t["name"]: t["kept"] for t in rep["tensors"]}
            sparsity = rep["totals"]["sparsity"]
            largest = max(t["n"] * {"f32": 4, "f16": 2, "bf16": 2, "f64": 8}[t["dtype"]] for t in rep["tensors"])
            row = dict(size=size, scope=scope, bytes=total, largest=largest, sparsity=sparsity, wall=wall, wall_range=wall_range, rss=rss, cp=cp[0], cp_range=cp[1:])
            clean(scratch)
            if os.environ.get("EMPRUNE_ONLY"):
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                continue
            if (size, scope, "python") in SKIP:
                row["py"] = SKIP[(size, scope, "python")]
            else:
                pw, prss, pout, perr = timed([python, os.path.join(HERE, "py_emp.py"), model, out, scope])
                if perr:
                    row["py"] = f"failed: {perr}"
                else:
                    pk = json.loads(pout)["kept"]
                    row.update(py_wall=pw, py_rss=prss, py_match=(pk == kept))
            clean(scratch)
            if scope == "tensor":
                row["sim"] = "no per-tensor mode"
            else:
                sw, srss, _, serr = timed([python, os.path.join(HERE, "sim_prune.py"), model, out, str(sparsity), scope])
                row.update(sim_wall=sw, sim_rss=srss) if not serr else row.update(sim=f"failed: {serr}")
            clean(scratch)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print_table(rows)


def secs(x):
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def mib(x):
    return f"{x:,.0f}"


def print_table(rows):
    print("| model | scope | sparsity | emprune | peak RSS (MiB) | RSS / file | beyond largest tensor (MiB) | cp+sync | ÷ cp | Python (onnx+numpy) | Python RSS | speed-up vs Python | same kept counts | onnxsim 0.8.1 | speed-up vs onnxsim |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gb = r["bytes"] / 2**30
        name = f"{r['size']} ({gb:.2f} GiB)"
        py = f"{secs(r['py_wall'])} s" if "py_wall" in r else r.get("py", "-")
        pyrss = mib(r["py_rss"]) if "py_rss" in r else "-"
        speed = f"{r['py_wall'] / r['wall']:.1f}×" if "py_wall" in r else "-"
        match = ("yes" if r["py_match"] else "NO") if "py_match" in r else "-"
        sim = f"{secs(r['sim_wall'])} s" if "sim_wall" in r else r.get("sim", "-")
        simx = f"{r['sim_wall'] / r['wall']:.1f}×" if "sim_wall" in r else "-"
        lo, hi = r["wall_range"]
        clo, chi = r["cp_range"]
        beyond = mib(r["rss"] - r["largest"] / 2**20)
        print(
            f"| {name} | {r['scope']} | {100 * r['sparsity']:.1f}% | {secs(r['wall'])} s ({secs(lo)}–{secs(hi)}) | {mib(r['rss'])} | {r['rss'] * 2**20 / r['bytes']:.2f} | {beyond} "
            f"| {secs(r['cp'])} s ({secs(clo)}–{secs(chi)}) | {r['wall'] / r['cp']:.1f}× | {py} | {pyrss} | {speed} | {match} | {sim} | {simx} |"
        )


if __name__ == "__main__":
    main()
