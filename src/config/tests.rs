//! The configuration's table tests: defaults, every rejected value naming its field, origin and
//! what is accepted, precedence, the file's errors, and the table against [`Layers::resolve`].

use std::cell::RefCell;
use std::collections::BTreeSet;

use super::*;

thread_local! {
    /// The keys [`Layers::pick`] was asked for on this thread (tests only).
    pub(super) static READ: RefCell<BTreeSet<&'static str>> = const { RefCell::new(BTreeSet::new()) };
}

fn flags(pairs: &[(&str, &str)]) -> Settings {
    pairs
        .iter()
        .fold(Settings::default(), |s, (k, v)| s.set(k, v))
}

fn resolve(pairs: &[(&str, &str)], has_command: bool) -> Result<Config, ConfigError> {
    Layers {
        flags: flags(pairs),
        env: Settings::default(),
        file: None,
    }
    .resolve(has_command)
}

fn error(pairs: &[(&str, &str)], has_command: bool) -> String {
    resolve(pairs, has_command)
        .expect_err("configuration should be rejected")
        .to_string()
}

#[test]
fn defaults() {
    let c = resolve(&[("election", "svc"), ("id", "a")], false).unwrap();
    assert_eq!(c.endpoints, vec!["http://127.0.0.1:2379"]);
    assert_eq!(c.ttl, Duration::from_secs(10));
    assert_eq!(c.http, Some("127.0.0.1:4040".parse().unwrap()));
    assert_eq!(c.socket, None);
    assert_eq!(c.socket_mode, 0o660);
    assert_eq!(c.read_header_timeout, Duration::from_secs(10));
    assert_eq!(c.on_exit, OnExit::Restart);
    assert_eq!(c.stop_signal, nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn bad_values_name_the_field_source_and_accepted_values() {
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            &[("ttl", "0s")],
            &["invalid ttl", "flag --ttl", "at least 2s"],
        ),
        (&[("ttl", "1s")], &["invalid ttl", "at least 2s"]),
        (
            &[("ttl", "2500ms")],
            &["invalid ttl", "whole number of seconds"],
        ),
        (
            &[("ttl", "five")],
            &["invalid ttl \"five\"", "duration such as `5s`"],
        ),
        (&[("election", "")], &["invalid election", "non-empty"]),
        (&[("election", "a b")], &["invalid election", "whitespace"]),
        (
            &[("endpoints", "127.0.0.1:2379")],
            &["invalid endpoints", "scheme must be http or https"],
        ),
        (
            &[("endpoints", "http://host")],
            &["invalid endpoints", "missing port"],
        ),
        (
            &[("endpoints", "http://h:99999")],
            &["invalid endpoints", "bad port"],
        ),
        (
            &[("endpoints", "http://::1:2379")],
            &[
                "invalid endpoints",
                "IPv6 address goes in brackets",
                "[::1]:2379",
            ],
        ),
        (
            &[("endpoints", "http://[::1]")],
            &["invalid endpoints", "missing port after the IPv6 address"],
        ),
        (
            &[("endpoints", "http://[::1:2379")],
            &["invalid endpoints", "without `]`"],
        ),
        (
            &[("endpoints", "http://[etcd-0]:2379")],
            &["invalid endpoints", "[etcd-0] is not an IPv6 address"],
        ),
        (&[("http", "localhost")], &["invalid http", "HOST:PORT"]),
        (&[("http", "::1:4040")], &["invalid http", "[::1]:4040"]),
        (&[("socket_mode", "999")], &["invalid socket_mode", "octal"]),
        (
            &[("read_header_timeout", "0s")],
            &[
                "invalid read_header_timeout",
                "flag --read-header-timeout",
                "between 100ms and 10m",
            ],
        ),
        (
            &[("read_header_timeout", "1h")],
            &["invalid read_header_timeout", "between 100ms and 10m"],
        ),
        (
            &[("read_header_timeout", "later")],
            &["invalid read_header_timeout", "duration such as `5s`"],
        ),
        (
            &[("log_level", "loud")],
            &["invalid log_level", "error, warn, info, debug, trace"],
        ),
        (
            &[("log_format", "xml")],
            &["invalid log_format", "`text` or `json`"],
        ),
        (
            &[("stop_signal", "SIGNOPE")],
            &["invalid stop_signal", "SIGTERM"],
        ),
        (
            &[("stop_grace", "soon")],
            &["invalid stop_grace", "duration"],
        ),
        (
            &[("on_exit", "panic")],
            &["invalid on_exit", "`restart`, `resign` or `exit`"],
        ),
        (
            &[("advertise", "db-0")],
            &["invalid advertise", "HOST:PORT", "missing port"],
        ),
        (
            &[("advertise", "db-0:0")],
            &["invalid advertise", "bad port"],
        ),
        (
            &[("advertise", "http://db:5432")],
            &["invalid advertise", "bad host"],
        ),
        (
            &[("advertise", "fd00::5:5432")],
            &[
                "invalid advertise",
                "IPv6 address goes in brackets",
                "[fd00::5]:5432",
            ],
        ),
        (
            &[("proxy", "db:5433")],
            &["invalid proxy", "numeric address"],
        ),
        (
            &[("proxy_wait", "1h")],
            &["invalid proxy_wait", "between 0s and 10m"],
        ),
        (
            &[("on_role_change_timeout", "10ms")],
            &["invalid on_role_change_timeout", "between 100ms and 1h"],
        ),
        (&[("on_role_change", " ")], &["invalid on_role_change"]),
        (
            &[("proxy", "0.0.0.0:6432")],
            &["--proxy needs --advertise HOST:PORT", "--priority 0"],
        ),
        (
            &[("proxy", "127.0.0.1:6432"), ("advertise", "127.0.0.1:6432")],
            &["--advertise 127.0.0.1:6432 is the proxy's own address"],
        ),
    ];
    for (pairs, needles) in cases {
        let mut all = vec![("election", "svc"), ("id", "a")];
        all.extend_from_slice(pairs);
        let msg = error(&all, false);
        for n in *needles {
            assert!(msg.contains(n), "{pairs:?}: {msg:?} lacks {n:?}");
        }
    }
}

