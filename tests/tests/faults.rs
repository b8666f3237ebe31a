//! Replica faults under a steady open-loop load: what the clients see when one
//! replica's app dies, a sidecar drains, or the service scales down and up, with
//! `web`'s endpoints in the mesh file.
//!
//! A frontend pod sends 125 requests/s to `web` (three replicas, each behind its
//! sidecar an unmodified HTTP/1.1 app, `httpkit.py serve`, an h2c + gRPC app,
//! `h2kit serve`, and a TCP echo server, `tcpkit.py serve-echo-log`) from five
//! unmodified clients at once, 25/s each, all under the same fault run: two
//! HTTP/1.1 ones, one that keeps connections alive and one that opens a connection
//! per request; an h2c one over a few long-lived HTTP/2 connections; a gRPC one
//! making unary calls over a few tonic channels; an opaque TCP one opening a
//! connection per id (carried through the replicas' tunnel port). Half the
//! HTTP requests are POSTs, every gRPC call is one. Before each fault the frontend's
//! sidecar must carry the h2c and gRPC loads as HTTP/2 (L7, `/connections`), not as
//! opaque bytes. Every request carries an id that the replicas log as they receive
//! it, so each failure a client sees is classified: *never received* (no
//! application saw it: the mesh could have sent it elsewhere) or *after receipt*
//! (an application took it and then died). The first kind must be zero for every
//! client, whatever the method or protocol; the test prints a row per fault, mode
//! and client (sent / succeeded / failed never-received / failed after receipt),
//! and what the frontend's sidecar did to get there (its `weft_http_retries_total`,
//! `weft_tcp_connect_retries_total` and `weft_endpoint_ejections_total`, each by
//! reason). The fleet, the load and
//! the report are `fleet/` (shared with `faults_kubernetes.rs`).
//!
//! Every test runs in both capture modes (`_iptables`, `_ebpf`).

#![allow(clippy::unwrap_used)]

mod fleet;

use fleet::{
    report, serial, Fleet, Recovery, APP_PORT, LOAD_SECONDS, MS, ROLLING_LOAD_SECONDS, SECS,
};
use weft_e2e::{wait_until, Mode};

/// Fault 1: one replica's apps are killed (`kill -9`) and restarted 3 s later.
fn app_killed_and_restarted(mode: Mode) {
    let _serial = serial();
    let mut fleet = Fleet::new(mode, 3, 3);
    let outcomes = fleet.under_load(LOAD_SECONDS, |f| {
        std::thread::sleep(SECS(2));
        f.kill_app(0);
        std::thread::sleep(SECS(3));
        f.start_app(0);
    });
    let recovery = report("app killed, restarted", mode, &outcomes, &fleet);
    // The fault was met, not dodged: some request reached the dead replica, was
    // answered by its sidecar, sent elsewhere, and the replica was ejected.
    assert!(
        Recovery::get(&recovery.retries, "app_unreachable") > 0,
        "{recovery:?}"
    );
    assert!(
        Recovery::get(&recovery.ejections, "unreachable") > 0,
        "{recovery:?}"
    );
}

#[test]
fn an_apps_death_and_restart_fail_no_request_iptables() {
    app_killed_and_restarted(Mode::Iptables);
}

#[test]
fn an_apps_death_and_restart_fail_no_request_ebpf() {
    app_killed_and_restarted(Mode::Ebpf);
}

/// Fault 2: one replica's app dies, then another replica's sidecar is sent SIGTERM
/// (what a rolling update does) and, once it has exited, that pod is removed.
fn sidecar_drained_then_pod_removed(mode: Mode) {
    let _serial = serial();
    let mut fleet = Fleet::new(mode, 3, 3);
    let outcomes = fleet.under_load(LOAD_SECONDS, |f| {
        std::thread::sleep(SECS(1));
        f.kill_app(0);
        std::thread::sleep(SECS(1));
        f.drain_sidecar(1);
        f.kill_app(1);
        f.set_endpoints(&[0, 2]);
    });
    report("app dead + sidecar drained", mode, &outcomes, &fleet);
}

#[test]
fn a_draining_sidecar_and_a_removed_pod_fail_no_request_iptables() {
    sidecar_drained_then_pod_removed(Mode::Iptables);
}

#[test]
fn a_draining_sidecar_and_a_removed_pod_fail_no_request_ebpf() {
    sidecar_drained_then_pod_removed(Mode::Ebpf);
}

