//! Shelling out to iproute2 and nftables, and reading what they print as JSON.

use std::process::{Command, Stdio};

use super::{Error, Result};

/// Runs `program args`, returning stdout; a failure carries its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    run_with_input(program, args, None)
}

/// [`run`] with `input` on stdin.
pub fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    use std::io::Write as _;
    let spawn_err = |source| Error::Spawn {
        program: program.into(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(Error::Command {
            program: program.into(),
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -j ARGS` parsed.
pub fn ip_json(args: &[&str]) -> Result<serde_json::Value> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let text = run("ip", &full)?;
    let text = if text.trim().is_empty() { "[]" } else { &text };
    serde_json::from_str(text).map_err(|e| Error::Parse {
        what: format!("ip {}", full.join(" ")),
        detail: e.to_string(),
    })
}

/// The device of the default route of a family.
pub fn default_route_dev(v6: bool) -> Result<String> {
    let family = if v6 { "-6" } else { "-4" };
    let routes = ip_json(&[family, "route", "show", "default"])?;
    routes
        .as_array()
        .and_then(|r| r.iter().find_map(|r| r["dev"].as_str()))
        .map(str::to_string)
        .ok_or(Error::NoDefaultRoute {
            family: if v6 { "IPv6" } else { "IPv4" },
        })
}

/// A device's MTU.
pub fn mtu(dev: &str) -> Result<u32> {
    let links = ip_json(&["link", "show", "dev", dev])?;
    links[0]["mtu"]
        .as_u64()
        .and_then(|m| u32::try_from(m).ok())
        .ok_or_else(|| Error::Parse {
            what: format!("ip link show dev {dev}"),
            detail: "no mtu".into(),
        })
}
