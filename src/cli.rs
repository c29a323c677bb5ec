//! The command line (clap derive) and its translation into validated library configs.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use regex::Regex;

use crate::prune::{Config, Scope};
use crate::score::calib::Calibration;
use crate::score::Criterion;
use crate::structure::plan::StructConfig;
use crate::structure::score::Norm;
use crate::structure::Level;
use crate::validate::{InputSpec, Options, DEFAULT_MIN_COSINE};
use crate::weights::{slots, Filter};

#[derive(Parser, Debug)]
#[command(name = "emprune", version, about = "Effective Model Pruning (EMP) for ONNX models, validated with tract")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// No progress bar on stderr (it is drawn only on a terminal anyway).
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show what EMP would prune (per group N, N_eff, keep, s_eff, bound); writes nothing.
    Inspect {
        model: PathBuf,
        #[command(flatten)]
        prune: PruneArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Prune MODEL into OUT, then validate both with tract (unless --no-validate).
    Prune {
        model: PathBuf,
        /// Output model path (never the input); external data goes to OUT.data.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        prune: PruneArgs,
        /// Output format: `dense` zeroes pruned entries in place; `sparse` also stores each
        /// pruned weight as an ONNX sparse_initializer where that is smaller.
        #[arg(long, default_value = "dense", value_parser = ["dense", "sparse"])]
        format: String,
        /// When validation fails, find the weights responsible (bisection), restore them dense
        /// and report them (for fixed transforms that look like weights).
        #[arg(long)]
        guard: bool,
        /// Skip the tract comparison.
        #[arg(long)]
        no_validate: bool,
        #[command(flatten)]
        validate: ValidateArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Run ORIGINAL and PRUNED with tract on the same inputs and compare their outputs.
    Validate {
        original: PathBuf,
        pruned: PathBuf,
        #[command(flatten)]
        validate: ValidateArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Compare two models: nodes, tensors (non-zeros, sparsity, N_eff), params, MACs, sizes.
    /// Exit status 0 when equivalent, 1 when they differ, 2 on error.
    Diff {
        a: PathBuf,
        b: PathBuf,
        /// Show every tensor row in the text output, not only the changed ones.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
}

#[derive(Args, Debug, Clone)]
pub struct PruneArgs {
    /// Importance score: of each weight entry (magnitude [default], wanda), or of each structure
    /// with --level (l2 [default], l1, wanda: the sum of its entries' wanda scores).
    #[arg(long, value_enum)]
    pub criterion: Option<Criterion>,
    /// Which entries form one EMP score vector: all prunable weights (global [default]), each
    /// weight (tensor), each output unit of each weight (row); with --level: each coupled group
    /// of structures (layer [default]) or all structures of the model (global).
    #[arg(long, value_enum)]
    pub scope: Option<Scope>,
    /// Remove whole structures instead of zeroing weights: conv channels and MLP neurons
    /// (channel) or attention heads (head). Writes a smaller dense model.
    #[arg(long, value_enum)]
    pub level: Option<Level>,
    /// Keep floor(beta * N_eff) entries per score vector (the paper recommends 1).
    #[arg(long, default_value_t = 1.0)]
    pub beta: f64,
    /// Only prune weights whose name matches this regex (repeatable).
    #[arg(long)]
    pub include: Vec<String>,
    /// Never prune weights whose name matches this regex (repeatable).
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Op types whose weight inputs are prunable (comma-separated). Also available: LSTM, GRU, RNN.
    #[arg(long, value_delimiter = ',', default_values_t = slots::DEFAULT_OPS.iter().map(|s| s.to_string()))]
    pub ops: Vec<String>,
    /// Calibration data for --criterion wanda: NAME=FILE.npy, NAME=FILE.npz, or FILE.npz with
    /// one array per input (samples along axis 0; repeatable).
    #[arg(long = "calib", value_name = "NAME=FILE")]
    pub calib: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ValidateArgs {
    /// Pin an input's shape: NAME=1x3x224x224 (repeatable).
    #[arg(long = "input-shape", value_name = "NAME=DIMS")]
    pub input_shape: Vec<String>,
    /// Real inputs: NAME=FILE.npy, NAME=FILE.npz, or FILE.npz with arrays named after inputs.
    #[arg(long = "input", value_name = "NAME=FILE")]
    pub input: Vec<String>,
    /// Range of random values for an input: NAME=LO..HI (integers inclusive, e.g. token ids).
    #[arg(long = "input-range", value_name = "NAME=LO..HI")]
    pub input_range: Vec<String>,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fail (exit 1) when any output's cosine similarity is below this.
    #[arg(long, default_value_t = DEFAULT_MIN_COSINE)]
    pub min_cosine: f64,
    /// Timed runs per model for the latency median.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Integer class labels (.npy) to report top-1 accuracy of the first output.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Write the inputs and both models' outputs as .npy files into this folder.
    #[arg(long, value_name = "DIR")]
    pub save_io: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

impl PruneArgs {
    pub fn config(&self) -> Result<Config> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            bail!("--beta must be a positive number, got {}", self.beta);
        }
        let known: Vec<&str> = slots::REGISTRY.iter().map(|r| r.op).collect();
        if let Some(bad) = self.ops.iter().find(|o| !known.contains(&o.as_str())) {
            bail!("--ops: {bad:?} has no prunable weight slot (known: {})", known.join(", "));
        }
        let criterion = self.criterion.unwrap_or(Criterion::Magnitude);
        let calib = self.calibration(criterion)?;
        Ok(Config {
            criterion,
            // Wanda's setting in the paper (LLMs) is per output row.
            scope: self.scope.unwrap_or(if criterion == Criterion::Wanda { Scope::Row } else { Scope::Global }),
            beta: self.beta,
            filter: Filter {
                ops: self.ops.clone(),
                include: regexes(&self.include)?,
                exclude: regexes(&self.exclude)?,
            },
            calib,
        })
    }

    /// `--calib` files, required by (and only used with) `--criterion wanda`.
    fn calibration(&self, criterion: Criterion) -> Result<Calibration> {
        let files: Vec<(Option<String>, PathBuf)> = self
            .calib
            .iter()
            .map(|s| match s.split_once('=') {
                Some((n, f)) => (Some(n.to_string()), PathBuf::from(f)),
                None => (None, PathBuf::from(s)),
            })
            .collect();
        match (criterion == Criterion::Wanda, files.is_empty()) {
            (true, true) => bail!(
                "--criterion wanda needs calibration data: --calib NAME=FILE.npy (or FILE.npz); \
                 activation statistics of random inputs are meaningless"
            ),
            (false, false) => bail!("--calib is only used by --criterion wanda"),
            _ => Ok(Calibration { files }),
        }
    }
}

impl PruneArgs {
    /// The structured-pruning config when `--level` is given.
    pub fn structured(&self) -> Result<Option<StructConfig>> {
        let Some(level) = self.level else { return Ok(None) };
        if !(self.beta.is_finite() && self.beta > 0.0) {
            bail!("--beta must be a positive number, got {}", self.beta);
        }
        let criterion = self.criterion.unwrap_or(Criterion::L2);
        let norm = match criterion {
            Criterion::L2 => Norm::L2,
            Criterion::L1 => Norm::L1,
            Criterion::Wanda => Norm::Wanda,
            other => bail!("--level scores structures with --criterion l2, l1 or wanda, not {}", other.name()),
        };
        let calib = self.calibration(criterion)?;
        let global = match self.scope.unwrap_or(Scope::Layer) {
            Scope::Layer => false,
            Scope::Global => true,
            other => bail!("--level takes --scope layer or global, not {}", other.name()),
        };
        Ok(Some(StructConfig { level, norm, global, beta: self.beta, calib, guard: false }))
    }
}

fn regexes(v: &[String]) -> Result<Vec<Regex>> {
    v.iter().map(|r| Regex::new(r).with_context(|| format!("invalid regex {r:?}"))).collect()
}

impl ValidateArgs {
    pub fn options(&self) -> Result<Options> {
        if !(self.min_cosine.is_finite() && (-1.0..=1.0).contains(&self.min_cosine)) {
            bail!("--min-cosine must be in [-1, 1], got {}", self.min_cosine);
        }
        let mut shapes = HashMap::new();
        for s in &self.input_shape {
            let (name, dims) = split_kv(s, "--input-shape")?;
            let dims = dims
                .split(['x', ','])
                .map(|d| d.trim().parse::<usize>().ok().filter(|&d| d > 0))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| anyhow!("--input-shape {s:?}: dims must be positive integers like 1x3x224x224"))?;
            shapes.insert(name, dims);
        }
        let mut ranges = HashMap::new();
        for s in &self.input_range {
            let (name, r) = split_kv(s, "--input-range")?;
            let (lo, hi) = r.split_once("..").ok_or_else(|| anyhow!("--input-range {s:?}: expected NAME=LO..HI"))?;
            let (lo, hi): (f64, f64) = (lo.trim().parse()?, hi.trim().parse()?);
            if !(lo <= hi) {
                bail!("--input-range {s:?}: LO must not exceed HI");
            }
            ranges.insert(name, (lo, hi));
        }
        let files = self
            .input
            .iter()
            .map(|s| match s.split_once('=') {
                Some((n, f)) => (Some(n.to_string()), PathBuf::from(f)),
                None => (None, PathBuf::from(s)),
            })
            .collect();
        Ok(Options {
            inputs: InputSpec { shapes, ranges, files, seed: self.seed },
            min_cosine: self.min_cosine,
            runs: self.runs,
            labels: self.labels.clone(),
            save_io: self.save_io.clone(),
        })
    }
}

fn split_kv(s: &str, flag: &str) -> Result<(String, String)> {
    let (k, v) = s.split_once('=').ok_or_else(|| anyhow!("{flag} {s:?}: expected NAME=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}
