//! etcd TLS and auth against a real etcd: mutual TLS with certificates generated at test time
//! (good and bad CA, client certificate missing or from the wrong CA, missing or garbage
//! files), and an auth-enabled etcd with a role confined to the election's prefix (good and
//! wrong password, an election outside the prefix, no password source). Every misconfiguration
//! must end electd promptly with the documented exit code and a message naming what to fix;
//! what is not a misconfiguration (an etcd restart cutting TLS connections, auth tokens that
//! etcd forgot or that expired) must not end it. Last, the API's own limits against abusive
//! clients, through the real daemon on TCP and on the socket.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// electd's "etcd refused us for good" exit code.
const EXIT_UNAVAILABLE: i32 = 69;
/// electd's configuration-error exit code.
const EXIT_CONFIG: i32 = 78;
/// How long a refused start may take: a misconfiguration must not look like a hang.
const PROMPT_EXIT: Duration = Duration::from_secs(10);

/// A TLS-only etcd that requires a client certificate signed by `pki.ca`.
fn tls_etcd(pki: &Pki) -> Etcd {
    Etcd::start_opts(
        EtcdOptions::new()
            .scheme("https")
            .args(&strs(&pki.etcd_args()))
            .etcdctl_args(&strs(&pki.etcdctl_args())),
    )
}

/// Start electd, wait for it to exit on its own, assert it exited with `expected` within
/// [`PROMPT_EXIT`] and without a panic, and return its output. Panics (with the log) if it is
/// still running after twice [`PROMPT_EXIT`].
fn exits_with(spec: DaemonSpec, expected: i32) -> String {
    let started = Instant::now();
    let mut d = spec.start();
    let status = d.wait_exit(PROMPT_EXIT * 2);
    let took = started.elapsed();
    let log = d.log_text();
    eprintln!(
        "--- {} exited ({status}) after {took:?}; output:\n{log}",
        d.id()
    );
    assert!(
        took < PROMPT_EXIT,
        "{} took {took:?} to give up (a misconfiguration must fail fast); log:\n{log}",
        d.id()
    );
    let code = status
        .code()
        .unwrap_or_else(|| panic!("{} died by a signal ({status}); log:\n{log}", d.id()));
    assert!(
        !log.contains("panicked"),
        "{} panicked instead of reporting an error; log:\n{log}",
        d.id()
    );
    assert_eq!(code, expected, "{}: log:\n{log}", d.id());
    log
}

/// Assert `log` contains every one of `needles` (case-insensitive).
fn assert_mentions(log: &str, needles: &[&str]) {
    let lower = log.to_lowercase();
    for n in needles {
        assert!(
            lower.contains(&n.to_lowercase()),
            "expected the output to mention {n:?}; it was:\n{log}"
        );
    }
}

/// The `electd: hint: …` line electd prints for a fatal etcd error.
fn hint_line(log: &str) -> &str {
    log.lines()
        .find(|l| l.starts_with("electd: hint: "))
        .unwrap_or_else(|| panic!("no `electd: hint:` line in the output:\n{log}"))
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

#[test]
fn mutual_tls_good_certificates_elect_a_leader_and_a_follower_agrees() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki);
    assert!(etcd.endpoint().starts_with("https://"));
    // The etcd really is TLS-only: plain HTTP on its client port gets no answer.
    let plain = format!("127.0.0.1:{}", etcd.client_port());
    assert!(
        !matches!(http_get(&plain, "/health"), Ok((200, _))),
        "etcd answered plain HTTP: the test would prove nothing"
    );

    let tls = pki.electd_args();
    let a = DaemonSpec::new(&etcd.endpoint(), "tls-e", "a")
        .args(&strs(&tls))
        .start();
    a.wait_role("leader", Duration::from_secs(15));
    let b = DaemonSpec::new(&etcd.endpoint(), "tls-e", "b")
        .args(&strs(&tls))
        .start();
    b.wait_role("follower", Duration::from_secs(15));
    let daemons = [a, b];
    let l = wait_one_leader(&daemons, Duration::from_secs(10));
    assert_eq!(daemons[l].id(), "a");
    let role = daemons[1].role().expect("b answers /role");
    assert_eq!(role["leader"]["id"], "a", "{role}");
    assert_eq!(role["etcd_reachable"], true, "{role}");

    // etcd (over mutual TLS with etcdctl) holds both candidate keys.
    let keys = etcd.etcdctl_ok(&["get", "--prefix", "--keys-only", "tls-e/"]);
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let leader_key = daemons[0].role().unwrap()["leader"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(keys.contains(&leader_key.as_str()), "{keys:?} {leader_key}");
}