/// IPv6 addresses in brackets work wherever an address goes: the endpoints, the listeners and
/// the advertised address (and the proxy's own address is still recognised).
#[test]
fn ipv6_addresses_are_accepted_in_brackets() {
    let c = resolve(
        &[
            ("election", "svc"),
            ("id", "a"),
            ("endpoints", "http://[::1]:2379,https://[fd00::1]:2379/"),
            ("http", "[::1]:4040"),
            ("advertise", "[::1]:5432"),
            ("proxy", "[::]:5433"),
        ],
        false,
    )
    .unwrap();
    assert_eq!(
        c.endpoints,
        vec!["http://[::1]:2379", "https://[fd00::1]:2379/"]
    );
    assert_eq!(c.http, Some("[::1]:4040".parse().unwrap()));
    let msg = error(
        &[
            ("election", "svc"),
            ("id", "a"),
            ("advertise", "[::1]:5433"),
            ("proxy", "[::1]:5433"),
        ],
        false,
    );
    assert!(msg.contains("is the proxy's own address"), "{msg}");
}

#[test]
fn missing_election_says_how_to_set_it() {
    let msg = error(&[("id", "a")], false);
    assert!(
        msg.contains("--election") && msg.contains("ELECTD_ELECTION"),
        "{msg}"
    );
}

#[test]
fn stop_grace_must_fit_inside_ttl_on_a_replica_that_may_lead() {
    let base = [
        ("election", "e"),
        ("id", "a"),
        ("ttl", "3s"),
        ("stop_grace", "5s"),
    ];
    // With a command: the command must be dead before the lease can expire.
    let msg = error(&base, true);
    assert!(msg.contains("does not fit inside the lease TTL"), "{msg}");
    assert!(msg.contains("keepalive interval"), "{msg}");
    assert!(msg.contains("its command dead"), "{msg}");
    // Without one (a sidecar): the app following /role's budget must have stopped.
    let msg = error(&base, false);
    assert!(msg.contains("does not fit inside the lease TTL"), "{msg}");
    assert!(msg.contains("docs/app-contract.md"), "{msg}");
    // The built-in default grace (3s) does not fit a 3 s TTL either, and the error says where
    // the value came from.
    let msg = error(&[("election", "e"), ("id", "a"), ("ttl", "3s")], false);
    assert!(msg.contains("the built-in default"), "{msg}");
    // An observer never leads: the grace is irrelevant.
    let mut observer = base.to_vec();
    observer.push(("priority", "0"));
    resolve(&observer, false).unwrap();
    // The fast-failover setup stays valid, and its budget counts the grace in both modes.
    for has_command in [true, false] {
        let c = resolve(
            &[
                ("election", "e"),
                ("id", "a"),
                ("ttl", "3s"),
                ("stop_grace", "1s"),
            ],
            has_command,
        )
        .unwrap();
        let t = c.timing();
        assert_eq!(t.leader_budget(), Duration::from_millis(1700), "{t:?}");
        assert!(t.keepalive_interval * 3 <= t.leader_budget(), "{t:?}");
        let sent = tokio::time::Instant::now();
        assert_eq!(t.deadline(sent), sent + Duration::from_millis(1700));
        assert_eq!(t.kill_deadline(sent), sent + Duration::from_millis(2700));
    }
}

