//! The `roomcast` command: `serve`, `demo`, `token`, `migrate`.

use clap::{Parser, Subcommand};

use roomcast::auth::{mint, now_secs, Claims};
use roomcast::config::Config;
use roomcast::startup::{shutdown_signal, Application};

#[derive(Parser)]
#[command(name = "roomcast", version, about = "Real-time event delivery server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Config),
    /// Run a meeting room fed by a simulated audio pipeline, shown live.
    Demo(roomcast::demo::DemoArgs),
    /// Print a client token signed with ROOMCAST_JWT_SECRET.
    Token {
        #[arg(long, env = "ROOMCAST_JWT_SECRET", hide_env_values = true)]
        jwt_secret: String,
        #[arg(long)]
        org: String,
        #[arg(long)]
        sub: String,
        /// Allow publishing through the REST API.
        #[arg(long = "pub")]
        publish: bool,
        /// Room ids or prefixes ending in `*` (repeatable); none means all.
        #[arg(long = "room")]
        rooms: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// What other members of a room see of this one (presence): a JSON
        /// object, e.g. '{"name": "Ana"}'.
        #[arg(long)]
        info: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Token {
            jwt_secret,
            org,
            sub,
            publish,
            rooms,
            ttl,
            info,
        } => {
            let info = match info
                .as_deref()
                .map(serde_json::from_str::<serde_json::Value>)
            {
                None => None,
                Some(Ok(v)) if v.is_object() => Some(v),
                Some(_) => {
                    eprintln!("roomcast: --info must be a JSON object");
                    return std::process::ExitCode::FAILURE;
                }
            };
            let claims = Claims {
                sub,
                org,
                exp: now_secs() + ttl,
                rooms: (!rooms.is_empty()).then_some(rooms),
                publish: publish.then_some(true),
                info,
            };
            println!("{}", mint(&jwt_secret, &claims));
            std::process::ExitCode::SUCCESS
        }
        Command::Serve(config) => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
                .init();
            raise_open_files();
            let result = actix_web::rt::System::new().block_on(async move {
                let app = Application::build(config).await?;
                log::info!("listening on 127.0.0.1:{}", app.port());
                // Tests and scripts read the bound port from this line.
                println!("roomcast listening on port {}", app.port());
                app.run(shutdown_signal()).await?;
                log::info!("stopped");
                Ok::<_, Box<dyn std::error::Error>>(())
            });
            match result {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    eprintln!("roomcast: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Demo(args) => roomcast::demo::main(args),
    }
}

/// One socket per connection: raise the soft open-file limit to the hard one
/// (a server holding tens of thousands of connections needs it).
fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                log::warn!("could not raise the open-file limit");
            }
        }
    }
    log::info!("open-file limit: {}", lim.rlim_cur);
}
