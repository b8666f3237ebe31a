//! The configuration the benchmark writes: the app's and the proxies' nginx and
//! haproxy files, the controller's mesh file, and the ports they use (the table is in
//! [`super::setups`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

pub const APP_H1: u16 = 8080;
pub const APP_H2: u16 = 8081;
pub const APP_STATUS: u16 = 8090;
pub const APP_TCP: u16 = 5201;
/// The server-speaks-first app ([`super::banner`]), on a port weft detects (`auto`).
pub const APP_BANNER: u16 = 2525;
pub const LOCAL_H1: u16 = 10080;
pub const LOCAL_H2: u16 = 10081;
pub const LOCAL_TCP: u16 = 10201;
pub const LOCAL_BANNER: u16 = 10525;
pub const HOP_H1: u16 = 18080;
pub const HOP_H2: u16 = 18081;
pub const HOP_TCP: u16 = 18201;
pub const HOP_BANNER: u16 = 18525;
pub const NGINX_STATUS: u16 = 9101;
pub const HAPROXY_STATS: u16 = 9102;
pub const WEFT_METRICS: u16 = 15020;
/// weft-proxy's admin listener (`/identity`, `/routes`), on the pod's loopback.
pub const WEFT_ADMIN: u16 = 15000;
pub const CONTROLLER_GRPC: u16 = 15010;
pub const CONTROLLER_HTTP: u16 = 15014;
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const CLIENT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);

/// `port` on the pod's loopback, 127.0.0.1.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// What a proxy hop listens on and where it forwards to, per kind of traffic; each
/// pair is (listen, upstream).
#[derive(Debug, Clone, Copy)]
pub struct Hops {
    pub h1: (SocketAddr, SocketAddr),
    pub h2: (SocketAddr, SocketAddr),
    /// iperf3's bulk TCP.
    pub tcp: (SocketAddr, SocketAddr),
    /// The banner app: opaque TCP where the server speaks first.
    pub banner: (SocketAddr, SocketAddr),
}

/// The app's response body: 64 bytes.
pub const BODY: &str = "weft-bench 64-byte response body: 0123456789abcdefghijklmnopqrst";

pub fn nginx_argv(run_dir: &Path, name: &str, conf: &str) -> Vec<String> {
    vec![
        "nginx".into(),
        "-p".into(),
        run_dir.display().to_string(),
        "-c".into(),
        conf.into(),
        "-e".into(),
        run_dir
            .join(format!("{name}-error.log"))
            .display()
            .to_string(),
    ]
}

/// Settings every nginx here shares: foreground, one worker, enough descriptors for
/// 10,000 connections, keep-alive that outlasts the benchmark.
fn nginx_main(run_dir: &Path, name: &str) -> String {
    let dir = run_dir.display();
    format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\n\
         pid {dir}/{name}.pid;\nerror_log {dir}/{name}-error.log warn;\n\
         events {{ worker_connections 20000; }}\n"
    )
}

fn nginx_http_common() -> &'static str {
    "  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n"
}

/// The app: a fixed 64-byte body on 8080 (HTTP/1.1) and 8081 (h2c prior knowledge).
pub fn app_nginx_conf(run_dir: &Path) -> String {
    let location = format!("location / {{ default_type text/plain; return 200 \"{BODY}\"; }}");
    format!(
        "{main}http {{\n{common}  server {{ listen {APP_H1} backlog=4096; {location} }}\n  \
         server {{ listen {APP_H2} http2 backlog=4096; {location} }}\n  \
         server {{ listen 127.0.0.1:{APP_STATUS}; location / {{ stub_status; }} }}\n}}\n",
        main = nginx_main(run_dir, "app"),
        common = nginx_http_common(),
    )
}

