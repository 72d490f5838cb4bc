//! The layers of docs/ARCHITECTURE.md, kept: the picture there is the one table of which module may use
//! which, and every `crate::` path in `src/` is checked against it. A module may use only those after
//! it in the picture (read top to bottom, left to right).
//!
//! Written by hand: the import graph of one crate's own modules is a few lines of text scanning, and
//! no maintained crate checks imports against a layer table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The modules in the picture's order.
struct Layers {
    order: Vec<String>,
}

/// Reads the picture between the `<!-- layers` and `<!-- /layers -->` markers: rows
/// `│ N label   a · b · c │` (a row without a number continues the one above).
fn parse_layers(doc: &str) -> Layers {
    let start = doc.find("<!-- layers").expect("docs/ARCHITECTURE.md has a layers picture");
    let end = doc[start..].find("<!-- /layers -->").expect("the layers picture ends") + start;
    let mut layers = Layers { order: Vec::new() };
    for line in doc[start..end].lines() {
        if !line.trim_start().starts_with('│') {
            continue;
        }
        let text = line.trim().trim_matches(|c| "│┌┐└┘├┤─`".contains(c)).trim();
        let mut words = text.split_whitespace().peekable();
        if words.peek().is_some_and(|word| word.starts_with(|c: char| c.is_ascii_digit())) {
            // The layer's number and label.
            words.next();
            words.next();
        }
        layers.order.extend(words.filter(|word| *word != "·").map(str::to_string));
    }
    layers
}

/// The top-level module a source file belongs to (`src/wire/chunked.rs` is `wire`); `None` for the
/// crate root and the binary.
fn module_of(path: &str) -> Option<&str> {
    let relative = path.strip_prefix("src/")?;
    match relative.split_once('/') {
        Some((folder, _)) => Some(folder),
        None if relative == "lib.rs" || relative == "main.rs" => None,
        None => relative.strip_suffix(".rs"),
    }
}

/// The crate's modules each line of `text` names, with the line number: `crate::m` anywhere in
/// code, and each name of a `use crate::{a, b::c}` group. Comment lines are skipped.
fn imports(text: &str) -> Vec<(usize, String)> {
    let code: Vec<&str> =
        text.lines().map(|line| if line.trim_start().starts_with("//") { "" } else { line }).collect();
    let joined = code.join("\n");
    let line_at = |offset: usize| joined[..offset].matches('\n').count() + 1;
    let mut found = Vec::new();
    for (at, _) in joined.match_indices("crate::") {
        let rest = &joined[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push((line_at(at), leading_name(&item)));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            found.push((line_at(at), leading_name(&item)));
        } else {
            found.push((line_at(at), leading_name(rest)));
        }
    }
    found.retain(|(_, name)| !name.is_empty() && name != "self");
    found
}

fn leading_name(text: &str) -> String {
    text.trim_start().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

/// Every import of `sources` (path, text) against `layers`: one line per violation.
fn violations(sources: &[(String, String)], layers: &Layers) -> Vec<String> {
    let position: BTreeMap<&str, usize> = layers.order.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();
    let mut found = Vec::new();
    for (path, text) in sources {
        let Some(module) = module_of(path) else { continue };
        let Some(&own) = position.get(module) else {
            found.push(format!("{path}: module `{module}` is not in the layers picture of docs/ARCHITECTURE.md"));
            continue;
        };
        for (line, used) in imports(text) {
            if used == module {
                continue;
            }
            let allowed = position.get(used.as_str()).is_some_and(|&theirs| theirs > own);
            if !allowed {
                found.push(format!(
                    "{path}:{line}: `{module}` uses `{used}`, which is not after it in docs/ARCHITECTURE.md's layers"
                ));
            }
        }
    }
    found
}

/// The top-level modules `src/lib.rs` declares.
fn declared_modules(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|line| line.trim().strip_prefix("pub mod ").or_else(|| line.trim().strip_prefix("mod ")))
        .map(|rest| rest.trim_end_matches(';').to_string())
        .collect()
}

fn sources(root: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut folders = vec![root.join("src")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path: PathBuf = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
                found.push((relative, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    found.sort();
    found
}

fn project_layers() -> Layers {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    parse_layers(&std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap())
}

#[test]
fn every_module_uses_only_the_layers_after_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let layers = project_layers();
    let found = violations(&sources(root), &layers);
    assert!(found.is_empty(), "imports against the layers:\n{}", found.join("\n"));
}

#[test]
fn the_picture_places_every_module_once() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let layers = project_layers();
    let mut placed = layers.order.clone();
    placed.sort();
    let mut declared = declared_modules(&std::fs::read_to_string(root.join("src/lib.rs")).unwrap());
    declared.sort();
    assert_eq!(placed, declared, "the picture and src/lib.rs name the same modules, each once");
}

#[test]
fn a_wrong_import_is_reported_with_its_place() {
    let layers = project_layers();
    let source = |path: &str, text: &str| (path.to_string(), text.to_string());
    let wrong = [
        source(
            "src/wire/extra.rs",
            "//! A codec piece.\n\nuse crate::error::BoxError;\nuse crate::proxy::RequestBody;\n",
        ),
        source("src/upstream/extra.rs", "use crate::{\n    config::Balance,\n    pipeline::ResponseBody,\n};\n"),
        source("src/metrics/extra.rs", "fn f() { let _ = crate::accounting::BodyEnd::Complete; }\n"),
        source("src/template.rs", "use crate::uri::normalize_path;\n"),
        source("src/newcomer.rs", "use crate::error::GatewayError;\n"),
    ];
    let found = violations(&wrong, &layers);
    assert_eq!(
        found,
        [
            "src/wire/extra.rs:4: `wire` uses `proxy`, which is not after it in docs/ARCHITECTURE.md's layers",
            "src/upstream/extra.rs:1: `upstream` uses `pipeline`, which is not after it in docs/ARCHITECTURE.md's layers",
            "src/metrics/extra.rs:1: `metrics` uses `accounting`, which is not after it in docs/ARCHITECTURE.md's layers",
            "src/template.rs:1: `template` uses `uri`, which is not after it in docs/ARCHITECTURE.md's layers",
            "src/newcomer.rs: module `newcomer` is not in the layers picture of docs/ARCHITECTURE.md",
        ]
    );
    // A module's own paths, comments and imports downward are fine.
    let fine = [source(
        "src/proxy/extra.rs",
        "// crate::server is named in a comment only\nuse crate::proxy::retry;\nuse crate::{error::BoxError, upstream::Upstream};\n",
    )];
    assert_eq!(violations(&fine, &layers), Vec::<String>::new());
}

#[test]
fn the_picture_reads_in_order() {
    let layers = project_layers();
    let at = |name: &str| layers.order.iter().position(|m| m == name).unwrap();
    assert_eq!(layers.order.first().map(String::as_str), Some("cli"));
    assert!(at("admin") < at("server") && at("server") < at("sim"));
    assert!(at("server") < at("pipeline") && at("pipeline") < at("runtime") && at("runtime") < at("proxy"));
    assert!(at("metrics") < at("error_log") && at("error_log") < at("config") && at("config") < at("client"));
    assert_eq!(layers.order.last().map(String::as_str), Some("fuzzing"));
}
