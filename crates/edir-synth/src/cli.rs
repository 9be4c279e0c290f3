//! The command line (the contract users and tests rely on; see the README).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Synthesize fine-grained composed-image-retrieval benchmarks by image editing, and score
/// embedding models on them.
#[derive(Debug, Parser)]
#[command(name = "edir-synth", version, propagate_version = true)]
pub(crate) struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Validate a pipeline without calling any endpoint; report every problem at once.
    Check {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// List the taxonomy's categories and subcategories with their ids and definitions.
    Taxonomy {
        /// A pipeline (its taxonomy and selected subcategories) or a taxonomy file.
        #[arg(default_value = "pipelines/taxonomy.yaml")]
        file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}
