//! `sticky completions SHELL`: completion scripts generated from the clap definitions, so they
//! never lag behind the commands.

use clap::CommandFactory as _;

#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

pub fn run(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = super::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, super::BIN, &mut std::io::stdout());
    Ok(())
}
