//! Command-line flags and environment variables, parsed by hand.

use std::time::Duration;

/// Everything the process needs to start.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Listen address.
    pub host: String,
    /// Listen port; 0 asks the OS for a free one.
    pub port: u16,
    /// Config file path.
    pub config: String,
    /// Validate the config, print a summary and exit.
    pub check_config: bool,
    /// Probe a running instance's `/health` and exit 0/1 (for container HEALTHCHECK).
    pub healthcheck: bool,
    /// Requests served at once (worker slots).
    pub workers: usize,
    /// Wait-queue bound.
    pub queue: usize,
    /// Request body limit in bytes.
    pub max_body: usize,
    /// Default upstream connect timeout.
    pub connect_timeout: Duration,
    /// Default upstream idle timeout.
    pub idle_timeout: Duration,
    /// Log level name.
    pub log_level: log::LevelFilter,
    /// Proxy keys from `CM_OPEN_WEBUI_PROXY_API_KEYS`.
    pub proxy_keys: Vec<crate::policy::identity::auth::ProxyKey>,
    /// Key for `/debug` and `/reload`.
    pub admin_key: Option<String>,
    /// How long in-flight requests may run after SIGTERM.
    pub drain: Duration,
    /// Config file poll interval; zero disables watching.
    pub watch: Duration,
    /// Bound for a client to send its request head (and for each read of its body).
    pub client_timeout: Duration,
    /// Bound for a blocked write to a client that stopped reading.
    pub client_write_timeout: Duration,
    /// Largest request head (request line plus headers).
    pub max_header_bytes: usize,
    /// CA bundle trusted for every backend, beside the bundled roots.
    pub ca_file: Option<String>,
    /// Access log format.
    pub log_format: crate::http::access_log::Format,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Run (or check) with these options.
    Run(Box<Options>),
    /// Print the version.
    Version,
    /// Print usage.
    Help,
    /// `modelmux usage`: print usage totals from the ledger.
    Usage(UsageArgs),
    /// `modelmux usage --help`.
    UsageHelp,
}

/// `modelmux usage [--since DATE] [--until DATE] [--by user,model] [--user U] [--log FILE]
/// [--config PATH] [--json]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageArgs {
    /// First day counted (`YYYY-MM-DD`).
    pub since: Option<String>,
    /// First day not counted.
    pub until: Option<String>,
    /// Grouping: user, key, model or a comma list.
    pub by: Option<String>,
    /// Only this user.
    pub user: Option<String>,
    /// The ledger file; else the config's `usageLog`.
    pub log: Option<String>,
    /// The config file naming the ledger.
    pub config: String,
    /// A shared store (`redis://…`) to read every replica's totals from, instead of a ledger.
    pub store: Option<String>,
    /// JSON (as `/usage` answers) instead of a table.
    pub json: bool,
}

/// Parses the arguments after `usage`.
fn parse_usage(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<UsageArgs, String> {
    let mut u = UsageArgs {
        config: env("CM_OPEN_WEBUI_PROXY_CONFIG_FILE")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "config.json".into()),
        ..UsageArgs::default()
    };
    let mut flags = Flags { args, i: 0 };
    while let Some((flag, inline)) = flags.next_flag() {
        let mut value = || flags.value(&format!("usage: {}", flag), inline.clone());
        match flag.as_str() {
            "--since" => u.since = Some(value()?),
            "--until" => u.until = Some(value()?),
            "--by" => u.by = Some(value()?),
            "--user" => u.user = Some(value()?),
            "--log" => u.log = Some(value()?),
            "--config" => u.config = value()?,
            "--store" => u.store = Some(value()?),
            "--json" => u.json = true,
            other => {
                return Err(format!(
                    "usage: unknown argument \"{}\" (see modelmux usage --help)",
                    other
                ))
            }
        }
    }
    Ok(u)
}

/// Usage text for `modelmux usage --help`.
pub const USAGE_COMMAND: &str =
    "modelmux usage: usage totals from the usage ledger, without a running server