#[test]
fn mutual_tls_sessions_survive_etcd_restarts() {
    // Connections cut mid-TLS while etcd stops and starts are an outage, not a TLS
    // misconfiguration: electd keeps retrying and leads again.
    let pki = Pki::generate();
    let mut etcd = tls_etcd(&pki);
    let mut a = DaemonSpec::new(&etcd.endpoint(), "tls-e", "a")
        .args(&strs(&pki.electd_args()))
        .start();
    a.wait_role("leader", Duration::from_secs(15));
    for round in 0..5 {
        etcd.restart();
        a.wait_role("leader", Duration::from_secs(15));
        assert!(
            a.is_running(),
            "round {round}: electd exited across an etcd restart; log:\n{}",
            a.log_tail(40)
        );
    }
    etcd.kill();
    std::thread::sleep(Duration::from_secs(2));
    etcd.restart();
    a.wait_role("leader", Duration::from_secs(15));
}

#[test]
fn wrong_ca_fails_fast_with_a_certificate_error_and_the_ca_hint() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki);
    let args = tls_args(&pki.other_ca, &pki.client_cert, &pki.client_key);
    let log = exits_with(
        DaemonSpec::new(&etcd.endpoint(), "tls-e", "wrong-ca").args(&strs(&args)),
        EXIT_UNAVAILABLE,
    );
    assert_mentions(&log, &["certificate"]);
    assert_mentions(hint_line(&log), &["--etcd-ca"]);
    // Nothing was written to etcd.
    let keys = etcd.etcdctl_ok(&["get", "--prefix", "--keys-only", "tls-e/"]);
    assert_eq!(keys, "", "a rejected replica left keys behind");
}

#[test]
fn no_ca_or_mismatched_scheme_fails_fast_with_the_tls_hint() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki);
    let tls = pki.electd_args();
    let cert = pki.client_cert.display().to_string();
    let key = pki.client_key.display().to_string();
    let https_endpoint = etcd.endpoint();
    let http_endpoint = https_endpoint.replacen("https://", "http://", 1);
    let plain = Etcd::start();
    let https_to_plain = plain.endpoint().replacen("http://", "https://", 1);
    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        // The system's roots do not know our CA.
        (
            "no --etcd-ca",
            &https_endpoint,
            vec!["--etcd-cert", &cert, "--etcd-key", &key],
        ),
        // TLS files with an http:// endpoint: refused, not sent in clear.
        ("http endpoint", &http_endpoint, strs(&tls)),
        // https:// to a plain-HTTP etcd.
        ("https to plain etcd", &https_to_plain, strs(&tls)),
        // The same two mismatches with no TLS flag at all: not an outage either.
        ("http endpoint, no flags", &http_endpoint, vec![]),
        ("https to plain etcd, no flags", &https_to_plain, vec![]),
    ];
    for (what, endpoint, args) in cases {
        let log = exits_with(
            DaemonSpec::new(endpoint, "tls-e", what).args(&args),
            EXIT_UNAVAILABLE,
        );
        assert_mentions(hint_line(&log), &["--etcd-ca", "https://"]);
    }
}

#[test]
fn no_client_certificate_against_client_cert_auth_fails_fast() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki);
    let ca = pki.ca.display().to_string();
    let log = exits_with(
        DaemonSpec::new(&etcd.endpoint(), "tls-e", "no-cert").args(&["--etcd-ca", &ca]),
        EXIT_UNAVAILABLE,
    );
    assert_mentions(&log, &["certificate"]);
    assert_mentions(hint_line(&log), &["--etcd-cert", "--etcd-key"]);
}

