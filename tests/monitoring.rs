//! Issue 22 (items 5, 6): the Grafana dashboard and the Prometheus alert rules in
//! `deploy/monitoring/`, checked with `promtool` and against a real Prometheus scraping modelmux.
//! Needs Debian's `prometheus` package (`.ci/run` installs it): without it these tests fail,
//! they do not skip.

mod support;

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::mock_backend::{Behavior, MockBackend};
use support::*;

const METRICS_KEY: &str = "metrics-key-for-prometheus";

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring")
}

/// Runs a tool and returns its output; panics (failing the test) when it is missing or fails.
fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .current_dir(monitoring_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({}): install Debian's prometheus package",
                tool, e
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} {:?} failed:\n{}",
        tool,
        args,
        text
    );
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let out = run("promtool", &["check", "rules", "modelmux-alerts.yml"]);
    assert!(out.contains("SUCCESS: 10 rules found"), "{}", out);
    let out = run("promtool", &["test", "rules", "modelmux-alerts.test.yml"]);
    assert!(out.contains("SUCCESS"), "{}", out);
    // Every alert has a unit test that expects it to fire and one that expects silence.
    let rules = std::fs::read_to_string(monitoring_dir().join("modelmux-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(monitoring_dir().join("modelmux-alerts.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 10);
    for a in alerts {
        let cases: Vec<&str> = tests
            .split("- eval_time:")
            .filter(|c| c.contains(&format!("alertname: {}\n", a)))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "no test where {} stays silent",
            a
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_labels:")),
            "no test where {} fires",
            a
        );
    }
}

#[test]
fn example_prometheus_config_is_valid() {
    // The example reads the key from a file that exists only on a real server: check a copy
    // that names the key inline.
    let dir = TempDir::new();
    let text = std::fs::read_to_string(monitoring_dir().join("prometheus.yml")).unwrap();
    let text = text.replace(
        "credentials_file: /etc/prometheus/secrets/modelmux-metrics-key",
        "credentials: example",
    );
    assert!(text.contains("credentials: example"));
    std::fs::write(dir.0.join("prometheus.yml"), text).unwrap();
    std::fs::copy(
        monitoring_dir().join("modelmux-alerts.yml"),
        dir.0.join("modelmux-alerts.yml"),
    )
    .unwrap();
    let path = dir.0.join("prometheus.yml");
    run("promtool", &["check", "config", path.to_str().unwrap()]);
}

/// A `prometheus` process this test started; killed by its PID on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = TempDir::new();
        let rules = monitoring_dir().join("modelmux-alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: modelmux\n    authorization:\n      type: Bearer\n      credentials: {}\n    static_configs:\n      - targets: ['{}']\n",
            rules.display(),
            METRICS_KEY,
            target
        );
        let config_path = dir.0.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start prometheus ({}): install Debian's prometheus package",
                    e
                )
            });
        let p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{}", port),
            _dir: dir,
        };
        wait_until("prometheus ready", Duration::from_secs(20), || {
            ureq::get(&format!("{}/-/ready", p.url))
                .timeout(Duration::from_secs(2))
                .call()
                .is_ok()
        });
        p
    }

    /// `/api/v1/query` at now; `Err` with Prometheus's error when it does not parse.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let r = ureq::get(&format!("{}/api/v1/query", self.url))
            .query("query", expr)
            .timeout(Duration::from_secs(10))
            .call();
        let body: Value = match r {
            Ok(r) | Err(ureq::Error::Status(_, r)) => {
                serde_json::from_str(&r.into_string().map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?
            }
            Err(e) => return Err(e.to_string()),
        };
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    fn api(&self, path: &str) -> Value {
        ureq::get(&format!("{}{}", self.url, path))
            .timeout(Duration::from_secs(10))
            .call()
            .unwrap()
            .into_string()
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap()
    }
}

