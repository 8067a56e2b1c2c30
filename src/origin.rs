//! Browser hygiene for WebSocket and SSE: a page may only open a connection
//! if its `Origin` is allowed (`ROOMCAST_ALLOWED_ORIGINS`), is this server's
//! own origin, or is absent (not a browser).

use actix_web::http::header;
use actix_web::HttpRequest;

/// A page of another origin: answered 403 `forbidden` (`From<NotAllowed>
/// for ApiError`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("this Origin may not connect (ROOMCAST_ALLOWED_ORIGINS)")]
pub struct NotAllowed;

/// The allowed origins, parsed once.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    any: bool,
    list: Vec<String>,
}

impl Origins {
    /// From a comma-separated list; `*` allows any origin.
    pub fn parse(list: Option<&str>) -> Self {
        let list: Vec<String> = list
            .unwrap_or("")
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        Origins {
            any: list.iter().any(|s| s == "*"),
            list,
        }
    }

    pub fn check(&self, req: &HttpRequest) -> Result<(), NotAllowed> {
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("").to_ascii_lowercase();
        if self.any || self.list.iter().any(|o| *o == origin) {
            return Ok(());
        }
        // Same origin: the page was served by this host.
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let same = origin
            .split_once("://")
            .is_some_and(|(_, rest)| !host.is_empty() && rest == host);
        if same {
            return Ok(());
        }
        Err(NotAllowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn origins() {
        let o = Origins::parse(Some("https://app.example.com/, http://localhost:3000"));
        let req = |origin: Option<&str>| {
            let mut r = TestRequest::default().insert_header(("host", "rc.example.com"));
            if let Some(origin) = origin {
                r = r.insert_header(("origin", origin));
            }
            r.to_http_request()
        };
        assert!(o.check(&req(None)).is_ok());
        assert!(o.check(&req(Some("https://APP.example.com"))).is_ok());
        assert!(o.check(&req(Some("http://localhost:3000"))).is_ok());
        assert!(
            o.check(&req(Some("https://rc.example.com"))).is_ok(),
            "same origin"
        );
        assert!(o.check(&req(Some("https://evil.example"))).is_err());
        assert!(o.check(&req(Some("null"))).is_err());
        assert!(Origins::parse(Some("*"))
            .check(&req(Some("https://evil.example")))
            .is_ok());
        assert!(Origins::parse(None)
            .check(&req(Some("https://evil.example")))
            .is_err());
    }
}