#[test]
fn client_certificate_from_an_unrelated_ca_is_refused_fast() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki);
    let args = tls_args(&pki.ca, &pki.other_client_cert, &pki.other_client_key);
    let log = exits_with(
        DaemonSpec::new(&etcd.endpoint(), "tls-e", "other-cert").args(&strs(&args)),
        EXIT_UNAVAILABLE,
    );
    assert_mentions(&log, &["certificate"]);
    assert_mentions(hint_line(&log), &["--etcd-cert"]);
}

#[test]
fn missing_or_unpaired_tls_files_are_configuration_errors_naming_the_flag() {
    // Refused before any connection is tried: no etcd needed, nothing listens on port 9.
    let pki = Pki::generate();
    let endpoint = "https://127.0.0.1:9";
    let ca = pki.ca.display().to_string();
    let cert = pki.client_cert.display().to_string();
    let key = pki.client_key.display().to_string();
    let missing = pki.dir().join("no-such.pem").display().to_string();
    let a_dir = pki.dir().display().to_string();

    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "missing cert file",
            vec![
                "--etcd-ca",
                &ca,
                "--etcd-cert",
                &missing,
                "--etcd-key",
                &key,
            ],
            vec!["--etcd-cert", &missing, "does not exist"],
        ),
        (
            "missing key file",
            vec![
                "--etcd-ca",
                &ca,
                "--etcd-cert",
                &cert,
                "--etcd-key",
                &missing,
            ],
            vec!["--etcd-key", &missing, "does not exist"],
        ),
        (
            "missing CA file",
            vec!["--etcd-ca", &missing],
            vec!["--etcd-ca", &missing, "does not exist"],
        ),
        (
            "key is a directory",
            vec!["--etcd-ca", &ca, "--etcd-cert", &cert, "--etcd-key", &a_dir],
            vec!["--etcd-key", "not a regular file"],
        ),
        (
            "key without cert",
            vec!["--etcd-ca", &ca, "--etcd-key", &key],
            vec!["--etcd-cert", "--etcd-key", "together"],
        ),
        (
            "cert without key",
            vec!["--etcd-ca", &ca, "--etcd-cert", &cert],
            vec!["--etcd-cert", "--etcd-key", "together"],
        ),
    ];
    for (what, args, needles) in cases {
        let log = exits_with(
            DaemonSpec::new(endpoint, "tls-e", what).args(&args),
            EXIT_CONFIG,
        );
        assert_mentions(&log, &["configuration error"]);
        assert_mentions(&log, &needles);
    }
}

#[test]
fn garbage_tls_files_are_clear_errors_naming_the_file_not_panics() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki);
    let garbage = pki.dir().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let garbage = garbage.display().to_string();
    let ca = pki.ca.display().to_string();
    let cert = pki.client_cert.display().to_string();
    let key = pki.client_key.display().to_string();
    // Not PEM at all, or PEM of the wrong kind (a certificate where the key belongs and back).
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "garbage key",
            vec![
                "--etcd-ca",
                &ca,
                "--etcd-cert",
                &cert,
                "--etcd-key",
                &garbage,
            ],
            "--etcd-key",
        ),
        (
            "certificate as key",
            vec!["--etcd-ca", &ca, "--etcd-cert", &cert, "--etcd-key", &cert],
            "--etcd-key",
        ),
        (
            "garbage cert",
            vec![
                "--etcd-ca",
                &ca,
                "--etcd-cert",
                &garbage,
                "--etcd-key",
                &key,
            ],
            "--etcd-cert",
        ),
        (
            "key as cert",
            vec!["--etcd-ca", &ca, "--etcd-cert", &key, "--etcd-key", &key],
            "--etcd-cert",
        ),
        ("garbage CA", vec!["--etcd-ca", &garbage], "--etcd-ca"),
    ];
    for (what, args, flag) in cases {
        let log = exits_with(
            DaemonSpec::new(&etcd.endpoint(), "tls-e", what).args(&args),
            EXIT_CONFIG,
        );
        // The message names the flag and the file, so the operator knows which one to fix.
        let error = log
            .lines()
            .find(|l| l.starts_with("electd: ") && !l.starts_with("electd: hint"))
            .unwrap_or_else(|| panic!("{what}: no `electd: …` error line:\n{log}"));
        assert_mentions(error, &[flag, "PEM"]);
        let file = args[args.iter().position(|a| *a == flag).unwrap() + 1];
        assert!(
            error.contains(file),
            "{what}: error does not name {file}: {error}"
        );
    }
    // A well-formed PEM frame around a body that is no key: refused when the TLS settings are
    // built, still at start and still naming the key.
    let corrupt = pki.dir().join("corrupt-key.pem");
    std::fs::write(
        &corrupt,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let corrupt = corrupt.display().to_string();
    let log = exits_with(
        DaemonSpec::new(&etcd.endpoint(), "tls-e", "corrupt key").args(&[
            "--etcd-ca",
            &ca,
            "--etcd-cert",
            &cert,
            "--etcd-key",
            &corrupt,
        ]),
        EXIT_UNAVAILABLE,
    );
    assert_mentions(&log, &["--etcd-key", "private key"]);
}

