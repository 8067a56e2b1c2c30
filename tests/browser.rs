//! The browser suite, run by `cargo test`: the dashboard and the browser
//! client (`src/web/`) in Debian's chromium, driven by playwright-core from
//! Node's test runner (`tests/browser/*.test.js`), against the real server
//! binary and a fresh PostgreSQL database.
//!
//! Needs `node`/`npm` (the npm packages are installed with `npm ci` when
//! `node_modules` is missing, and the React package's example app is built
//! when missing) and `/usr/bin/chromium` (`apt-get install chromium`; no
//! browser is ever downloaded). Screenshots of the dashboard go to
//! `target/browser/`.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestDb;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The browser client's files, relative to `src/web/`: the entry
/// (`client.js`) and the modules of `client/`.
fn client_files(root: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root.join("src/web/client"))
        .expect("read src/web/client/")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|f| f.ends_with(".js"))
        .map(|f| format!("client/{f}"))
        .collect();
    files.sort();
    files.insert(0, "client.js".into());
    files
}

/// Every module of `src/web/client/` is embedded and served (src/http/dashboard.rs
/// lists them by name): a module added there and not to the list would
/// leave `/client.js` failing to import in every browser.
#[test]
fn every_client_module_is_served() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let served =
        std::fs::read_to_string(root.join("src/http/dashboard.rs")).expect("read dashboard.rs");
    for f in client_files(root).iter().skip(1) {
        let file = f.trim_start_matches("client/");
        assert!(
            served.contains(&format!("module!(\"{file}\")")),
            "src/web/{f} is not served: add `module!(\"{file}\")` to MODULES in src/http/dashboard.rs"
        );
    }
}

#[actix_web::test]
async fn browser_suite() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the browser suite runs in Debian's chromium \
         (`apt-get update && apt-get install -y chromium`; .ci/run does it)"
    );
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        node_ok,
        "node is missing: the browser suite needs Node.js 20+ and npm"
    );
    if !root.join("node_modules/playwright-core").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(root)
            .status()
            .expect("run npm ci");
        assert!(status.success(), "npm ci failed");
    }

    // The React suite serves the React package's example app: built here
    // when missing, or when the package's copy of the browser client is not
    // the current one (`clients/react/ci.sh` does the same and more).
    let react = root.join("clients/react");
    let stale = client_files(root).iter().any(|f| {
        let current = std::fs::read(root.join("src/web").join(f)).expect("read the browser client");
        std::fs::read(react.join("dist").join(f)).ok().as_deref() != Some(&current[..])
    });
    if stale || !react.join("example/dist/app.js").exists() {
        if !react.join("node_modules").exists() {
            let status = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&react)
                .status()
                .expect("run npm ci in clients/react");
            assert!(status.success(), "npm ci failed in clients/react");
        }
        let status = Command::new("npm")
            .args(["run", "--silent", "build"])
            .current_dir(&react)
            .status()
            .expect("run npm run build in clients/react");
        assert!(status.success(), "building clients/react failed");
    }

    let db = TestDb::new().await;
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or(root)
        .join("browser");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).expect("create target/browser");

    // Node runs in its own thread: this one keeps the runtime that drops the
    // database afterwards.
    let url = db.url.clone();
    let art = artifacts.clone();
    let out = std::thread::spawn(move || {
        Command::new("node")
            .args(["--test", "--test-reporter=spec", "tests/browser/"])
            .current_dir(root)
            .env("ROOMCAST_BIN", env!("CARGO_BIN_EXE_roomcast"))
            .env("DATABASE_URL", url)
            .env("ROOMCAST_ARTIFACTS", art)
            .env("CHROMIUM", CHROMIUM)
            .env_remove("ROOMCAST_WEB_DIR")
            .output()
            .expect("run node --test")
    })
    .join()
    .expect("node thread");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the browser suite failed (node --test tests/browser/): see its output above"
    );
    for shot in [
        "dashboard-live.png",
        "dashboard-delayed.png",
        "dashboard-offline.png",
    ] {
        assert!(
            artifacts.join(shot).exists(),
            "screenshot {shot} missing in {}",
            artifacts.display()
        );
    }
}
