//! The chat page's files (`src/page/`), compiled into the binary and served as they are, but for
//! `index.html`, which is rendered once at startup with the settings the page must know.

use bytes::Bytes;

/// One file of the page.
pub struct Asset {
    pub content_type: &'static str,
    pub body: Bytes,
}

/// The page's files by URL path. Built once; every request gets a cheap clone of the bytes.
pub struct Page {
    files: Vec<(&'static str, Asset)>,
}

/// What the page cannot learn from the protocol: whether `/dev/token` exists, and the heartbeat
/// interval its watchdog waits for (interval + 1 s without a ping: reconnect).
pub struct PageSettings {
    pub dev: bool,
    pub heartbeat_ms: u64,
}

const INDEX: &str = include_str!("page/index.html");

/// `(path, content type, source)` of every file but the index.
const FILES: &[(&str, &str, &str)] = &[
    ("/style.css", "text/css; charset=utf-8", include_str!("page/style.css")),
    ("/app.js", "text/javascript; charset=utf-8", include_str!("page/app.js")),
    ("/chat.js", "text/javascript; charset=utf-8", include_str!("page/chat.js")),
    ("/connection.js", "text/javascript; charset=utf-8", include_str!("page/connection.js")),
    ("/rooms.js", "text/javascript; charset=utf-8", include_str!("page/rooms.js")),
    ("/view.js", "text/javascript; charset=utf-8", include_str!("page/view.js")),
    ("/icon.svg", "image/svg+xml", include_str!("page/icon.svg")),
];

/// The page may load only its own files and talk only to its own origin (`connect-src 'self'`
/// covers the same-host `ws:`/`wss:` URL); nothing from any other host, no inline script.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

impl Page {
    pub fn new(settings: &PageSettings) -> Page {
        let config = format!(r#"data-dev="{}" data-heartbeat-ms="{}""#, settings.dev, settings.heartbeat_ms);
        let index = INDEX.replacen("data-config", &config, 1);
        let mut files = vec![("/", Asset { content_type: "text/html; charset=utf-8", body: Bytes::from(index) })];
        for (path, content_type, body) in FILES {
            files.push((path, Asset { content_type, body: Bytes::from_static(body.as_bytes()) }));
        }
        Page { files }
    }

    /// The file served at `path` (`/index.html` is `/`).
    pub fn get(&self, path: &str) -> Option<&Asset> {
        let path = if path == "/index.html" { "/" } else { path };
        self.files.iter().find(|(p, _)| *p == path).map(|(_, a)| a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_carries_the_settings() {
        let page = Page::new(&PageSettings { dev: true, heartbeat_ms: 2000 });
        let index = std::str::from_utf8(&page.get("/index.html").unwrap().body).unwrap().to_string();
        assert!(index.contains(r#"data-dev="true" data-heartbeat-ms="2000""#), "{index}");
        assert!(!index.contains("data-config"));
        assert!(page.get("/app.js").is_some());
        assert!(page.get("/nope.js").is_none());
    }

    /// Every module the page imports is served (a missing one would only show in a browser).
    #[test]
    fn every_import_is_served() {
        let page = Page::new(&PageSettings { dev: false, heartbeat_ms: 30_000 });
        for (_, _, source) in FILES {
            for line in source.lines().filter(|l| l.trim_start().starts_with("import ")) {
                let target = line.split(['\'', '"']).nth(1).expect("quoted import path");
                let path = target.trim_start_matches('.');
                assert!(page.get(path).is_some(), "{target} is imported but not served");
            }
        }
    }
}
