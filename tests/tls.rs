//! TLS to backends: verification on by default, custom CA bundles, explicit insecureSkipVerify,
//! and forward proxies from the environment.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use support::mock_backend::{Behavior, MockBackend};
use support::*;

/// A one-request-per-connection HTTPS backend with a freshly generated self-signed certificate.
struct TlsBackend {
    url: String,
    cert_pem: String,
}

fn start_tls_backend() -> TlsBackend {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert_pem = cert.cert.pem();
    let cert_der = cert.cert.der().clone();
    let key_der = rustls_pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert_der], key_der)
    .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = Arc::clone(&config);
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut reader = BufReader::new(&mut tls);
                let mut len = 0usize;
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    return;
                }
                loop {
                    let mut l = String::new();
                    if reader.read_line(&mut l).is_err() {
                        return;
                    }
                    if l == "\r\n" || l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                let reply = r#"{"tls":"ok"}"#;
                let _ = write!(tls, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}", reply.len(), reply);
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    TlsBackend { url, cert_pem }
}

#[test]
fn backend_certificates_are_verified_by_default() {
    let b = start_tls_backend();
    let p = Proxy::start(&config_for(&[(
        "m",
        &b.url,
        "sk-tls-test-key-000000",
        "real",
    )]));
    let e = post_json(p.addr, "/v1/chat/completions", &chat_body("m", "x", false)).error(502);
    let message = e["message"].as_str().unwrap();
    assert!(!message.contains("sk-tls"));
    assert!(
        message.contains("TLS") && message.contains("certificate"),
        "the cause is named: {}",
        message
    );
}

#[test]
fn a_custom_ca_file_makes_an_on_prem_certificate_trusted() {
    let b = start_tls_backend();
    let dir = TempDir::new();
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, &b.cert_pem).unwrap();
    let cfg = format!(
        r#"{{"endpoints":{{"m":{{"url":"{}","caFile":"{}"}}}}}}"#,
        b.url,
        ca.display()
    );
    let p = Proxy::start(&cfg);
    let r = post_json(p.addr, "/v1/chat/completions", &chat_body("m", "x", false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), r#"{"tls":"ok"}"#);
    // The same through the global setting.
    let q = Proxy::start_with(
        &config_for(&[("m", &b.url, "", "real")]),
        &[("CM_OPEN_WEBUI_PROXY_CA_FILE", ca.to_str().unwrap())],
        &[],
    );
    assert_eq!(
        post_json(q.addr, "/v1/chat/completions", &chat_body("m", "x", false)).status,
        200
    );
    // A CA file that is not PEM is a load error naming the endpoint and field.
    std::fs::write(&ca, "not a certificate").unwrap();
    let err = Proxy::try_start(&cfg, &[], &[])
        .err()
        .expect("must refuse")
        .join("\n");
    assert!(err.contains("endpoints.m.caFile"), "{}", err);
}

#[test]
fn insecure_skip_verify_is_explicit_and_logged() {
    let b = start_tls_backend();
    let cfg = format!(
        r#"{{"endpoints":{{"m":{{"url":"{}","insecureSkipVerify":true}}}}}}"#,
        b.url
    );
    let p = Proxy::start(&cfg);
    assert_eq!(
        post_json(p.addr, "/v1/chat/completions", &chat_body("m", "x", false)).status,
        200
    );
    assert!(p
        .logs()
        .iter()
        .any(|l| l.contains("WARN") && l.contains("insecureSkipVerify")));
    assert_eq!(
        get(p.addr, "/debug").json()["endpoints"]["m"]["insecureSkipVerify"],
        true
    );
}

#[test]
fn forward_proxy_from_env_and_no_proxy() {
    let backend = MockBackend::start(Behavior::default());
    let forward = MockBackend::start(Behavior::default());
    let cfg = config_for(&[("m", &backend.url(), "", "real")]);
    let proxy_env = format!("http://{}", forward.addr);
    let p = Proxy::start_with(&cfg, &[("HTTP_PROXY", &proxy_env), ("NO_PROXY", "")], &[]);
    let _ = post_json(p.addr, "/v1/chat/completions", &chat_body("m", "x", false));
    let via = forward.requests();
    assert!(!via.is_empty(), "HTTP_PROXY was not used");
    assert!(
        via[0].method == "CONNECT" || via[0].path.starts_with("http://"),
        "{:?}",
        via[0]
    );
    let before = forward.requests().len();
    let q = Proxy::start_with(
        &cfg,
        &[
            ("HTTP_PROXY", &proxy_env),
            ("NO_PROXY", "localhost,127.0.0.1"),
        ],
        &[],
    );
    assert_eq!(
        post_json(q.addr, "/v1/chat/completions", &chat_body("m", "x", false)).status,
        200
    );
    assert_eq!(
        forward.requests().len(),
        before,
        "NO_PROXY host went through the proxy"
    );
}