/// The dashboard's PromQL as Prometheus gets it from Grafana: variables at "All".
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let expr = expr
                .replace("$__rate_interval", "20s")
                .replace("$model", ".*")
                .replace("$backend", ".*");
            assert!(!expr.contains('$'), "unknown variable in {}", expr);
            out.push((p["title"].as_str().unwrap().to_string(), expr));
        }
    }
    out
}

fn rule_queries(rules: &str) -> Vec<(String, String)> {
    // The rules file is plain enough to read without a YAML parser: `- alert:` then `expr:`,
    // either on one line or as a `|` block.
    let mut out = Vec::new();
    let mut lines = rules.lines().peekable();
    let mut alert = String::new();
    while let Some(l) = lines.next() {
        let t = l.trim();
        if let Some(a) = t.strip_prefix("- alert: ") {
            alert = a.to_string();
        } else if let Some(e) = t.strip_prefix("expr: ") {
            let expr = if e == "|" {
                let mut block = String::new();
                while let Some(n) = lines.peek() {
                    if n.trim_start().starts_with("for:") || n.trim_start().starts_with("labels:") {
                        break;
                    }
                    block.push_str(n.trim());
                    block.push('\n');
                    lines.next();
                }
                block
            } else {
                e.to_string()
            };
            out.push((alert.clone(), expr));
        }
    }
    out
}

/// Metric names (`modelmux_…`) a PromQL expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("modelmux_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.insert(expr[start..end].to_string());
        i = end;
    }
    out
}

fn chat(p: &Proxy, model: &str, stream: bool) -> u16 {
    post_json(
        p.addr,
        "/v1/chat/completions",
        &serde_json::json!({
            "model": model, "stream": stream,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "one two three"}]
        })
        .to_string(),
    )
    .status
}

