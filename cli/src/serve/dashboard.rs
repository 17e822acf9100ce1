//! The dashboard of `offsite serve`: one page, its script and its style
//! (ui/), compiled into the binary, so there is no build step and no Node
//! toolchain. They are served without a token because they hold no data:
//! the page asks for a token, keeps it in the tab's sessionStorage and
//! reads everything through the JSON API with it, like any other client.
//! The security headers of every answer, the API's included, are set here.
//!
//! Never: put data in the page shell; answer without the headers below
//! (a Content-Security-Policy that allows no inline script, no framing).

use std::sync::Arc;

use axum::http::header::{self, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;

/// Scripts, styles, images and API calls from this origin only; no inline
/// script or style, no plugins, no framing, no form posting anywhere (the
/// login form is handled by the script).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

const INDEX: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");
const ICON: &str = include_str!("ui/icon.svg");

/// `/` (the page) and `/ui/*` (what it loads).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX)))
        .route(
            "/ui/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/ui/app.css",
            get(|| asset("text/css; charset=utf-8", APP_CSS)),
        )
        .route("/ui/icon.svg", get(|| asset("image/svg+xml", ICON)))
}

/// A compiled-in file; `no-cache` so a new binary's script is picked up.
async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The headers every answer carries.
pub async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        // For browsers older than frame-ancestors.
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_parses_no_data_as_html_and_has_no_inline_script_or_style() {
        for html_sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "Function(",
        ] {
            assert!(!APP_JS.contains(html_sink), "app.js uses {html_sink}");
        }
        // Inline handlers and styles would be refused by the CSP anyway.
        for inline in ["<script>", "style=", "<style", "javascript:"] {
            assert!(!INDEX.contains(inline), "index.html has {inline}");
        }
        let handlers = INDEX.match_indices(" on").filter(|(i, _)| {
            let rest = &INDEX[i + 3..];
            let name = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_ascii_lowercase())
                    .len();
            name > 0 && rest[name..].starts_with('=')
        });
        assert_eq!(handlers.count(), 0, "index.html has an on...= handler");
    }
}
