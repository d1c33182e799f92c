//! IPv6: an election entirely on the IPv6 loopback `[::1]` — etcd's endpoint
//! (`--endpoints http://[::1]:P`), the HTTP API (`--http [::1]:P`), the app's address and the
//! proxy (`--advertise [::1]:P`, `--proxy [::1]:P`), and `electd status` over the socket and
//! straight from etcd. The machine must have IPv6 loopback: without it these tests fail and
//! say so; they never skip.

mod common;

use std::net::{IpAddr, Ipv6Addr, TcpListener};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

fn require_ipv6_loopback() {
    if let Err(e) = TcpListener::bind((V6, 0)) {
        panic!(
            "IPv6 loopback is not available here (binding [::1]:0: {e}): these tests need ::1 \
             on lo (`ip -6 addr show lo`; in a container enable IPv6, or run \
             `sysctl -w net.ipv6.conf.lo.disable_ipv6=0`). They fail rather than skip."
        );
    }
}

fn electd(args: &[&str]) -> Output {
    Command::new(electd_binary())
        .args(args)
        .output()
        .expect("run electd")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn an_election_runs_entirely_on_the_ipv6_loopback() {
    require_ipv6_loopback();
    let etcd = Etcd::start_opts(EtcdOptions::new().loopback(V6));
    assert!(
        etcd.endpoint().starts_with("http://[::1]:"),
        "{}",
        etcd.endpoint()
    );
    let apps = [NameApp::start_on("a", V6), NameApp::start_on("b", V6)];
    let proxies = [
        format!("[::1]:{}", free_port()),
        format!("[::1]:{}", free_port()),
    ];
    let replica = |i: usize, id: &str| {
        DaemonSpec::new(&etcd.endpoint(), "six", id)
            .loopback(V6)
            .args(&[
                "--advertise",
                &apps[i].addr().to_string(),
                "--proxy",
                &proxies[i],
            ])
            .start()
    };
    let a = replica(0, "a");
    a.wait_role("leader", Duration::from_secs(10));
    let b = replica(1, "b");
    b.wait_role("follower", Duration::from_secs(10));
    assert!(a.http.starts_with("[::1]:"), "{}", a.http);

    // What b knows of the leader, over its IPv6 HTTP API: its id and its app's address.
    let role = b.role().expect("b's /role over [::1]");
    assert_eq!(role["leader"]["id"], "a", "{role}");
    let advertised = apps[0].addr().to_string();
    assert!(advertised.starts_with("[::1]:"), "{advertised}");
    assert_eq!(
        role["leader"]["member"]["advertise"].as_str(),
        Some(advertised.as_str()),
        "{role}"
    );
    assert!(matches!(http_get(&b.http, "/ready"), Ok((200, _))));

    // A client of b's proxy reaches the leader's app.
    wait_until(Duration::from_secs(5), "b's proxy to reach a's app", || {
        ask_once(&proxies[1], Duration::from_secs(1)).as_deref() == Ok("a")
    });
    assert_eq!(
        ask_once(&proxies[0], Duration::from_secs(1)).as_deref(),
        Ok("a")
    );

    // electd status over b's socket shows the IPv6 addresses as they are written.
    let socket = b.socket.display().to_string();
    let out = electd(&["status", "--socket", &socket]);
    let said = text(&out);
    eprintln!("electd status --socket:\n{said}");
    assert!(out.status.success(), "{said}");
    for needed in [a.http.as_str(), b.http.as_str(), advertised.as_str()] {
        assert!(said.contains(needed), "{needed} missing from:\n{said}");
    }
    // ... and straight from etcd at [::1].
    let out = electd(&[
        "status",
        "--endpoints",
        &etcd.endpoint(),
        "--election",
        "six",
        "--json",
    ]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("\"id\":\"a\"") || said.contains("\"id\": \"a\""),
        "{said}"
    );
    assert!(said.contains(&advertised), "{said}");

    // A handover on IPv6: b leads and its proxy routes to its own app.
    a.control("/resign");
    b.wait_role("leader", Duration::from_secs(10));
    wait_until(Duration::from_secs(5), "b's proxy to reach b's app", || {
        ask_once(&proxies[1], Duration::from_secs(1)).as_deref() == Ok("b")
    });
}

/// An IPv6 address without brackets is refused, naming the flag and showing the bracketed form.
#[test]
fn an_ipv6_address_without_brackets_is_refused_with_the_form_to_use() {
    for (flag, value, shown) in [
        ("--endpoints", "http://::1:2379", "[::1]:2379"),
        ("--http", "::1:4040", "[::1]:4040"),
        ("--advertise", "::1:5432", "[::1]:5432"),
    ] {
        let out = electd(&[flag, value, "--election", "six", "--id", "a"]);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(78), "{flag} {value}: {said}");
        assert!(
            said.contains(flag) && said.contains(shown),
            "{flag} {value}: {said}"
        );
    }
}
