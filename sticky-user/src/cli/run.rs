//! `sticky run`: every setting as a flag named like its config-file key.

use std::path::PathBuf;

use tracing::Level;

use crate::{
    config::Layer,
    logging::{self, LogFormat},
    namespaces::{self, PROCESS_LIFETIME_WARNING, PinScope},
};

/// Balance VIP traffic on interfaces to backends, in the kernel (tc eBPF).
#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    settings: Layer,
    /// TOML file with the same settings (flag names as keys); flags override it, SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl RunArgs {
    /// The flags' settings and the `--config` file.
    pub fn into_parts(self) -> (Layer, Option<PathBuf>) {
        (self.settings, self.config)
    }

    /// `--log-format`, else the file's `log-format`, read before logging starts. A file that
    /// does not parse counts as text here; its error is reported when the daemon reads it.
    pub fn log_format(&self) -> LogFormat {
        early(&self.settings, self.config.as_ref(), |l| l.log_format)
            .ok()
            .flatten()
            .unwrap_or_default()
    }
}

/// A setting needed before the configuration is resolved: the flag, else the file's key.
fn early<T>(
    flags: &Layer,
    file: Option<&PathBuf>,
    key: impl Fn(&Layer) -> Option<T>,
) -> anyhow::Result<Option<T>> {
    match (key(flags), file) {
        (Some(value), _) => Ok(Some(value)),
        (None, Some(path)) => Ok(key(&Layer::from_file(path)?)),
        (None, None) => Ok(None),
    }
}

pub fn run(args: RunArgs, instance: Option<String>) -> anyhow::Result<()> {
    let (mut layer, file) = args.into_parts();
    layer.instance = instance;
    // While this process still has one thread: namespaces can only be changed then.
    let pin_scope = enter_namespaces(&layer, file.as_ref())?;
    if pin_scope == PinScope::ProcessLifetime {
        logging::complain(Level::WARN, PROCESS_LIFETIME_WARNING);
    }
    // One worker per CPU the process may use (proxy mode scales with them); TOKIO_WORKER_THREADS
    // overrides it.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(crate::daemon::run(layer, file, pin_scope))
}

/// Enters `--netns` (flag or file), then makes sure the pins outlive this process.
pub fn enter_namespaces(flags: &Layer, file: Option<&PathBuf>) -> anyhow::Result<PinScope> {
    enter_configured_netns(flags, file)?;
    Ok(namespaces::persistent_pins())
}

