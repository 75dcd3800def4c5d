//! Issue 17: `make run` asks cargo where the binaries are (so `CARGO_TARGET_DIR` is honoured and
//! a stale `./target/release/modelmux` is never run), and starts the demo backend with
//! `--include-usage`. A stub `cargo` first on PATH records what the script asks of it and
//! "builds" recording stubs into `$CARGO_TARGET_DIR`, so no release build is needed.

mod support;

use std::path::Path;
use std::process::Command;
use support::TempDir;

/// Prints cargo's JSON for the `--bin`s asked for, each a stub that logs how it was started.
const STUB_CARGO: &str = r#"#!/usr/bin/env bash
set -eu
echo "cargo $*" >>"$STUB_LOG"
[ "$1" = build ] || exit 1
out="$CARGO_TARGET_DIR/release"
mkdir -p "$out"
cat >"$out/demo_backend" <<'EOF'
#!/usr/bin/env bash
echo "demo_backend ran: $*" >>"$STUB_LOG"
exec sleep 20
EOF
cat >"$out/modelmux" <<'EOF'
#!/usr/bin/env bash
# Gives a demo backend started before it the time to log its start.
if [ -e "$CARGO_TARGET_DIR/demo-built" ]; then
  for _ in $(seq 1 50); do grep -q demo_backend "$STUB_LOG" && break; sleep 0.1; done
fi
echo "modelmux ran: $* with config ${CM_OPEN_WEBUI_PROXY_CONFIG_FILE:-}" >>"$STUB_LOG"
EOF
chmod +x "$out/demo_backend" "$out/modelmux"
args=" $* "
for name in modelmux demo_backend; do
  case "$args" in *" --bin $name "*)
    [ "$name" = modelmux ] || touch "$CARGO_TARGET_DIR/demo-built"
    echo "{\"reason\":\"compiler-artifact\",\"package_id\":\"modelmux\",\"executable\":\"$out/$name\",\"fresh\":true}" ;;
  esac
done
echo '{"reason":"build-finished","success":true}'
"#;

fn make_run(dir: &Path, config: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("cargo"), STUB_CARGO).unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(bin.join("cargo"))
        .status()
        .unwrap();
    let log = dir.join("stub.log");
    let _ = std::fs::remove_file(&log);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("make")
        .args(["-s", "run"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", dir.join("elsewhere"))
        .env("CM_OPEN_WEBUI_PROXY_CONFIG_FILE", config)
        .env("STUB_LOG", &log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&log).unwrap_or_default()
}

#[test]
fn make_run_runs_the_binary_cargo_built_in_cargo_target_dir() {
    let dir = TempDir::new();
    let config = dir.0.join("config.json");
    std::fs::write(&config, "{}").unwrap();
    let log = make_run(&dir.0, &config);
    assert!(
        log.contains(&format!(
            "modelmux ran:  with config {}\n",
            config.display()
        )),
        "not the binary cargo reported in CARGO_TARGET_DIR:\n{}",
        log
    );
    assert!(!log.contains("demo_backend ran"), "{}", log);
}

#[test]
fn make_run_without_a_config_starts_the_demo_backend_with_include_usage() {
    if std::net::TcpListener::bind("127.0.0.1:3334").is_err() {
        eprintln!("port 3334 is in use here; make run's demo mode cannot be checked");
        return;
    }
    let dir = TempDir::new();
    let log = make_run(&dir.0, &dir.0.join("no-config.json"));
    assert!(
        log.contains("demo_backend ran: 127.0.0.1:3334 --include-usage\n")
            && log.contains("modelmux ran:  with config config.example.json\n"),
        "{}",
        log
    );
}
