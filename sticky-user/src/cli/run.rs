//! `sticky run`: every setting as a flag named like its config-file key.

use std::path::PathBuf;

use crate::{
    config::Layer,
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
}

pub fn run(args: RunArgs, instance: Option<String>) -> anyhow::Result<()> {
    let (mut layer, file) = args.into_parts();
    layer.instance = instance;
    // While this process still has one thread: namespaces can only be changed then.
    if enter_namespaces(&layer, file.as_ref())? == PinScope::ProcessLifetime {
        eprintln!("sticky: {PROCESS_LIFETIME_WARNING}");
    }
    // One worker per CPU the process may use (proxy mode scales with them); TOKIO_WORKER_THREADS
    // overrides it.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(crate::daemon::run(layer, file))
}

/// Enters `--netns` (flag or file), then makes sure the pins outlive this process.
pub fn enter_namespaces(flags: &Layer, file: Option<&PathBuf>) -> anyhow::Result<PinScope> {
    let netns = match (&flags.netns, file) {
        (Some(name), _) => Some(name.clone()),
        (None, Some(path)) => Layer::from_file(path)?.netns,
        (None, None) => None,
    };
    if let Some(name) = netns {
        namespaces::enter_netns(&name)?;
    }
    Ok(namespaces::persistent_pins())
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
    fn flags_not_given_leave_the_file_alone() {
        assert_eq!(settings(&[]), Layer::default());
    }

    #[test]
    fn every_flag_sets_the_file_key_of_its_name() {
        let args: Vec<&str> = concat!(
            "--iface eth0 --iface eth1 --vip 10.0.0.1:80 --backend 10.0.1.1:80@2 ",
            "--seed 7 --table-size 7 --affinity-timeout 5m --max-flows 100 ",
            "--max-new-flows 101 --max-clients 102 --metrics 127.0.0.1:9100 --netns lb ",
            "--health-check tcp --health-interval 3s --health-timeout 2s --health-rise 4 ",
            "--health-fall 5 --health-status 200 --proxy 10.0.0.1:8080 --header Forwarded ",
            "--proxy-protocol --trusted-proxies 10.0.0.0/8 --ignore-missing-header ",
            "--cookie SRV --no-splice --splice-after 0 --header-timeout 9s ",
            "--connect-timeout 1s --max-head-bytes 2048 --max-connections 5 ",
            "--forwarded-for append --no-sid --keepalive-timeout 30s --pool-idle-timeout 2s ",
            "--pool-max-idle 3 ",
        )
        .split_whitespace()
        .collect();
        let file = Layer::from_toml(
            r#"
            iface = ["eth0", "eth1"]
            vip = ["10.0.0.1:80"]
            backend = ["10.0.1.1:80@2"]
            seed = 7
            table-size = 7
            affinity-timeout = "5m"
            max-flows = 100
            max-new-flows = 101
            max-clients = 102
            metrics = "127.0.0.1:9100"
            netns = "lb"
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