USAGE: modelmux usage [--since DATE] [--until DATE] [--by user,key,model] [--user U]
                      [--log FILE | --config PATH | --store URL] [--json]

  --since DATE     first day counted, YYYY-MM-DD (default: the ledger's start)
  --until DATE     first day not counted, YYYY-MM-DD (default: no end)
  --by FIELDS      group by any of user, key, model, comma-separated (default user)
  --user U         only this user
  --log FILE       the ledger file (its rotated copies FILE.1 to FILE.3 are read too)
  --config PATH    the config whose usageLog names the ledger, when --log is not given (env
                   CM_OPEN_WEBUI_PROXY_CONFIG_FILE, default config.json); only usageLog is read
  --store URL      the shared store (redis://[:password@]host[:port][/db] or rediss://…) that
                   replicas keep usage totals in: every replica's totals, by UTC day
  --json           print JSON exactly as GET /usage answers, instead of a table
  --help           print this help
";

/// Usage text for `--help`.
pub const USAGE: &str = "modelmux: one OpenAI-compatible endpoint in front of many LLM backends

USAGE: modelmux [--config PATH] [--port N] [--host ADDR] [--check-config | --healthcheck]
       modelmux usage [--since DATE] [--until DATE] [--by user,key,model] [--user U]
                      [--log FILE | --config PATH | --store URL] [--json]
       modelmux --version | --help

  --config PATH    config file (env CM_OPEN_WEBUI_PROXY_CONFIG_FILE, default config.json)
  --port N         listen port (env CM_OPEN_WEBUI_PROXY_PORT, default 3333; 0 = any free port)
  --host ADDR      listen address (env CM_OPEN_WEBUI_PROXY_HOST, default 0.0.0.0)
  --check-config   validate the config, print a summary, exit 0 (valid) or 1
  --healthcheck    probe GET /health of the instance on --port, exit 0 (healthy) or 1
  --version        print the version
  --help           print this help

  usage            print usage totals from the usage ledger (no running server needed):
                   --since/--until YYYY-MM-DD (until excluded), --by any of user,key,model
                   (default user), --log the ledger file (default: the config's usageLog),
                   --store redis://… every replica's totals; see modelmux usage --help

Environment:
  CM_OPEN_WEBUI_PROXY_WORKERS              requests served at once (default 1024)
  CM_OPEN_WEBUI_PROXY_QUEUE                requests that may wait for a worker (default 64)
  CM_OPEN_WEBUI_PROXY_MAX_BODY_BYTES       request body limit (default 33554432 = 32 MiB)
  CM_OPEN_WEBUI_PROXY_CONNECT_TIMEOUT_SECS upstream connect timeout (default 10)
  CM_OPEN_WEBUI_PROXY_IDLE_TIMEOUT_SECS    longest upstream silence (default 600)
  CM_OPEN_WEBUI_PROXY_LOG_LEVEL            error|warn|info|debug (default info)
  CM_OPEN_WEBUI_PROXY_LOG_FORMAT           access log: text (stderr) or json (stdout) (default text)
  CM_OPEN_WEBUI_PROXY_API_KEYS             client keys: key1,key2=modelA|modelB (default: open)
  CM_OPEN_WEBUI_PROXY_ADMIN_KEY            key for /debug, /reload and /usage
  CM_OPEN_WEBUI_PROXY_DRAIN_SECS           SIGTERM drain bound (default 30)
  CM_OPEN_WEBUI_PROXY_WATCH_SECS           config file poll interval, 0 = off (default 2)
  CM_OPEN_WEBUI_PROXY_CLIENT_TIMEOUT_SECS  bound for a client to send its request head (default 30)
  CM_OPEN_WEBUI_PROXY_CLIENT_WRITE_TIMEOUT_SECS  bound for a write to a client that stopped reading (default 60)
  CM_OPEN_WEBUI_PROXY_MAX_HEADER_BYTES     request head limit, 431 beyond it (default 65536)
  CM_OPEN_WEBUI_PROXY_CA_FILE              extra CA bundle (PEM) trusted for every backend
  CM_OPEN_WEBUI_PROXY_REPLICA              this replica's name in usage ledger lines (default: hostname)
  HTTPS_PROXY / HTTP_PROXY                 forward proxy for https / http backends
  ALL_PROXY                                forward proxy where the matching one above is unset
  NO_PROXY                                 backend hosts reached directly: exact, .domain suffix or *
";

/// Parses arguments (without the program name) and an environment lookup.
pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Command, String> {
    if args.first().map(String::as_str) == Some("usage") {
        if args[1..].iter().any(|a| a == "--help" || a == "-h") {
            return Ok(Command::UsageHelp);
        }
        return parse_usage(&args[1..], env).map(Command::Usage);
    }
    let mut o = from_env(env)?;
    if o.workers == 0 {
        return Err("CM_OPEN_WEBUI_PROXY_WORKERS must be at least 1".into());
    }
    if o.client_timeout.is_zero() || o.client_write_timeout.is_zero() || o.max_header_bytes < 1024 {
        return Err(
            "client timeouts must be at least 1 second and the header limit at least 1024 bytes"
                .into(),
        );
    }
    if o.connect_timeout.is_zero() || o.idle_timeout.is_zero() {
        return Err("upstream timeouts must be at least 1 second".into());
    }
    let mut flags = Flags { args, i: 0 };
    while let Some((flag, inline)) = flags.next_flag() {
        let mut value = || flags.value(&flag, inline.clone());
        match flag.as_str() {
            "--help" | "-h" => return Ok(Command::Help),
            "--version" | "-V" => return Ok(Command::Version),
            "--check-config" => o.check_config = true,
            "--healthcheck" => o.healthcheck = true,
            "--port" => o.port = parse_port(&value()?).map_err(|e| format!("--port {}", e))?,
            "--config" => o.config = value()?,
            "--host" => o.host = value()?,
            other => return Err(format!("unknown argument \"{}\"; see --help", other)),
        }
    }
    Ok(Command::Run(Box::new(o)))
}

/// The options the environment sets, before the flags.
fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Options, String> {
    let env_num = |name: &str, default: u64| -> Result<u64, String> {
        match env(name) {
            None => Ok(default),
            Some(v) if v.trim().is_empty() => Ok(default),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("{} must be a whole number, got \"{}\"", name, v)),
        }
    };
    let mut o = Options {
        host: env("CM_OPEN_WEBUI_PROXY_HOST")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "0.0.0.0".into()),
        port: 3333,
        config: env("CM_OPEN_WEBUI_PROXY_CONFIG_FILE")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "config.json".into()),
        check_config: false,
        healthcheck: false,
        workers: env_num("CM_OPEN_WEBUI_PROXY_WORKERS", 1024)? as usize,
        queue: env_num("CM_OPEN_WEBUI_PROXY_QUEUE", 64)? as usize,
        max_body: env_num("CM_OPEN_WEBUI_PROXY_MAX_BODY_BYTES", 32 * 1024 * 1024)? as usize,
        connect_timeout: Duration::from_secs(env_num(
            "CM_OPEN_WEBUI_PROXY_CONNECT_TIMEOUT_SECS",
            10,
        )?),
        idle_timeout: Duration::from_secs(env_num("CM_OPEN_WEBUI_PROXY_IDLE_TIMEOUT_SECS", 600)?),
        log_level: log::LevelFilter::Info,
        proxy_keys: env("CM_OPEN_WEBUI_PROXY_API_KEYS")
            .map(|s| crate::policy::identity::auth::parse_env_keys(&s))
            .unwrap_or_default(),
        admin_key: env("CM_OPEN_WEBUI_PROXY_ADMIN_KEY").filter(|s| !s.trim().is_empty()),
        drain: Duration::from_secs(env_num("CM_OPEN_WEBUI_PROXY_DRAIN_SECS", 30)?),
        watch: Duration::from_secs(env_num("CM_OPEN_WEBUI_PROXY_WATCH_SECS", 2)?),
        client_timeout: Duration::from_secs(env_num(
            "CM_OPEN_WEBUI_PROXY_CLIENT_TIMEOUT_SECS",
            30,
        )?),
        client_write_timeout: Duration::from_secs(env_num(
            "CM_OPEN_WEBUI_PROXY_CLIENT_WRITE_TIMEOUT_SECS",
            60,
        )?),
        max_header_bytes: env_num("CM_OPEN_WEBUI_PROXY_MAX_HEADER_BYTES", 64 * 1024)? as usize,
        ca_file: env("CM_OPEN_WEBUI_PROXY_CA_FILE").filter(|s| !s.trim().is_empty()),
        log_format: match env("CM_OPEN_WEBUI_PROXY_LOG_FORMAT")
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("") | Some("text") => crate::http::access_log::Format::Text,
            Some("json") => crate::http::access_log::Format::Json,
            Some(other) => {
                return Err(format!(
                    "CM_OPEN_WEBUI_PROXY_LOG_FORMAT must be text or json, got \"{}\"",
                    other
                ))
            }
        },
    };
    if let Some(p) = env("CM_OPEN_WEBUI_PROXY_PORT").filter(|s| !s.trim().is_empty()) {
        o.port = parse_port(&p).map_err(|e| format!("CM_OPEN_WEBUI_PROXY_PORT {}", e))?;
    }
    if let Some(l) = env("CM_OPEN_WEBUI_PROXY_LOG_LEVEL").filter(|s| !s.trim().is_empty()) {
        o.log_level = parse_log_level(&l)?;
    }
    Ok(o)
}