#[test]
fn precedence_flags_over_env_over_file() {
    let path = PathBuf::from("electd.toml");
    let file = parse_file(
        &path,
        "election = \"from-file\"\nttl = \"7s\"\nid = \"f\"\n",
    )
    .unwrap();
    let env = from_env(|k| match k {
        "ELECTD_TTL" => Some("5s".into()),
        "ELECTD_ID" => Some("e".into()),
        _ => None,
    });
    let layers = Layers {
        flags: flags(&[("id", "flag")]),
        env,
        file: Some((path, file)),
    };
    let c = layers.resolve(false).unwrap();
    assert_eq!(c.election, "from-file");
    assert_eq!(c.ttl, Duration::from_secs(5));
    assert_eq!(c.id, "flag");
}

#[test]
fn file_errors_have_line_and_column_and_known_keys() {
    let path = PathBuf::from("electd.toml");
    let err = parse_file(&path, "election = \"a\"\nttl = 5s\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("electd.toml") && err.contains("line 2"),
        "{err}"
    );
    let err = parse_file(&path, "election = \"a\"\ntll = \"5s\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("tll") && err.contains("ttl"), "{err}");
    let bad = parse_file(&path, "ttl = \"1s\"\nelection = \"a\"\n").unwrap();
    let err = Layers {
        flags: Settings::default(),
        env: Settings::default(),
        file: Some((path, bad)),
    }
    .resolve(false)
    .unwrap_err()
    .to_string();
    assert!(err.contains("electd.toml (key `ttl`)"), "{err}");
}

#[test]
fn example_config_documents_every_key_and_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/electd.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let settings = parse_file(&path, &text).unwrap();
    for key in known_keys() {
        assert!(
            text.contains(&format!("{key} =")),
            "config/electd.example.toml does not document `{key}`"
        );
    }
    let c = Layers {
        flags: Settings::default(),
        env: Settings::default(),
        file: Some((path, settings)),
    }
    .resolve(true)
    .unwrap();
    assert_eq!(c.election, "my-service");
}

#[test]
fn resolve_reads_every_setting_of_the_table_and_only_those() {
    READ.with(|r| r.borrow_mut().clear());
    resolve(&[("election", "svc"), ("id", "a")], true).unwrap();
    // elect-run's own settings are read by their own resolver.
    Layers {
        flags: Settings::default(),
        env: Settings::default(),
        file: None,
    }
    .elect_run(false)
    .unwrap();
    let read = READ.with(|r| r.borrow().clone());
    let table: BTreeSet<&str> = table::known_keys().into_iter().collect();
    // etcd_password_file is read only when etcd_user is set.
    let missing: Vec<_> = table
        .difference(&read)
        .filter(|k| **k != "etcd_password_file")
        .collect();
    assert!(missing.is_empty(), "settings never resolved: {missing:?}");
}

#[test]
fn file_values_may_be_numbers_and_lists_and_other_types_are_named() {
    let path = PathBuf::from("electd.toml");
    let s = parse_file(
        &path,
        "election = \"a\"\ncontrol_uids = [1000, \"1001\"]\nendpoints = \"http://a:1,http://b:2\"\n",
    )
    .unwrap();
    let c = Layers {
        flags: Settings::default(),
        env: Settings::default(),
        file: Some((path.clone(), s)),
    }
    .resolve(false)
    .unwrap();
    assert_eq!(c.control_uids, vec![1000, 1001]);
    assert_eq!(c.endpoints, vec!["http://a:1", "http://b:2"]);
    let err = parse_file(&path, "election = \"a\"\nttl = { s = 1 }\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 2") && err.contains("`ttl` must be a string"),
        "{err}"
    );
    // A number where a duration is expected is parsed, and refused with the duration hint.
    let s = parse_file(&path, "election = \"a\"\nttl = 5\n").unwrap();
    let err = Layers {
        flags: Settings::default(),
        env: Settings::default(),
        file: Some((path, s)),
    }
    .resolve(false)
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("invalid ttl \"5\"") && err.contains("(key `ttl`)"),
        "{err}"
    );
}

#[test]
fn environment_names_follow_the_table() {
    let env = from_env(|k| (k == "ELECTD_READ_HEADER_TIMEOUT").then(|| "1s".to_string()));
    assert_eq!(env.get("read_header_timeout"), Some(&Raw::One("1s".into())));
    let err = Layers {
        flags: Settings::default().set("election", "e"),
        env: from_env(|k| (k == "ELECTD_SOCKET_MODE").then(|| "9".to_string())),
        file: None,
    }
    .resolve(false)
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("environment variable ELECTD_SOCKET_MODE"),
        "{err}"
    );
}