// ---------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------

const ROOT: &str = "--user=root:root-pw";
const SVC_PASSWORD: &str = "svc-pw-\u{e9}t\u{e9}";

/// A plain-HTTP etcd with auth enabled: `root`, and user `svc` whose role `svc` may only
/// read and write under `auth-e/` and the election's floor record `auth-e.floor`.
fn auth_etcd() -> Etcd {
    auth_etcd_with(&[])
}

/// [`auth_etcd`] with extra etcd flags.
fn auth_etcd_with(args: &[&str]) -> Etcd {
    let etcd = Etcd::start_with(args);
    etcd.etcdctl_ok(&["user", "add", "root", "--new-user-password=root-pw"]);
    etcd.etcdctl_ok(&["role", "add", "svc"]);
    etcd.etcdctl_ok(&[
        "role",
        "grant-permission",
        "svc",
        "--prefix=true",
        "readwrite",
        "auth-e/",
    ]);
    etcd.etcdctl_ok(&[
        "role",
        "grant-permission",
        "svc",
        "readwrite",
        "auth-e.floor",
    ]);
    etcd.etcdctl_ok(&[
        "user",
        "add",
        "svc",
        &format!("--new-user-password={SVC_PASSWORD}"),
    ]);
    etcd.etcdctl_ok(&["user", "grant-role", "svc", "svc"]);
    etcd.etcdctl_ok(&["auth", "enable"]);
    // Auth is really on: anonymous reads are refused.
    let anon = etcd.etcdctl(&["get", "auth-e/x"]);
    assert!(!anon.status.success(), "auth is not enforced");
    etcd
}

fn password_file(dir: &std::path::Path, password: &str) -> String {
    let path = dir.join(format!("pw-{}", password.len()));
    std::fs::write(&path, format!("{password}\n")).unwrap();
    path.display().to_string()
}

#[test]
fn auth_user_confined_to_the_prefix_leads_its_election_with_file_or_env_password() {
    let etcd = auth_etcd();
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), SVC_PASSWORD);
    let a = DaemonSpec::new(&etcd.endpoint(), "auth-e", "a")
        .args(&["--etcd-user", "svc", "--etcd-password-file", &pw])
        .start();
    a.wait_role("leader", Duration::from_secs(15));
    let b = DaemonSpec::new(&etcd.endpoint(), "auth-e", "b")
        .args(&["--etcd-user", "svc"])
        .env("ELECTD_ETCD_PASSWORD", SVC_PASSWORD)
        .start();
    b.wait_role("follower", Duration::from_secs(15));
    let daemons = [a, b];
    let l = wait_one_leader(&daemons, Duration::from_secs(10));
    assert_eq!(daemons[l].id(), "a");

    // etcd (as root) holds both candidate keys under the permitted prefix.
    let keys = etcd.etcdctl_ok(&[ROOT, "get", "--prefix", "--keys-only", "auth-e/"]);
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys.len(), 2, "{keys:?}");

    // Leadership still hands over under auth: the follower takes over when the leader stops.
    let [mut a, b] = daemons;
    a.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(a.wait_exit(Duration::from_secs(10)).code(), Some(0));
    b.wait_role("leader", Duration::from_secs(10));
}