/// `CM_OPEN_WEBUI_PROXY_LOG_LEVEL`.
fn parse_log_level(l: &str) -> Result<log::LevelFilter, String> {
    Ok(match l.trim().to_ascii_lowercase().as_str() {
        "error" => log::LevelFilter::Error,
        "warn" | "warning" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => {
            return Err(format!(
                "CM_OPEN_WEBUI_PROXY_LOG_LEVEL must be error, warn, info or debug, got \"{}\"",
                l
            ))
        }
    })
}

/// Walks `--flag value`, `--flag=value` and bare `--flag` arguments.
struct Flags<'a> {
    args: &'a [String],
    i: usize,
}

impl Flags<'_> {
    /// The next flag and the value written after its `=`, if any.
    fn next_flag(&mut self) -> Option<(String, Option<String>)> {
        let arg = self.args.get(self.i)?;
        self.i += 1;
        Some(match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        })
    }

    /// The flag's value: after its `=`, else the next argument.
    fn value(&mut self, flag: &str, inline: Option<String>) -> Result<String, String> {
        if let Some(v) = inline {
            return Ok(v);
        }
        let v = self.args.get(self.i).cloned();
        self.i += 1;
        v.ok_or_else(|| format!("{} needs a value", flag))
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    s.trim()
        .parse::<u16>()
        .map_err(|_| format!("must be a port number 0-65535, got \"{}\"", s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn env_then_flags() {
        let env = |k: &str| match k {
            "CM_OPEN_WEBUI_PROXY_PORT" => Some("4000".to_string()),
            "CM_OPEN_WEBUI_PROXY_CONFIG_FILE" => Some("/etc/m.json".to_string()),
            _ => None,
        };
        let Command::Run(o) = parse(&args(&[]), &env).unwrap() else {
            panic!()
        };
        assert_eq!(
            (o.port, o.config.as_str(), o.host.as_str()),
            (4000, "/etc/m.json", "0.0.0.0")
        );
        let Command::Run(o) = parse(&args(&["--port=5", "--config", "x.json"]), &env).unwrap()
        else {
            panic!()
        };
        assert_eq!((o.port, o.config.as_str()), (5, "x.json"));
        assert!(parse(&args(&["--port", "x"]), &env).is_err());
        assert!(parse(&args(&["--bogus"]), &env).is_err());
    }

    #[test]
    fn usage_names_every_flag_and_proxy_variable() {
        let synopsis = USAGE.split("\n\n").nth(1).unwrap_or("");
        for flag in [
            "--config",
            "--port",
            "--host",
            "--check-config",
            "--healthcheck",
            "--version",
            "--help",
        ] {
            assert!(synopsis.contains(flag), "synopsis lacks {}", flag);
            assert!(
                USAGE.contains(&format!("\n  {} ", flag)),
                "no line for {}",
                flag
            );
        }
        for var in ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"] {
            assert!(USAGE.contains(var), "{}", var);
        }
    }
}