/// Fault 4: scale from 3 to 1 and back to 5 replicas: a replica leaves the
/// endpoints first and is stopped a moment later (its sidecar drains); new
/// replicas are up before they are added.
fn scale_down_and_up(mode: Mode) {
    let _serial = serial();
    let mut fleet = Fleet::new(mode, 5, 3);
    let outcomes = fleet.under_load(LOAD_SECONDS, |f| {
        std::thread::sleep(SECS(2));
        f.set_endpoints(&[0]);
        std::thread::sleep(MS(500));
        for i in [1, 2] {
            f.drain_sidecar(i);
            f.kill_app(i);
        }
        std::thread::sleep(SECS(1));
        for i in 1..5 {
            f.start_sidecar(i);
            f.start_app(i);
        }
        f.set_endpoints(&[0, 1, 2, 3, 4]);
    });
    report("scale 3 -> 1 -> 5", mode, &outcomes, &fleet);
}

#[test]
fn scaling_down_and_up_fails_no_request_iptables() {
    scale_down_and_up(Mode::Iptables);
}

#[test]
fn scaling_down_and_up_fails_no_request_ebpf() {
    scale_down_and_up(Mode::Ebpf);
}

/// Faults 3 and 5: a rolling restart of all three replicas, one at a time, each new
/// replica up (and among the endpoints) before the old one drains; the old pod
/// leaves the endpoints once its sidecar has exited. With `controller_restart`, the
/// controller is killed (`kill -9`) after the first replacement and started again a
/// second later, in the middle of the rollout.
fn rolling_restart(mode: Mode, controller_restart: bool) {
    let _serial = serial();
    let mut fleet = Fleet::new(mode, 6, 3);
    let outcomes = fleet.under_load(ROLLING_LOAD_SECONDS, |f| {
        std::thread::sleep(SECS(1));
        let mut serving = vec![0, 1, 2];
        for (old, new) in [(0, 3), (1, 4), (2, 5)] {
            f.start_sidecar(new);
            f.start_app(new);
            serving.push(new);
            f.set_endpoints(&serving);
            std::thread::sleep(MS(500));
            f.drain_sidecar(old);
            f.kill_app(old);
            serving.retain(|&i| i != old);
            f.set_endpoints(&serving);
            if controller_restart && old == 0 {
                f.restart_controller();
            }
        }
    });
    let fault = if controller_restart {
        "rolling restart + controller"
    } else {
        "rolling restart"
    };
    report(fault, mode, &outcomes, &fleet);
}

#[test]
fn a_rolling_restart_fails_no_request_iptables() {
    rolling_restart(Mode::Iptables, false);
}

#[test]
fn a_rolling_restart_fails_no_request_ebpf() {
    rolling_restart(Mode::Ebpf, false);
}

#[test]
fn a_controller_restart_during_a_rolling_restart_fails_no_request_iptables() {
    rolling_restart(Mode::Iptables, true);
}

#[test]
fn a_controller_restart_during_a_rolling_restart_fails_no_request_ebpf() {
    rolling_restart(Mode::Ebpf, true);
}

/// What the controller says of replica `i`'s endpoint of `web`: (served, health).
fn endpoint_state(fleet: &Fleet, i: usize) -> (bool, String) {
    let doc = fleet.controller_services();
    let ip = fleet.replicas[i].pod.ipv4().to_string();
    let ep = doc["endpoints"]["web"]
        .as_array()
        .unwrap_or_else(|| panic!("no endpoints of web: {doc}"))
        .iter()
        .find(|e| e["address"] == ip.as_str())
        .unwrap_or_else(|| panic!("no {ip}: {doc}"));
    (
        ep["served"].as_bool().expect("served"),
        ep["health"].as_str().unwrap_or_default().to_owned(),
    )
}