#[test]
fn names_too_long_for_etcd_are_refused_with_their_size() {
    let long = "x".repeat(2 * 1024 * 1024);
    let msg = error(&[("election", &long), ("id", "a")], false);
    assert!(
        msg.contains("invalid election") && msg.contains("at most 512 bytes") && msg.len() < 500,
        "{}",
        &msg[msg.len().saturating_sub(200)..]
    );
    let msg = error(&[("election", "e"), ("id", &"i".repeat(300))], false);
    assert!(
        msg.contains("invalid id") && msg.contains("at most 256 bytes"),
        "{msg}"
    );
}

#[test]
fn routing_settings() {
    let c = resolve(&[("election", "svc"), ("id", "a"), ("ttl", "7s")], false).unwrap();
    assert_eq!((c.advertise, c.proxy), (None, None));
    assert_eq!(
        c.proxy_wait,
        Duration::from_secs(7),
        "proxy_wait defaults to the TTL"
    );
    assert_eq!(c.on_role_change_timeout, Duration::from_secs(10));
    let c = resolve(
        &[
            ("election", "svc"),
            ("id", "a"),
            ("advertise", "db-0.db:5432"),
            ("proxy", "0.0.0.0:6432"),
            ("proxy_wait", "0s"),
            ("on_role_change", "echo $ELECTD_ROLE"),
        ],
        false,
    )
    .unwrap();
    assert_eq!(c.advertise.as_deref(), Some("db-0.db:5432"));
    assert_eq!(c.proxy, Some("0.0.0.0:6432".parse().unwrap()));
    assert_eq!(c.proxy_wait, Duration::ZERO);
    assert_eq!(c.on_role_change.as_deref(), Some("echo $ELECTD_ROLE"));
    let observer = resolve(
        &[
            ("election", "svc"),
            ("id", "a"),
            ("priority", "0"),
            ("proxy", "0.0.0.0:6432"),
        ],
        false,
    );
    assert!(
        observer.is_ok(),
        "an observer proxies without an address of its own"
    );
}

#[test]
fn elect_run_ignores_what_only_the_daemon_reads() {
    let layers = || Layers {
        flags: Settings::default().set("election", "svc").set("id", "a"),
        env: Settings::default()
            .set("proxy", "0.0.0.0:6432")
            .set("ttl", "5s"),
        file: Some((
            PathBuf::from("/etc/electd/svc.toml"),
            Settings::default().set("health_interval", "never"),
        )),
    };
    let err = layers().resolve(true).unwrap_err().to_string();
    assert!(
        err.contains("health_interval"),
        "the daemon refuses it: {err}"
    );
    let c = layers().for_elect_run().resolve(true).unwrap();
    assert_eq!(c.proxy, None);
    assert_eq!(c.ttl, Duration::from_secs(5), "shared settings still count");
}

#[test]
fn elect_run_settings_are_validated_like_the_others() {
    let layers = |flags: Settings, env: Settings| Layers {
        flags,
        env,
        file: None,
    };
    let none = Settings::default;
    let got = layers(none(), none()).elect_run(false).unwrap();
    assert_eq!(
        got,
        RunSettings {
            wait: Duration::ZERO,
            once_per: None
        }
    );
    let got = layers(none().set("wait", "30s").set("once_per", "1h"), none())
        .elect_run(false)
        .unwrap();
    assert_eq!(got.wait, Duration::from_secs(30));
    assert_eq!(got.once_per, Some(Duration::from_secs(3600)));
    type Case<'a> = (Settings, Settings, bool, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            none().set("wait", "soon"),
            none(),
            false,
            &["invalid wait \"soon\"", "flag --wait", "duration"],
        ),
        (
            none(),
            none().set("wait", "soon"),
            false,
            &["invalid wait", "environment variable ELECTD_WAIT"],
        ),
        (
            none().set("once_per", "1500ms"),
            none(),
            false,
            &[
                "invalid once_per",
                "flag --once-per",
                "whole number of seconds",
            ],
        ),
        (
            none().set("once_per", "0s"),
            none(),
            false,
            &["invalid once_per", "at least 1s"],
        ),
        (
            none().set("once_per", "1000000000000s"),
            none(),
            false,
            &["invalid once_per", "at most 366d"],
        ),
        (
            none(),
            none().set("once_per", "1m"),
            true,
            &["once_per", "ELECTD_ONCE_PER", "--socket"],
        ),
    ];
    for (flags, env, socket, needles) in cases {
        let err = layers(flags, env)
            .elect_run(socket)
            .unwrap_err()
            .to_string();
        for n in needles {
            assert!(err.contains(n), "{err:?} lacks {n:?}");
        }
    }
}
