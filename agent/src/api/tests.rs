use std::sync::atomic::AtomicBool;

use super::*;

fn serve_echo(addr: &str, token: &'static str) -> (String, Arc<AtomicBool>, JoinHandle<()>) {
    let l = Listener::bind(addr).unwrap();
    let local = l.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let handler: Handler = Arc::new(move |req: &Request| match req.bearer() {
        Some(t) if token_eq(t, token) => Response::ok(json!({ "path": req.path, "len": req.body.len() })),
        _ => Response::error(401, "wrong token"),
    });
    let h = serve(l, handler, stop.clone()).unwrap();
    (local, stop, h)
}

#[test]
fn requests_without_the_token_are_refused_over_tcp_and_the_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = format!("unix:{}", dir.path().join("api.sock").display());
    for addr in ["127.0.0.1:0", sock.as_str()] {
        let (local, stop, h) = serve_echo(addr, "sekrit-token-0123456789");
        let ok = call(&local, "POST", "/v1/x", Some("sekrit-token-0123456789"), Some(&json!({"a": 1}))).unwrap();
        assert_eq!((ok.status, ok.body["path"].as_str()), (200, Some("/v1/x")));
        assert_eq!(call(&local, "GET", "/v1/x", None, None).unwrap().status, 401);
        assert_eq!(call(&local, "GET", "/v1/x", Some("sekrit-token-0123456780"), None).unwrap().status, 401);
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("api.sock")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the socket is for its owner only");
}

#[test]
fn the_token_file_is_created_0600_and_a_readable_one_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etc/agent.token");
    let t = load_or_create_token(&path).unwrap();
    assert_eq!(t.len(), 64);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(load_or_create_token(&path).unwrap(), t, "read back, not replaced");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = load_or_create_token(&path).unwrap_err().to_string();
    assert!(e.contains("readable by others") && !e.contains(&t), "{e}");
}
