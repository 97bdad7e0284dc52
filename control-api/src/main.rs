use clap::Parser;
use control_api::config::{Cli, Command};

#[global_allocator]
static HEAP: control_api::heap::Counting = control_api::heap::Counting;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Openapi => {
            let spec = control_api::api::openapi();
            println!("{}", spec.to_pretty_json()?);
            Ok(())
        }
        Command::Serve => {
            let _traces = control_api::telemetry::init(cli.serve.log_format);
            control_api::app::serve(cli.serve).await
        }
    }
}
