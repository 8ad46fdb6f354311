//! The layers hold: the core crate has no I/O among its dependencies and does none itself,
//! and every source file sits in a layer its path names.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `[dependencies]` of a Cargo.toml, by name.
fn dependencies(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == "[dependencies]";
            continue;
        }
        if inside && !line.is_empty() && !line.starts_with('#') {
            if let Some((name, _)) = line.split_once('=') {
                out.push(name.trim().to_string());
            }
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Data crates only: a runtime, a client, a server, a CLI parser or a logger would let the
/// core do what its callers are for. A new one is a decision; add it here with a reason.
const CORE_MAY_USE: [&str; 9] = [
    "base64",
    "data-url",
    "regex",
    "serde",
    "serde_json",
    "serde_path_to_error",
    "serde-saphyr",
    "thiserror",
    "x509-parser",
];

#[test]
fn the_core_crate_depends_on_data_crates_only() {
    let manifest = std::fs::read_to_string(root().join("src/core/Cargo.toml")).unwrap();
    let deps = dependencies(&manifest);
    assert!(!deps.is_empty(), "no [dependencies] read from {manifest}");
    let other: Vec<&String> = deps
        .iter()
        .filter(|d| !CORE_MAY_USE.contains(&d.as_str()))
        .collect();
    assert!(other.is_empty(), "the core may not depend on {other:?}");
    let main = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(dependencies(&main).contains(&"cip-core".to_string()));
}

/// The signature crate judges bytes: ring for the cryptography, x509-parser for keys, the
/// core for the policy model and references, and data crates; p256 for curve arithmetic
/// only (`signers`: the keys a signature verifies under, which ring cannot give). No
/// registry client, no runtime, and none of the crypto stacks the project keeps out.
const SIGSTORE_MAY_USE: [&str; 6] = ["base64", "cip-core", "p256", "ring", "serde", "x509-parser"];

#[test]
fn the_signature_crate_is_pure_too() {
    let manifest = std::fs::read_to_string(root().join("src/sigstore/Cargo.toml")).unwrap();
    let deps = dependencies(&manifest);
    let other: Vec<&String> = deps
        .iter()
        .filter(|d| !SIGSTORE_MAY_USE.contains(&d.as_str()))
        .collect();
    assert!(other.is_empty(), "cip-sigstore may not depend on {other:?}");
    let mut found = Vec::new();
    for file in rust_files(&root().join("src/sigstore")) {
        let text = std::fs::read_to_string(&file).unwrap();
        // Tests may make keys with the system's randomness; the code may not do I/O.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in code.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for word in IMPURE.iter().filter(|w| code.contains(*w)) {
                found.push(format!("{}:{}: {word}", file.display(), n + 1));
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

/// No sigstore-rs, no aws-lc, no OpenSSL anywhere in the build: signatures are checked by
/// our port over ring.
#[test]
fn no_borrowed_sigstore_and_no_other_crypto_stack() {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).unwrap();
    let names: Vec<&str> = lock
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .map(|l| l.trim_end_matches('"'))
        .collect();
    assert!(names.contains(&"ring"), "Cargo.lock not read");
    let banned: Vec<&&str> = names
        .iter()
        .filter(|n| {
            [
                "sigstore",
                "aws-lc-rs",
                "aws-lc-sys",
                "openssl",
                "openssl-sys",
                "native-tls",
            ]
            .contains(n)
        })
        .collect();
    assert!(banned.is_empty(), "{banned:?}");
}

/// What std offers beyond plain data: files, sockets, processes, threads, the
/// environment, the clock and the terminal.
const IMPURE: [&str; 11] = [
    "std::fs",
    "std::net",
    "std::process",
    "std::thread",
    "std::env",
    "Instant",
    "SystemTime",
    "stdout",
    "stderr",
    "println!",
    "eprintln!",
];

#[test]
fn the_core_does_no_io_and_reads_no_clock() {
    let files = rust_files(&root().join("src/core"));
    assert!(files.len() > 10, "{files:?}");
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for word in IMPURE.iter().filter(|w| code.contains(*w)) {
                found.push(format!("{}:{}: {word}", file.display(), n + 1));
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

/// The files outside the three layers' directories: the crate roots, the binary's
/// argument parsing and dispatch, the edges every layer shares, and the wiring of a task
/// that joins the cluster (`k8s`) to the registries (`pull`).
const EDGES: [&str; 13] = [
    "src/lib.rs",
    "src/impact.rs",
    "src/state.rs",
    "src/statedir.rs",
    "src/pull.rs",
    "src/main.rs",
    "src/commands.rs",
    "src/runtime.rs",
    "src/files.rs",
    "src/metrics.rs",
    "src/webhook.rs",
    "src/k8s.rs",
    "src/core/lib.rs",
];

#[test]
fn every_source_file_is_in_a_layer_its_path_names() {
    let mut stray = Vec::new();
    for file in rust_files(&root().join("src")) {
        let path = file
            .strip_prefix(root())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let layered = [
            "src/core/",
            "src/sigstore/",
            "src/pull/",
            "src/webhook/",
            "src/k8s/",
        ]
        .iter()
        .any(|dir| path.starts_with(dir));
        if !layered && !EDGES.contains(&path.as_str()) {
            stray.push(path);
        }
    }
    assert!(
        stray.is_empty(),
        "files outside core/, sigstore/, pull/, webhook/, k8s/ and the edges: {stray:?}"
    );
    for edge in EDGES {
        assert!(root().join(edge).is_file(), "{edge} is gone: update EDGES");
    }
}

/// The lines of each function in `text` (rustfmt's layout: a function ends at the first
/// line that is its own indentation and `}`), by name.
fn function_lengths(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let signature = ["pub(crate) ", "pub ", "async ", "const ", "unsafe "]
            .iter()
            .fold(trimmed, |t, prefix| t.strip_prefix(prefix).unwrap_or(t));
        let Some(rest) = signature.strip_prefix("fn ") else {
            continue;
        };
        if line.trim_end().ends_with(';') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let end = format!("{indent}}}");
        if let Some(n) = lines[i + 1..].iter().position(|l| *l == end) {
            out.push((name, n + 2));
        }
    }
    out
}

/// No function in `src/` is over 150 lines: a longer one is named steps waiting to be
/// named.
#[test]
fn no_function_in_src_is_over_150_lines() {
    let mut long = Vec::new();
    for file in rust_files(&root().join("src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (name, lines) in function_lengths(&text) {
            if lines > 150 {
                long.push(format!("{}: {name} ({lines} lines)", file.display()));
            }
        }
    }
    assert!(long.is_empty(), "{long:#?}");
    // The measure itself: a function of three lines is three lines.
    assert_eq!(
        function_lengths("fn a() {\n    b();\n}\n"),
        [("a".to_string(), 3)]
    );
}

/// The code of a source file without its tests and comments: what it imports.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or_default();
    before_tests
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Imports name their layer and point one way: the edges (`k8s`, `webhook`, `pull`) never
/// import each other, `metrics`, `files` and `state` import neither, only `runtime.rs` and
/// the running-images task (`impact.rs`, which never serves admission) wire them, and
/// nothing in the library derives a command-line trait.
#[test]
fn layers_import_in_one_direction() {
    let src = root().join("src");
    let rules: [(&str, &[&str]); 8] = [
        ("impact.rs", &["crate::webhook"]),
        ("k8s", &["crate::webhook", "crate::pull"]),
        ("webhook", &["crate::k8s", "crate::pull"]),
        ("pull", &["crate::webhook", "crate::k8s"]),
        ("metrics.rs", &["crate::webhook", "crate::k8s"]),
        ("files.rs", &["crate::webhook", "crate::k8s"]),
        ("state.rs", &["crate::webhook", "crate::k8s", "crate::pull"]),
        (
            "statedir.rs",
            &["crate::webhook", "crate::k8s", "crate::pull"],
        ),
    ];
    let mut wrong = Vec::new();
    for (place, forbidden) in rules {
        let path = src.join(place);
        let files = if path.is_dir() {
            rust_files(&path)
        } else {
            vec![path]
        };
        for file in files {
            let code = code_of(&file);
            for f in forbidden {
                if code.contains(f) {
                    wrong.push(format!("{} imports {f}", file.display()));
                }
            }
        }
    }
    for file in rust_files(&src) {
        let name = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .to_string();
        if name == "main.rs" {
            continue;
        }
        let code = code_of(&file);
        if code.contains("clap::") || code.contains("ValueEnum") {
            wrong.push(format!("{name} knows the command line"));
        }
    }
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    if lib.lines().any(|l| l.starts_with("pub use crate::")) {
        wrong.push("lib.rs re-exports modules at the root".into());
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The core's modules import each other without a cycle.
#[test]
fn the_core_has_no_import_cycle() {
    let core = root().join("src/core");
    let mut graph = std::collections::BTreeMap::new();
    for file in rust_files(&core) {
        let module = file.file_stem().unwrap().to_string_lossy().to_string();
        if module == "lib" {
            continue;
        }
        let code = code_of(&file);
        let deps: std::collections::BTreeSet<String> = code
            .match_indices("crate::")
            .map(|(i, _)| {
                code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .filter(|d| *d != module && !d.is_empty())
            .collect();
        graph.insert(module, deps);
    }
    // Depth-first, with the path so far: a module met again on its own path is a cycle.
    fn visit(
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        let here = path.last().unwrap().clone();
        for next in graph.get(&here).into_iter().flatten() {
            if let Some(i) = path.iter().position(|m| m == next) {
                let mut cycle = path[i..].to_vec();
                cycle.push(next.clone());
                return Some(cycle);
            }
            if done.contains(next) {
                continue;
            }
            path.push(next.clone());
            if let Some(cycle) = visit(graph, path, done) {
                return Some(cycle);
            }
            path.pop();
        }
        done.insert(here);
        None
    }
    let mut done = std::collections::BTreeSet::new();
    for module in graph.keys() {
        let mut path = vec![module.clone()];
        if let Some(cycle) = visit(&graph, &mut path, &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
    assert!(graph.len() > 10, "{graph:?}");
}