/// A replica's app dies and comes back: its sidecar's `/app-health/<port>` says so,
/// the controller (checking every second through it) withdraws the endpoint and
/// serves it again.
fn a_dead_app_is_withdrawn_and_comes_back(mode: Mode) {
    let _serial = serial();
    let interval = SECS(1);
    let mut fleet = Fleet::with_controller_args(mode, 2, 2, &["--health-interval", "1s"]);
    let probe = |fleet: &Fleet, path: &str| fleet.sidecar_get(0, path);
    let app = format!("/app-health/{APP_PORT}");
    assert_eq!(probe(&fleet, &app).0, 200);
    assert_eq!(probe(&fleet, &format!("{app}/status/204")).0, 200);
    let (status, body) = probe(&fleet, &format!("{app}/status/500"));
    assert_eq!(
        (status, body.trim()),
        (503, "app answered 500 on /status/500")
    );
    // A check's query goes on to the app with its path.
    let (status, body) = probe(&fleet, &format!("{app}/status/500?probe=1"));
    assert_eq!(
        (status, body.trim()),
        (503, "app answered 500 on /status/500?probe=1")
    );
    assert_eq!(probe(&fleet, "/app-health/x").0, 400);

    fleet.kill_app(0);
    let (status, body) = probe(&fleet, &app);
    assert_eq!(
        (status, body.trim()),
        (503, "app port 8080: connect_refused")
    );
    let killed = std::time::Instant::now();
    wait_until(interval * 10, MS(100), || !endpoint_state(&fleet, 0).0)
        .unwrap_or_else(|e| panic!("never withdrawn: {e}: {:?}", endpoint_state(&fleet, 0)));
    println!(
        "{mode}: app killed -> endpoint withdrawn after {:?} (health interval {interval:?}, 2 failures)",
        killed.elapsed()
    );
    assert_eq!(endpoint_state(&fleet, 0).1, "unhealthy");

    fleet.start_app(0);
    let restarted = std::time::Instant::now();
    wait_until(interval * 10, MS(100), || endpoint_state(&fleet, 0).0)
        .unwrap_or_else(|e| panic!("never back: {e}: {:?}", endpoint_state(&fleet, 0)));
    println!(
        "{mode}: app restarted -> endpoint served again after {:?}",
        restarted.elapsed()
    );
    assert_eq!(probe(&fleet, &app).0, 200);
}

#[test]
fn a_dead_app_is_withdrawn_and_comes_back_iptables() {
    a_dead_app_is_withdrawn_and_comes_back(Mode::Iptables);
}

#[test]
fn a_dead_app_is_withdrawn_and_comes_back_ebpf() {
    a_dead_app_is_withdrawn_and_comes_back(Mode::Ebpf);
}

/// The sidecar's own `/ready` follows its app: 503 naming the port while the app
/// does not accept, 200 once it is back; `/ready/proxy` and `/live`, which need no
/// app, stay 200. A sidecar whose pod is no endpoint of its service (no app port to
/// check) is ready without any app.
fn a_sidecars_ready_follows_its_app(mode: Mode) {
    let _serial = serial();
    let mut fleet = Fleet::new(mode, 3, 2);
    let get = |fleet: &Fleet, i: usize, path: &str| fleet.sidecar_get(i, path);
    assert_eq!(get(&fleet, 0, "/ready"), (200, "ready".to_owned()));

    fleet.kill_app(0);
    let mut last = (0, String::new());
    wait_until(SECS(5), MS(100), || {
        last = get(&fleet, 0, "/ready");
        last.0 == 503
    })
    .unwrap_or_else(|e| panic!("/ready stayed {last:?}: {e}"));
    assert_eq!(last, (503, format!("app port {APP_PORT}: connect_refused")));
    assert_eq!(get(&fleet, 0, "/ready/proxy"), (200, "ready".to_owned()));
    assert_eq!(get(&fleet, 0, "/live").0, 200);
    assert_eq!(
        get(&fleet, 1, "/ready").0,
        200,
        "the other replica's app lives"
    );

    fleet.start_app(0);
    wait_until(SECS(5), MS(100), || {
        last = get(&fleet, 0, "/ready");
        last.0 == 200
    })
    .unwrap_or_else(|e| panic!("/ready stayed {last:?} after the app came back: {e}"));

    // Pod 3 is no endpoint of `web`: its sidecar has no app port to check.
    fleet.start_sidecar(2);
    assert_eq!(get(&fleet, 2, "/ready"), (200, "ready".to_owned()));
}

#[test]
fn a_sidecars_ready_follows_its_app_iptables() {
    a_sidecars_ready_follows_its_app(Mode::Iptables);
}

#[test]
fn a_sidecars_ready_follows_its_app_ebpf() {
    a_sidecars_ready_follows_its_app(Mode::Ebpf);
}
