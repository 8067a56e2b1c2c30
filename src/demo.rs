//! `roomcast demo` (written next).
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}
pub fn main(_a: DemoArgs) -> std::process::ExitCode { std::process::ExitCode::SUCCESS }