#[test]
fn auth_user_outside_its_prefix_is_refused_with_permission_denied() {
    let etcd = auth_etcd();
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), SVC_PASSWORD);
    let log = exits_with(
        DaemonSpec::new(&etcd.endpoint(), "other", "outside").args(&[
            "--etcd-user",
            "svc",
            "--etcd-password-file",
            &pw,
        ]),
        EXIT_UNAVAILABLE,
    );
    assert_mentions(&log, &["permission"]);
    assert_mentions(hint_line(&log), &["readwrite", "prefix"]);
    let keys = etcd.etcdctl_ok(&[ROOT, "get", "--prefix", "--keys-only", "other/"]);
    assert_eq!(keys, "");
    // No lease was left behind either.
    let leases = etcd.etcdctl_ok(&[ROOT, "lease", "list"]);
    assert!(!leases.contains("id:"), "{leases}");
}

/// A role granted the election's prefix but not its floor record (`<election>.floor`) is
/// refused at start, with a hint that names the record.
#[test]
fn auth_user_without_the_floor_record_grant_is_refused_at_start_naming_it() {
    let etcd = auth_etcd();
    etcd.etcdctl_ok(&[ROOT, "role", "add", "nofloor"]);
    etcd.etcdctl_ok(&[
        ROOT,
        "role",
        "grant-permission",
        "nofloor",
        "--prefix=true",
        "readwrite",
        "auth-e/",
    ]);
    etcd.etcdctl_ok(&[
        ROOT,
        "user",
        "add",
        "nofloor",
        "--new-user-password=nofloor-pw",
    ]);
    etcd.etcdctl_ok(&[ROOT, "user", "grant-role", "nofloor", "nofloor"]);
    let log = exits_with(
        DaemonSpec::new(&etcd.endpoint(), "auth-e", "nofloor")
            .args(&["--etcd-user", "nofloor"])
            .env("ELECTD_ETCD_PASSWORD", "nofloor-pw"),
        EXIT_UNAVAILABLE,
    );
    assert_mentions(&log, &["permission"]);
    assert_mentions(
        hint_line(&log),
        &["readwrite", "prefix", "<election>.floor"],
    );
    let keys = etcd.etcdctl_ok(&[ROOT, "get", "--prefix", "--keys-only", "auth-e"]);
    assert_eq!(keys, "", "nothing written");
}

#[test]
fn auth_wrong_password_is_refused_with_the_credentials_hint() {
    let etcd = auth_etcd();
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), "not-the-password");
    let log = exits_with(
        DaemonSpec::new(&etcd.endpoint(), "auth-e", "wrong-pw").args(&[
            "--etcd-user",
            "svc",
            "--etcd-password-file",
            &pw,
        ]),
        EXIT_UNAVAILABLE,
    );
    assert_mentions(&log, &["authentication failed"]);
    assert_mentions(
        hint_line(&log),
        &[
            "--etcd-user",
            "--etcd-password-file",
            "ELECTD_ETCD_PASSWORD",
        ],
    );
    assert!(
        !log.contains("not-the-password"),
        "the password leaked into the output:\n{log}"
    );

    // Same through the environment variable.
    let log = exits_with(
        DaemonSpec::new(&etcd.endpoint(), "auth-e", "wrong-env-pw")
            .args(&["--etcd-user", "svc"])
            .env("ELECTD_ETCD_PASSWORD", "not-the-password"),
        EXIT_UNAVAILABLE,
    );
    assert_mentions(&log, &["authentication failed"]);
    assert!(!log.contains("not-the-password"), "{log}");

    // An unknown user reads the same.
    let good = password_file(dir.path(), SVC_PASSWORD);
    let log = exits_with(
        DaemonSpec::new(&etcd.endpoint(), "auth-e", "no-user").args(&[
            "--etcd-user",
            "nobody",
            "--etcd-password-file",
            &good,
        ]),
        EXIT_UNAVAILABLE,
    );
    assert_mentions(hint_line(&log), &["--etcd-user"]);
}

