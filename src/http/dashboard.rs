//! `GET /`, `GET /client.js` and `GET /client/{module}`: the dashboard and
//! the browser client (an entry module and the modules it imports by
//! relative path), embedded in the binary and served with an ETag (a hash of
//! the bytes), so a browser revalidates and gets 304 until the server is
//! upgraded.
//!
//! `ROOMCAST_WEB_DIR` (development only) serves the files from that folder
//! instead, read at each request, so the page can be edited without a rebuild.

use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::error::ApiError;

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    embedded: &'static str,
    etag: OnceLock<String>,
}

static DASHBOARD: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    embedded: include_str!("../web/index.html"),
    etag: OnceLock::new(),
};

static CLIENT: Asset = Asset {
    name: "client.js",
    content_type: JAVASCRIPT,
    embedded: include_str!("../web/client.js"),
    etag: OnceLock::new(),
};

/// One module of `src/web/client/`, served at `/client/<file>`.
macro_rules! module {
    ($file:literal) => {
        Asset {
            name: concat!("client/", $file),
            content_type: JAVASCRIPT,
            embedded: include_str!(concat!("../web/client/", $file)),
            etag: OnceLock::new(),
        }
    };
}

/// The modules `/client.js` imports (directly or not); tests/browser.rs
/// checks that this list is every file of `src/web/client/`.
static MODULES: [Asset; 10] = [
    module!("emitter.js"),
    module!("polling.js"),
    module!("rest.js"),
    module!("room_list.js"),
    module!("roomcast.js"),
    module!("store.js"),
    module!("subscription.js"),
    module!("timer.js"),
    module!("types.js"),
    module!("websocket.js"),
];

fn etag_of(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!("\"{}\"", hex::encode(&digest[..12]))
}

fn serve(asset: &'static Asset, req: &HttpRequest) -> HttpResponse {
    let from_disk = std::env::var_os("ROOMCAST_WEB_DIR")
        .and_then(|dir| std::fs::read_to_string(std::path::Path::new(&dir).join(asset.name)).ok());
    // The embedded bytes are served as they are (no copy per request).
    let (body, etag) = match from_disk {
        Some(text) => {
            let etag = etag_of(text.as_bytes());
            (Bytes::from(text), etag)
        }
        None => (
            Bytes::from_static(asset.embedded.as_bytes()),
            asset
                .etag
                .get_or_init(|| etag_of(asset.embedded.as_bytes()))
                .clone(),
        ),
    };
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if fresh {
        return res.finish();
    }
    res.content_type(asset.content_type).body(body)
}

/// `GET /`: the dashboard (one page, nothing loaded from outside).
pub async fn page(req: HttpRequest) -> HttpResponse {
    serve(&DASHBOARD, &req)
}

/// `GET /client.js`: the browser client's entry, an ES module.
pub async fn client(req: HttpRequest) -> HttpResponse {
    serve(&CLIENT, &req)
}

/// `GET /client/{module}`: a module of the browser client.
pub async fn module(req: HttpRequest, file: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let name = format!("client/{file}");
    MODULES
        .iter()
        .find(|m| m.name == name)
        .map(|m| serve(m, &req))
        .ok_or_else(|| ApiError::NotFound("no such module of the browser client".into()))
}
