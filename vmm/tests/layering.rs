//! perfvmm's modules form layers, in the order a hint travels (see
//! `docs/architecture.md`); no module may import one of a higher layer.
//! This test reads the sources and fails on any `crate::` path that points
//! upward, so the layout cannot drift back into cycles.

use std::path::{Path, PathBuf};

/// Layer of each top-level module (and of `devices::bus`, which the
/// foundation uses for its `lock` helper), bottom to top.
fn layer(module: &str) -> Option<u8> {
    Some(match module {
        "layout" | "memory" | "arch" | "aml" | "memstat" | "cli" | "devices::bus" | "policy"
        | "seccomp" | "predict" => 0,
        "devices" | "exit" | "vcpu" | "event_loop" | "boot" | "acpi" => 1,
        "actuators" => 2,
        "control" => 3,
        "builder" | "vm" | "snapshot" | "migration" => 4,
        _ => return None,
    })
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a source file belongs to, as [`layer`] names it.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [d, b, ..] if d == "devices" && b == "bus" => "devices::bus".into(),
        [first, ..] => first.clone(),
        [] => String::new(),
    }
}

/// The module a path below `crate::` names: its first component, or
/// `devices::bus`.
fn target_of(path: &str) -> String {
    let mut parts = path.split("::").map(str::trim).filter(|p| !p.is_empty());
    let first = parts.next().unwrap_or_default().to_string();
    match parts.next() {
        Some(b) if first == "devices" && b.starts_with("bus") => "devices::bus".into(),
        _ => first,
    }
}

/// Every module a `crate::` path in `text` names, outside tests; a group
/// (`crate::{a, b::c}`) names each of its members.
fn imports(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut found = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        // Skip `other_crate::` and the like.
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            found.extend(group.split(',').map(target_of).filter(|t| !t.is_empty()));
            continue;
        }
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        found.push(target_of(&path));
    }
    found
}

#[test]
fn no_module_imports_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "main" || module == "lib" {
            continue;
        }
        let from = layer(&module)
            .unwrap_or_else(|| panic!("{}: module {module} has no layer", file.display()));
        let text = std::fs::read_to_string(file).unwrap();
        for target in imports(&text) {
            let to = layer(&target)
                .unwrap_or_else(|| panic!("{}: crate::{target} has no layer", file.display()));
            if to > from {
                upward.push(format!(
                    "{} ({module}, layer {from}) imports crate::{target} (layer {to})",
                    file.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
}

#[test]
fn the_checker_sees_an_upward_import() {
    let text = "use crate::control::Controller;\nfn f() { crate::devices::bus::lock(); }\n\
                use crate::{vm, devices::serial};\nuse other_crate::x;\n\
                #[cfg(test)]\nmod tests { use crate::builder; }";
    assert_eq!(
        imports(text),
        vec!["control", "devices::bus", "vm", "devices"]
    );
    assert!(layer("control") > layer("devices"));
}
