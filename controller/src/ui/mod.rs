//! The mesh page: `GET /ui/` on the controller's HTTP port, a page drawn by a
//! small dependency-free script from `GET /ui/api/mesh`, which it polls. The
//! assets are compiled into the binary (`include_str!`): the page loads nothing
//! from anywhere but the controller (ARCHITECTURE.md, The mesh page).
//!
//! - [`gather`]: reads the subscribed proxies' `/metrics`, `/ready` and
//!   `/connections` every interval and keeps a bounded ring of edge totals.
//! - [`view`]: turns the ring, the served mesh and the recent bad configurations
//!   into the page's JSON.
//! - [`fetch`]: one bounded GET to a proxy.
//!
//! Who may call: the assets hold no data and are open (a browser cannot send a
//! bearer token when it navigates); the data API is read-only and wants any
//! valid token, as `/v1/status` does. The page takes the token from its URL's
//! fragment (`/ui/#token=...`, never sent to the server or logged), keeps it in
//! the tab's `sessionStorage`, and sends it as `Authorization: Bearer`.

pub mod fetch;
pub mod gather;
pub mod view;

use std::sync::Arc;

use http::StatusCode;
use weft_runtime::http::{respond, Body};

pub use gather::{Gatherer, Settings};

use crate::state::State;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// The page's own policy: nothing but this origin, no inline script, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

/// The page and its data.
#[derive(Debug)]
pub struct Ui {
    state: Arc<State>,
    gatherer: Arc<Gatherer>,
}

impl Ui {
    pub fn new(state: Arc<State>, settings: Settings) -> Self {
        let gatherer = Arc::new(Gatherer::new(settings, state.clone()));
        Ui { state, gatherer }
    }

    /// The gatherer, to be run (`Gatherer::run`) for as long as the controller serves.
    pub fn gatherer(&self) -> Arc<Gatherer> {
        self.gatherer.clone()
    }

    /// Whether `path` is one of the page's assets, which anyone may fetch.
    pub fn is_asset(path: &str) -> bool {
        matches!(path, "/ui" | "/ui/" | "/ui/app.js" | "/ui/style.css")
    }

    /// The answer to `GET path` for a path under `/ui`, `None` for any other.
    pub fn route(&self, path: &str) -> Option<http::Response<Body>> {
        let (kind, body): (&str, &str) = match path {
            "/ui" => {
                // Relative asset paths resolve under `/ui/`.
                let mut r = respond(StatusCode::MOVED_PERMANENTLY, "text/plain", "/ui/\n");
                r.headers_mut().insert(
                    http::header::LOCATION,
                    http::HeaderValue::from_static("/ui/"),
                );
                return Some(r);
            }
            "/ui/" => ("text/html; charset=utf-8", INDEX_HTML),
            "/ui/app.js" => ("text/javascript; charset=utf-8", APP_JS),
            "/ui/style.css" => ("text/css; charset=utf-8", STYLE_CSS),
            "/ui/api/mesh" => {
                self.gatherer.viewed();
                let body = view::mesh(&self.state, &self.gatherer).to_string();
                let mut r = respond(StatusCode::OK, "application/json", body);
                r.headers_mut().insert(
                    http::header::CACHE_CONTROL,
                    http::HeaderValue::from_static("no-store"),
                );
                return Some(r);
            }
            _ if path.starts_with("/ui/") => {
                return Some(respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"))
            }
            _ => return None,
        };
        let mut r = respond(StatusCode::OK, kind, body);
        let headers = r.headers_mut();
        headers.insert(
            "content-security-policy",
            http::HeaderValue::from_static(CSP),
        );
        headers.insert(
            "x-content-type-options",
            http::HeaderValue::from_static("nosniff"),
        );
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_assets_load_nothing_from_elsewhere() {
        for asset in [INDEX_HTML, APP_JS, STYLE_CSS] {
            for outside in ["http://", "https://", "//cdn", "@import"] {
                // The SVG namespace is a name, not a fetch.
                let fetched = asset
                    .replace("http://www.w3.org/2000/svg", "")
                    .contains(outside);
                assert!(!fetched, "an asset names {outside}");
            }
        }
        assert!(INDEX_HTML.contains("src=\"app.js\""));
        assert!(!INDEX_HTML.contains("<script>"), "no inline script (CSP)");
    }
}
