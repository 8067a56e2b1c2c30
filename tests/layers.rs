//! The house has one-way stairs (issue 27; DESIGN.md, "The house"): a
//! module imports only modules of its own layer or below, and no two
//! modules import each other, directly or around a cycle. Checked over the
//! `crate::` and `super::` paths of src/ (no tool to install); edges not
//! yet moved are listed in `TO_MOVE` and the list may only shrink: a new
//! upward edge or cycle fails, and so does a listed one that is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom to top.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "0 foundation",
        &[
            "protocol",
            "config",
            "auth",
            "webhook",
            "metrics",
            "limits",
            "pgcluster",
            "seal",
            "origin",
        ],
    ),
    ("1 SQL", &["store"]),
    ("2 mail", &["mailbox", "mail"]),
    ("3 bus", &["bus"]),
    // src/actors/: room, db, boards, presence, relay, listener, pruner, capture.
    ("4 actors", &["actors"]),
    ("5 state", &["state"]),
    // src/sessions/: ws, sse, sse_rooms, cursor, outbox.
    ("6 sessions", &["sessions"]),
    ("7 http", &["http"]),
    ("8 wiring", &["startup", "demo", "main", "lib"]),
];

/// Directories whose files are each a module of the graph.
const DIRS: &[&str] = &["http", "actors", "sessions"];

/// Edges that break the rule today and are being moved (issue 27). The
/// list only shrinks.
const TO_MOVE: &[(&str, &str)] = &[];

fn layer_of(module: &str) -> usize {
    let exact = LAYERS.iter().position(|(_, ms)| ms.contains(&module));
    let top = module.split("::").next().unwrap_or(module);
    exact
        .or_else(|| LAYERS.iter().position(|(_, ms)| ms.contains(&top)))
        .unwrap_or_else(|| panic!("module {module} has no layer in tests/layers.rs"))
}

/// `src/http/events.rs` -> `http::events`; `src/actors/presence/view.rs` ->
/// `presence` (a module's own submodules are the module).
fn module_of(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let parts: Vec<&str> = parts
        .iter()
        .map(String::as_str)
        .filter(|p| *p != "mod")
        .collect();
    match parts.as_slice() {
        [dir @ ("http" | "actors" | "sessions"), file, ..] => format!("{dir}::{file}"),
        [first, ..] => first.to_string(),
        [] => unreachable!(),
    }
}

/// The crate modules a file names (`crate::x`, `crate::http::y`, and
/// `super::y` in http/).
fn imports(text: &str, module: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let words = |prefix: &str| -> Vec<Vec<String>> {
        code.match_indices(prefix)
            .map(|(i, _)| {
                code[i + prefix.len()..]
                    .split("::")
                    .take(2)
                    .map(|s| {
                        s.chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect::<String>()
                    })
                    .collect()
            })
            .collect()
    };
    for w in words("crate::") {
        match w.as_slice() {
            [h, f, ..]
                if DIRS.contains(&h.as_str())
                    && f.chars().next().is_some_and(|c| c.is_ascii_lowercase()) =>
            {
                out.insert(format!("{h}::{f}"));
            }
            [m, ..] if !m.is_empty() => {
                out.insert(m.clone());
            }
            _ => {}
        }
    }
    // `super::x` in a file of a directory module names its sibling (in a
    // module's own submodules, e.g. actors/presence/*.rs, the module itself).
    if let Some((dir, _)) = module.split_once("::") {
        for w in words("super::") {
            if let Some(f) = w
                .first()
                .filter(|f| f.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
            {
                out.insert(format!("{dir}::{f}"));
            }
        }
    }
    out.remove(module);
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let m = module_of(&f, &src);
        let text = std::fs::read_to_string(&f).unwrap();
        let deps = imports(&text, &m);
        g.entry(m).or_default().extend(deps);
    }
    // `crate::http` alone (its mod.rs helpers) is the http layer's.
    for deps in g.values_mut() {
        if deps.remove("http") {
            deps.insert("http::mod".into());
        }
    }
    // `super::f` that names no sibling module is an item of the file's own
    // module (`super::parse_hint` in its tests).
    let nodes: BTreeSet<String> = g.keys().cloned().collect();
    for deps in g.values_mut() {
        deps.retain(|d| !d.contains("::") || d == "http::mod" || nodes.contains(d));
    }
    g
}