#[test]
fn auth_enabled_etcd_without_credentials_is_refused_with_the_credentials_hint() {
    let etcd = auth_etcd();
    let log = exits_with(
        DaemonSpec::new(&etcd.endpoint(), "auth-e", "anonymous"),
        EXIT_UNAVAILABLE,
    );
    assert_mentions(hint_line(&log), &["--etcd-user"]);
}

#[test]
fn etcd_user_without_a_password_source_is_a_configuration_error() {
    // Refused before any connection is tried.
    let log = exits_with(
        DaemonSpec::new("http://127.0.0.1:9", "auth-e", "no-pw").args(&["--etcd-user", "svc"]),
        EXIT_CONFIG,
    );
    assert_mentions(
        &log,
        &[
            "--etcd-user",
            "--etcd-password-file",
            "ELECTD_ETCD_PASSWORD",
        ],
    );

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-file").display().to_string();
    let log = exits_with(
        DaemonSpec::new("http://127.0.0.1:9", "auth-e", "missing-pw-file").args(&[
            "--etcd-user",
            "svc",
            "--etcd-password-file",
            &missing,
        ]),
        EXIT_CONFIG,
    );
    assert_mentions(&log, &["--etcd-password-file", &missing]);
}

#[test]
fn auth_session_survives_an_etcd_restart_that_forgets_tokens() {
    // etcd's simple tokens live in memory only: after a restart the token electd holds is
    // "invalid auth token". That is not a credentials problem: electd must authenticate again
    // and carry on, not exit 69.
    let mut etcd = auth_etcd();
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), SVC_PASSWORD);
    let mut a = DaemonSpec::new(&etcd.endpoint(), "auth-e", "a")
        .args(&["--etcd-user", "svc", "--etcd-password-file", &pw])
        .start();
    a.wait_role("leader", Duration::from_secs(15));
    etcd.restart();
    a.wait_role("leader", Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        a.is_running(),
        "electd exited after an etcd restart; log:\n{}",
        a.log_tail(40)
    );
    assert_eq!(
        a.role_name().as_deref(),
        Some("leader"),
        "{}",
        a.log_tail(20)
    );
}

#[test]
fn auth_with_short_lived_jwt_tokens_keeps_working_past_their_expiry() {
    // JWT tokens expire (here after 2 s) whatever electd does; a follower that must read the
    // election after its token expired authenticates again instead of exiting.
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let priv_key = dir.path().join("jwt.key");
    let pub_key = dir.path().join("jwt.pub");
    std::fs::write(&priv_key, key.serialize_pem()).unwrap();
    std::fs::write(&pub_key, key.public_key_pem()).unwrap();
    let jwt = format!(
        "--auth-token=jwt,pub-key={},priv-key={},sign-method=ES256,ttl=2s",
        pub_key.display(),
        priv_key.display()
    );
    let etcd = auth_etcd_with(&[&jwt]);
    let pw = password_file(dir.path(), SVC_PASSWORD);
    let auth = ["--etcd-user", "svc", "--etcd-password-file", &pw];
    let mut a = DaemonSpec::new(&etcd.endpoint(), "auth-e", "a")
        .args(&auth)
        .start();
    a.wait_role("leader", Duration::from_secs(15));
    let mut b = DaemonSpec::new(&etcd.endpoint(), "auth-e", "b")
        .args(&auth)
        .start();
    b.wait_role("follower", Duration::from_secs(15));
    // Let every token expire.
    std::thread::sleep(Duration::from_secs(4));
    for d in [&mut a, &mut b] {
        assert!(
            d.is_running(),
            "{} exited once its token expired; log:\n{}",
            d.id(),
            d.log_tail(30)
        );
    }
    // The follower must read the election with a fresh token to take over.
    a.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(a.wait_exit(Duration::from_secs(10)).code(), Some(0));
    b.wait_role("leader", Duration::from_secs(10));
}