/// A reverse-proxy hop. HTTP/1.1 and h2c in, HTTP/1.1 keep-alive upstream (nginx
/// proxies only HTTP/1.x upstream); TCP and the banner through the stream module,
/// each with an access log of its own (a line per finished session: the proxy's
/// connection counter for that traffic).
pub fn nginx_proxy_conf(run_dir: &Path, name: &str, hops: Hops) -> String {
    let Hops {
        h1: (h1_in, h1_up),
        h2: (h2_in, h2_up),
        tcp: (tcp_in, tcp_up),
        banner: (banner_in, banner_up),
    } = hops;
    let dir = run_dir.display();
    format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n{main}\
         http {{\n{common}\
         \x20 upstream hop_h1 {{ server {h1_up}; keepalive 256; keepalive_requests 100000000; keepalive_timeout 300s; }}\n\
         \x20 upstream hop_h2 {{ server {h2_up}; keepalive 256; keepalive_requests 100000000; keepalive_timeout 300s; }}\n\
         \x20 server {{ listen {h1_in} backlog=4096; location / {{ proxy_pass http://hop_h1; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n\
         \x20 server {{ listen {h2_in} http2 backlog=4096; location / {{ proxy_pass http://hop_h2; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n\
         \x20 server {{ listen 127.0.0.1:{NGINX_STATUS}; location / {{ stub_status; }} }}\n}}\n\
         stream {{\n\
         \x20 log_format session '$remote_addr $bytes_sent $bytes_received';\n\
         \x20 access_log {dir}/{name}-stream.log session;\n\
         \x20 server {{ listen {tcp_in} backlog=4096; proxy_pass {tcp_up}; }}\n\
         \x20 server {{ listen {banner_in} backlog=4096; proxy_pass {banner_up}; \
         access_log {dir}/{name}-banner.log session; }}\n}}\n",
        main = nginx_main(run_dir, name),
        common = nginx_http_common(),
    )
}

/// A haproxy hop: h2c on both sides of the h2 frontend, idle upstream connections
/// shared (`http-reuse always`); TCP and the banner in `mode tcp`.
pub fn haproxy_conf(maxconn: u32, hops: Hops) -> String {
    let Hops {
        h1: (h1_in, h1_up),
        h2: (h2_in, h2_up),
        tcp: (tcp_in, tcp_up),
        banner: (banner_in, banner_up),
    } = hops;
    format!(
        "global\n  nbthread 1\n  maxconn {maxconn}\n\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n  \
         timeout http-keep-alive 300s\n\n\
         frontend h1\n  bind {h1_in} backlog 4096\n  default_backend up_h1\n\n\
         frontend h2\n  bind {h2_in} proto h2 backlog 4096\n  default_backend up_h2\n\n\
         backend up_h1\n  http-reuse always\n  server app {h1_up}\n\n\
         backend up_h2\n  http-reuse always\n  server app {h2_up} proto h2\n\n\
         frontend tcp\n  mode tcp\n  bind {tcp_in} backlog 4096\n  default_backend up_tcp\n\n\
         backend up_tcp\n  mode tcp\n  server app {tcp_up}\n\n\
         frontend banner\n  mode tcp\n  bind {banner_in} backlog 4096\n  default_backend up_banner\n\n\
         backend up_banner\n  mode tcp\n  server app {banner_up}\n\n\
         listen stats\n  bind 127.0.0.1:{HAPROXY_STATS}\n  stats enable\n  stats uri /stats\n"
    )
}

/// The controller's mesh file: `bench` (the server pod's app: HTTP/1.1, h2c,
/// iperf3's TCP, and the banner on an `auto` port, so that both sidecars run
/// protocol detection on a connection whose server speaks first) and `client` (so
/// the server side names its caller).
pub fn mesh_yaml(server: Ipv4Addr, client: Ipv4Addr) -> String {
    format!(
        "# cargo xtask bench\nservices:\n  bench:\n    vip: {VIP}\n    ports:\n      \
         - {{ port: {APP_H1}, target_port: {APP_H1}, protocol: auto }}\n      \
         - {{ port: {APP_H2}, target_port: {APP_H2}, protocol: auto }}\n      \
         - {{ port: {APP_TCP}, target_port: {APP_TCP}, protocol: tcp }}\n      \
         - {{ port: {APP_BANNER}, target_port: {APP_BANNER}, protocol: auto }}\n    \
         endpoints: [{server}]\n  client:\n    vip: {CLIENT_VIP}\n    ports:\n      \
         - {{ port: 9, target_port: 9, protocol: tcp }}\n    endpoints: [{client}]\n"
    )
}