#[test]
fn dashboard_and_rules_queries_run_on_a_real_prometheus_scraping_modelmux() {
    let dash: Value = serde_json::from_slice(
        &std::fs::read(monitoring_dir().join("modelmux-dashboard.json")).unwrap(),
    )
    .expect("dashboard is JSON");
    let rules = std::fs::read_to_string(monitoring_dir().join("modelmux-alerts.yml")).unwrap();
    let panel_queries = dashboard_queries(&dash);
    let alert_queries = rule_queries(&rules);
    assert!(panel_queries.len() >= 30, "{}", panel_queries.len());
    assert_eq!(alert_queries.len(), 10, "{:?}", alert_queries);

    // The datasource, model and backend are variables, and every panel uses the datasource one.
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "model", "backend"]);
    for p in dash["panels"].as_array().unwrap() {
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }

    let usage = MockBackend::start(Behavior {
        include_usage_chunk: true,
        ..Behavior::default()
    });
    // Reports no usage: its tokens are estimated.
    let silent = MockBackend::start(Behavior::default());
    let failing = MockBackend::start(Behavior {
        status: Some((
            500,
            r#"{"error":{"message":"boom","type":"server_error","param":null,"code":null}}"#
                .to_string(),
        )),
        ..Behavior::default()
    });
    let dead = format!("http://127.0.0.1:{}", free_port());
    let dir = TempDir::new();
    let cfg = serde_json::json!({
        "health": {"probeIntervalSecs": 1},
        "metrics": {"perUser": true, "key": METRICS_KEY},
        "usageLog": dir.0.join("usage.jsonl"),
        "endpoints": {
            // Priced, with a cost budget that warns at its first cost (the budget panels).
            "chat": {"url": usage.url(), "maxConcurrent": 4,
                     "pricing": {"input": 1, "output": 2}},
            // No price under a cost budget: refused (403 model_unpriced).
            "capped": {"url": usage.url()},
            // No probe here: the dead backend stays selectable, so requests fail over.
            "pair": {"backends": [{"url": dead, "weight": 1000}, {"url": usage.url()}],
                     "health": {"probeIntervalSecs": 0}},
            "quiet": {"url": silent.url()},
            "broken": {"url": failing.url()}
        },
        "limits": [{"match": {"model": "quiet"}, "requestsPerMinute": 2},
                   {"match": {"model": "chat"}, "costPerDay": 1, "warnAt": 0.000001},
                   {"match": {"model": "capped"}, "costPerDay": 1}]
    });
    let p = Proxy::start(&cfg.to_string());
    let prom = Prometheus::start(&p.addr.to_string());
    let scraped = |n: f64| {
        move |prom: &Prometheus| {
            prom.query(r#"count_over_time(up{job="modelmux"}[1m])"#)
                .ok()
                .and_then(|r| r.first().cloned())
                .and_then(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()))
                .is_some_and(|v| v >= n)
        }
    };
    wait_until("the first scrapes", Duration::from_secs(20), || {
        scraped(2.0)(&prom)
    });
    let up = prom.query(r#"up{job="modelmux"}"#).unwrap();
    assert_eq!(up[0]["value"][1], "1", "modelmux scraped: {:?}", up);

    // Traffic that moves every series the dashboard draws, spread over a few scrapes so that
    // rates are not zero.
    for round in 0..3 {
        assert_eq!(chat(&p, "chat", false), 200);
        assert_eq!(chat(&p, "chat", true), 200);
        assert_eq!(chat(&p, "pair", false), 200);
        assert_eq!(chat(&p, "broken", false), 500);
        if round == 0 {
            assert_eq!(chat(&p, "quiet", true), 200);
            assert_eq!(chat(&p, "quiet", true), 200);
        }
        assert_eq!(chat(&p, "quiet", true), 429);
        assert_eq!(chat(&p, "nope", false), 404);
        assert_eq!(chat(&p, "capped", false), 403);
        std::thread::sleep(Duration::from_millis(1100));
    }
    wait_until("scrapes after the traffic", Duration::from_secs(20), || {
        scraped(8.0)(&prom)
    });

    // Every metric the dashboard or the rules name is in /metrics (as a sample, so the traffic
    // produced it).
    let text = request(
        p.addr,
        "GET",
        "/metrics",
        &[("Authorization", &format!("Bearer {}", METRICS_KEY))],
        b"",
    )
    .text();
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    let mut used = BTreeSet::new();
    for (_, e) in panel_queries.iter().chain(&alert_queries) {
        used.extend(metric_names(e));
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        used.extend(metric_names(v["definition"].as_str().unwrap_or("")));
    }
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(missing.is_empty(), "not in /metrics: {:?}", missing);

    // Every expression parses; every panel query has data.
    for (title, expr) in &panel_queries {
        let r = prom
            .query(expr)
            .unwrap_or_else(|e| panic!("panel {:?}: {} does not run: {}", title, expr, e));
        assert!(!r.is_empty(), "panel {:?}: no data for {}", title, expr);
    }
    for (alert, expr) in &alert_queries {
        prom.query(expr)
            .unwrap_or_else(|e| panic!("alert {}: {} does not run: {}", alert, expr, e));
    }

    // The variables find the traffic's models and backends.
    let models = prom.api("/api/v1/label/model/values?match[]=modelmux_requests_total");
    for m in ["chat", "pair", "quiet", "broken", "unknown"] {
        assert!(
            models["data"].as_array().unwrap().contains(&Value::from(m)),
            "{} not in {}",
            m,
            models
        );
    }
    let backends = prom.api("/api/v1/label/backend/values?match[]=modelmux_backend_up");
    assert!(
        backends["data"].as_array().unwrap().len() >= 4,
        "{}",
        backends
    );

    // Prometheus loaded the rules and evaluates every one without error.
    wait_until("rules evaluated", Duration::from_secs(10), || {
        let r = prom.api("/api/v1/rules");
        let rules: Vec<Value> = r["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        rules.len() == 10 && rules.iter().all(|r| r["health"] == "ok")
    });
}