/// Read from `s` until the peer closes it; panics if it is still open after `within`.
fn read_until_closed(s: &mut impl std::io::Read, within: Duration) -> String {
    let began = Instant::now();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return String::from_utf8_lossy(&got).to_string(),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return String::from_utf8_lossy(&got).to_string();
            }
            Err(_) => assert!(
                began.elapsed() < within,
                "connection still open after {within:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

#[test]
fn api_cuts_off_slow_clients_and_refuses_oversized_requests_on_tcp_and_socket() {
    use std::io::Write;
    let etcd = Etcd::start();
    let d = DaemonSpec::new(&etcd.endpoint(), "limits", "a")
        .args(&["--read-header-timeout", "500ms"])
        .start();
    d.wait_role("leader", Duration::from_secs(15));
    let poll = Some(Duration::from_millis(100));

    // A client that stalls in the middle of its headers is disconnected after the timeout,
    // on TCP and on the socket, while others are served.
    let mut tcp = std::net::TcpStream::connect(&d.http).unwrap();
    let mut unix = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    tcp.set_read_timeout(poll).unwrap();
    unix.set_read_timeout(poll).unwrap();
    let began = Instant::now();
    tcp.write_all(b"GET /role HTTP/1.1\r\nHost: a\r\n").unwrap();
    unix.write_all(b"GET /role HTTP/1.1\r\nHost: a\r\n")
        .unwrap();
    assert_eq!(http_get(&d.http, "/healthz").unwrap().0, 200);
    for (name, got) in [
        ("tcp", read_until_closed(&mut tcp, Duration::from_secs(5))),
        (
            "socket",
            read_until_closed(&mut unix, Duration::from_secs(5)),
        ),
    ] {
        assert!(!got.contains("200 OK"), "{name}: {got}");
    }
    assert!(began.elapsed() >= Duration::from_millis(500));

    // Headers beyond 16 KiB: 431 and the connection is closed.
    let mut tcp = std::net::TcpStream::connect(&d.http).unwrap();
    tcp.set_read_timeout(poll).unwrap();
    let big = "x".repeat(20 * 1024);
    let _ =
        tcp.write_all(format!("GET /role HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n").as_bytes());
    let got = read_until_closed(&mut tcp, Duration::from_secs(5));
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");

    // Bodies beyond 4 KiB on a control request: 413, and nothing happens.
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(8 * 1024));
    let (code, text) = unix_http(&d.socket, "POST", "/pause", Some(&body)).unwrap();
    assert_eq!(code, 413, "{text}");
    assert!(d.is_leader(), "an oversized pause request must not pause");
}

/// The status line of a request sent on a fresh connection that is then kept open.
fn open_request(addr: &str, path: &str) -> (std::net::TcpStream, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .unwrap();
    let mut head = [0u8; 12];
    let n = s.read(&mut head).unwrap_or(0);
    (s, String::from_utf8_lossy(&head[..n]).into_owned())
}

/// How long a `/leader` probe over TCP takes to be answered.
fn probe(addr: &str) -> Duration {
    let t = Instant::now();
    let (code, _) = http_get(addr, "/leader").unwrap();
    assert_eq!(code, 200);
    t.elapsed()
}

#[test]
fn event_streams_and_idle_connections_cannot_lock_probes_out() {
    let etcd = Etcd::start();
    let d = DaemonSpec::new(&etcd.endpoint(), "probes", "a").start();
    d.wait_role("leader", Duration::from_secs(15));
    // Event streams beyond 64 are refused; the 64 open ones keep streaming.
    let mut streams = Vec::new();
    for i in 0..70 {
        let (s, status) = open_request(&d.http, "/watch");
        let want = if i < 64 {
            "HTTP/1.1 200"
        } else {
            "HTTP/1.1 503"
        };
        assert_eq!(status, want, "stream {i}");
        streams.push(s);
    }
    // Then idle connections beyond the connection cap (512).
    let idle: Vec<std::net::TcpStream> = (0..530)
        .map(|_| std::net::TcpStream::connect(&d.http).unwrap())
        .collect();
    // Probes are answered within a second, over TCP and over the socket.
    for _ in 0..5 {
        let took = probe(&d.http);
        assert!(took < Duration::from_secs(1), "a probe took {took:?}");
    }
    let t = Instant::now();
    let (code, _) = unix_http(&d.socket, "GET", "/leader", None).unwrap();
    assert_eq!(code, 200);
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(idle);
    drop(streams);
}