/// Enters `--netns` (the flag, else the file's `netns`), if any: where the daemon runs.
pub fn enter_configured_netns(flags: &Layer, file: Option<&PathBuf>) -> anyhow::Result<()> {
    if let Some(name) = early(flags, file, |l| l.netns.clone())? {
        namespaces::enter_netns(&name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{Args as _, Parser as _};

    use super::*;
    use crate::cli::{Cli, Command};

    fn settings(args: &[&str]) -> Layer {
        let argv = ["sticky", "run"].iter().chain(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(run) => run.settings,
            _ => panic!("not `sticky run`"),
        }
    }

    #[test]
    fn log_format_from_the_flag_else_the_file() {
        let run = |args: &[&str]| {
            let argv = ["sticky", "run"].iter().chain(args);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Run(run) => run.log_format(),
                _ => panic!("not `sticky run`"),
            }
        };
        let dir = std::env::temp_dir();
        let json = dir.join(format!("sticky-log-format-{}.toml", std::process::id()));
        std::fs::write(&json, "log-format = \"json\"\n").unwrap();
        let json = json.to_str().unwrap();
        assert_eq!(run(&[]), LogFormat::Text);
        assert_eq!(run(&["--log-format", "json"]), LogFormat::Json);
        assert_eq!(run(&["--config", json]), LogFormat::Json);
        assert_eq!(
            run(&["--config", json, "--log-format", "text"]),
            LogFormat::Text
        );
        // Unreadable: text, and the daemon reports the file when it reads it in full.
        assert_eq!(
            run(&["--config", "/nonexistent/sticky.toml"]),
            LogFormat::Text
        );
        assert!(Cli::try_parse_from(["sticky", "run", "--log-format", "yaml"]).is_err());
        let _ = std::fs::remove_file(json);
    }

    #[test]
    fn flags_not_given_leave_the_file_alone() {
        assert_eq!(settings(&[]), Layer::default());
    }

    #[test]
    fn every_flag_sets_the_file_key_of_its_name() {
        let args: Vec<&str> = concat!(
            "--iface eth0 --iface eth1 --vip 10.0.0.1:80 --backend 10.0.1.1:80@2 ",
            "--seed 7 --table-size 7 --affinity-timeout 5m --affinity-prefix 24,64 --max-flows 100 ",
            "--slow-start 30s ",
            "--max-new-flows 101 --max-clients 102 --metrics 127.0.0.1:9100 --netns lb ",
            "--log-format json ",
            "--health-check tcp --health-interval 3s --health-timeout 2s --health-rise 4 ",
            "--health-fall 5 --health-status 200 --proxy 10.0.0.1:8080 --header Forwarded ",
            "--proxy-protocol --trusted-proxies 10.0.0.0/8 --ignore-missing-header ",
            "--cookie SRV --no-splice --splice-after 0 --header-timeout 9s ",
            "--connect-timeout 1s --max-head-bytes 2048 --max-connections 5 ",
            "--forwarded-for append --no-sid --keepalive-timeout 30s --pool-idle-timeout 2s ",
            "--pool-max-idle 3 ",
            "--backend-dns tasks.web:3000 --backend-srv _http._tcp.web --dns-server 127.0.0.1:53 ",
            "--forward dsr --xdp native --dsr-source 10.0.0.9 --dsr-source fd00::9 ",
            "--udp-timeout 30s --replies-any-node --announce-table 100 --withdraw-grace 2s ",
            "--announce-return 0.0.0.0/0,::/0 ",
            "--peers 10.0.0.2:7946,10.0.0.3:7946 --peers 10.0.0.4:7946 ",
            "--peer-listen 10.0.0.1:7946 --peer-key-file /etc/sticky/peer.key ",
        )
        .split_whitespace()
        .collect();
        let file = Layer::from_toml(
            r#"
            iface = ["eth0", "eth1"]
            vip = ["10.0.0.1:80"]
            backend = ["10.0.1.1:80@2"]
            backend-dns = ["tasks.web:3000"]
            backend-srv = ["_http._tcp.web"]
            dns-server = "127.0.0.1:53"
            seed = 7
            table-size = 7
            affinity-timeout = "5m"
            affinity-prefix = "24,64"
            slow-start = "30s"
            forward = "dsr"
            xdp = "native"
            dsr-source = ["10.0.0.9", "fd00::9"]
            udp-timeout = "30s"
            replies-any-node = true
            announce-table = 100
            withdraw-grace = "2s"
            announce-return = ["0.0.0.0/0,::/0"]
            max-flows = 100
            max-new-flows = 101
            max-clients = 102
            metrics = "127.0.0.1:9100"
            netns = "lb"
            log-format = "json"
            peers = ["10.0.0.2:7946,10.0.0.3:7946", "10.0.0.4:7946"]
            peer-listen = "10.0.0.1:7946"
            peer-key-file = "/etc/sticky/peer.key"
            [health]
            check = "tcp"
            interval = "3s"
            timeout = "2s"
            rise = 4
            fall = 5
            status = "200"
            [proxy]
            listen = "10.0.0.1:8080"
            header = "Forwarded"
            proxy-protocol = true
            trusted-proxies = "10.0.0.0/8"
            ignore-missing-header = true
            cookie = "SRV"
            splice = false
            splice-after = 0
            header-timeout = "9s"
            connect-timeout = "1s"
            max-head-bytes = 2048
            max-connections = 5
            forwarded-for = "append"
            sid = false
            keepalive-timeout = "30s"
            pool-idle-timeout = "2s"
            pool-max-idle = 3
            "#,
        )
        .unwrap();
        assert_eq!(settings(&args), file);
        // A new flag fails here until it is added above, with its key.
        for arg in Layer::augment_args(clap::Command::new("run")).get_arguments() {
            let flag = format!("--{}", arg.get_long().unwrap());
            assert!(args.contains(&flag.as_str()), "{flag} is not tested");
        }
    }
}
