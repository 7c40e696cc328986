//! `sticky man`: man pages (roff) generated from the clap definitions: the help text is the
//! manual.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::CommandFactory as _;

#[derive(clap::Args)]
pub struct ManArgs {
    /// Write sticky.1 and one page per command (sticky-run.1, sticky-backend.1, …) into DIR
    /// instead of printing sticky(1).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn run(args: ManArgs) -> anyhow::Result<()> {
    let cmd = super::Cli::command();
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("write man pages to {}", dir.display()))
        }
        None => clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .context("write the man page"),
    }
}