/// Modules on a cycle (strongly connected components of more than one).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    // Kosaraju.
    let nodes: Vec<&String> = g.keys().collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn dfs<'a>(
        n: &'a String,
        g: &'a BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<&'a String>,
        order: &mut Vec<&'a String>,
    ) {
        if !seen.insert(n) {
            return;
        }
        for d in g.get(n).into_iter().flatten() {
            if let Some((k, _)) = g.get_key_value(d) {
                dfs(k, g, seen, order);
            }
        }
        order.push(n);
    }
    for n in &nodes {
        dfs(n, g, &mut seen, &mut order);
    }
    let mut rev: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
    for (n, ds) in g {
        for d in ds {
            if let Some((k, _)) = g.get_key_value(d) {
                rev.entry(k).or_default().push(n);
            }
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for n in order.into_iter().rev() {
        if assigned.contains(n) {
            continue;
        }
        let mut comp = BTreeSet::new();
        let mut stack = vec![n];
        while let Some(x) = stack.pop() {
            if !assigned.insert(x) {
                continue;
            }
            comp.insert(x.clone());
            for p in rev.get(x).into_iter().flatten() {
                stack.push(p);
            }
        }
        if comp.len() > 1 {
            out.push(comp);
        }
    }
    out
}

/// Every edge that breaks the rule: upward, or between two actors (they
/// address each other through the mail layer's handles). A cycle needs
/// one of them (or one inside a layer): the test also checks that what is
/// left once the listed edges are taken out has no cycle.
fn violations(g: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<(String, String)> {
    let actors = layer_of("actors::room");
    let mut out = BTreeSet::new();
    for (m, deps) in g {
        let lm = layer_of(m);
        for d in deps {
            let ld = layer_of(d);
            if ld > lm || (lm == actors && ld == actors) {
                out.insert((m.clone(), d.clone()));
            }
        }
    }
    out
}

#[test]
fn no_module_imports_a_layer_above_it_nor_sits_on_a_cycle() {
    let g = graph();
    let found = violations(&g);
    let listed: BTreeSet<(String, String)> = TO_MOVE
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let new: Vec<_> = found.difference(&listed).collect();
    let gone: Vec<_> = listed.difference(&found).collect();
    let all_cycles = cycles(&g);
    let mut rest = g.clone();
    for (a, b) in &listed {
        if let Some(ds) = rest.get_mut(a) {
            ds.remove(b);
        }
    }
    let cycles = cycles(&rest);
    eprintln!(
        "layers: {} modules, {} edges; {} upward or actor-to-actor ({} listed to move); cycles now: {:?}",
        g.len(),
        g.values().map(BTreeSet::len).sum::<usize>(),
        found.len(),
        listed.len(),
        all_cycles
    );
    assert!(
        new.is_empty(),
        "imports that break the layering (a module may import its layer and below, actors never each other, no cycle):\n{}",
        new.iter()
            .map(|(a, b)| format!("  {a} ({}) -> {b} ({})", LAYERS[layer_of(a)].0, LAYERS[layer_of(b)].0))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        cycles.is_empty(),
        "a cycle inside a layer (not through a listed edge): {cycles:?}"
    );
    assert!(
        gone.is_empty(),
        "these are fixed: take them off TO_MOVE in tests/layers.rs: {gone:?}"
    );
}

/// The browser client's modules (`src/web/client.js` and `src/web/client/`),
/// bottom to top. A module imports (at run time: `import ... from`, not the
/// JSDoc `import('...')` of a type) only modules of a lower floor: the
/// rooms never reach for a transport, the transports never for the client.
const CLIENT_FLOORS: &[(&str, &[&str])] = &[
    ("leaves", &["types", "emitter", "timer", "store", "rest"]),
    ("rooms", &["subscription", "room_list"]),
    ("transports", &["websocket", "polling"]),
    ("client", &["roomcast"]),
    ("entry", &["client"]),
];

fn client_floor(module: &str) -> usize {
    CLIENT_FLOORS
        .iter()
        .position(|(_, ms)| ms.contains(&module))
        .unwrap_or_else(|| {
            panic!("src/web/{module}.js has no floor: add it to CLIENT_FLOORS in tests/layers.rs")
        })
}

#[test]
fn the_browser_client_imports_only_downward() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/web");
    let mut files = vec![("client".to_string(), web.join("client.js"))];
    for e in std::fs::read_dir(web.join("client")).expect("read src/web/client/") {
        let path = e.expect("a directory entry").path();
        if path.extension().is_some_and(|x| x == "js") {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            files.push((stem, path));
        }
    }
    let mut bad = Vec::new();
    let mut edges = 0;
    for (module, path) in &files {
        let text = std::fs::read_to_string(path).expect("read a client module");
        for line in text.lines() {
            let line = line.trim();
            if !(line.starts_with("import ") || line.starts_with("export "))
                || !line.contains(" from ")
            {
                continue;
            }
            let Some(target) = line
                .rsplit(" from ")
                .next()
                .map(|t| t.trim_matches(|c| c == '\'' || c == '"' || c == ';'))
            else {
                continue;
            };
            let name = target
                .rsplit('/')
                .next()
                .unwrap_or(target)
                .trim_end_matches(".js");
            edges += 1;
            if client_floor(name) >= client_floor(module) {
                bad.push(format!(
                    "  {module} ({}) -> {name} ({})",
                    CLIENT_FLOORS[client_floor(module)].0,
                    CLIENT_FLOORS[client_floor(name)].0
                ));
            }
        }
    }
    eprintln!("browser client: {} modules, {edges} imports", files.len());
    assert!(edges > 0, "no import found: the check reads nothing");
    assert!(
        bad.is_empty(),
        "browser client modules importing their own floor or above:\n{}",
        bad.join("\n")
    );
}
