//! `cargo xtask imports`: the module graph of a crate at the level of its top-level modules
//! (`src/<x>.rs` or `src/<x>/`), built from the `crate::` paths in each source file (`use`
//! lines and paths in code). Fails on a cycle that spans two top-level modules (parent <->
//! child inside one folder is fine: that is one node) and on a hand-written source file over
//! [`MAX_LINES`] lines (generated files are skipped) anywhere in the workspace: sources,
//! tests, examples and the eBPF program alike.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Crates whose graph must be acyclic and whose files must be under [`MAX_LINES`].
pub const ENFORCED: &[&str] = &["control-api", "node-agent"];
/// Crates checked and reported, but not failed on (yet).
pub const REPORTED: &[&str] = &[];
/// Most lines in one hand-written source file.
pub const MAX_LINES: usize = 800;

/// One crate's findings.
#[derive(Debug, Default)]
pub struct Report {
    /// Each cycle as the top-level modules in order, with one `file:line` per edge.
    pub cycles: Vec<Vec<(String, String)>>,
    /// Hand-written files over the limit, with their line counts.
    pub long_files: Vec<(PathBuf, usize)>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.cycles.is_empty() && self.long_files.is_empty()
    }
}

/// `cargo xtask imports [crate...]`: checks the given crates, or the enforced and reported
/// lists; fails if an enforced (or explicitly named) crate has a finding.
pub fn main(args: &[String]) -> Result<()> {
    let root = crate::sh::root();
    let (enforced, reported): (Vec<&str>, Vec<&str>) = if args.is_empty() {
        (ENFORCED.to_vec(), REPORTED.to_vec())
    } else {
        (args.iter().map(String::as_str).collect(), Vec::new())
    };
    let mut failed = Vec::new();
    for (name, enforce) in enforced
        .iter()
        .map(|c| (*c, true))
        .chain(reported.iter().map(|c| (*c, false)))
    {
        let report = check(&root.join(name).join("src"))?;
        print_report(name, &report, enforce);
        if enforce && !report.ok() {
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("import graph check failed for {}", failed.join(", "));
    }
    if args.is_empty() {
        let long = long_files(&root)?;
        for (file, n) in &long {
            eprintln!(
                "xtask imports: {} has {n} lines (limit {MAX_LINES})",
                file.display()
            );
        }
        if !long.is_empty() {
            bail!(
                "{} hand-written Rust files are over {MAX_LINES} lines",
                long.len()
            );
        }
    }
    Ok(())
}

/// Hand-written Rust files over [`MAX_LINES`] anywhere under `root` (build output,
/// dependencies and hidden folders skipped), relative to `root`.
pub fn long_files(root: &Path) -> Result<Vec<(PathBuf, usize)>> {
    let mut files = Vec::new();
    walk_sources(root, &mut files)?;
    files.sort();
    let mut long = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let rel = file.strip_prefix(root).unwrap_or(&file).to_path_buf();
        let lines = text.lines().count();
        if lines > MAX_LINES && !is_generated(&rel, &text) {
            long.push((rel, lines));
        }
    }
    Ok(long)
}

fn walk_sources(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path.is_dir() {
            if !(name.starts_with('.') || ["target", "node_modules", "dist"].contains(&name)) {
                walk_sources(&path, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn print_report(name: &str, r: &Report, enforce: bool) {
    let tag = if enforce {
        ""
    } else {
        " (reported, not enforced)"
    };
    if r.ok() {
        eprintln!("xtask imports: {name}: no cycle between top-level modules, no file over {MAX_LINES} lines{tag}");
        return;
    }
    for cycle in &r.cycles {
        let names: Vec<&str> = cycle.iter().map(|(m, _)| m.as_str()).collect();
        eprintln!(
            "xtask imports: {name}: cycle {} -> {}{tag}",
            names.join(" -> "),
            names[0]
        );
        for (i, (m, at)) in cycle.iter().enumerate() {
            let next = &cycle[(i + 1) % cycle.len()].0;
            eprintln!("    {m} -> {next}  ({at})");
        }
    }
    for (file, n) in &r.long_files {
        eprintln!(
            "xtask imports: {name}: {} has {n} lines (limit {MAX_LINES}){tag}",
            file.display()
        );
    }
}

/// Checks one crate's `src` directory.
pub fn check(src: &Path) -> Result<Report> {
    let mut files = Vec::new();
    walk(src, &mut files)?;
    files.sort();
    let mut report = Report::default();
    // top-level module -> referenced top-level module -> first place it is referenced
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let rel = file.strip_prefix(src).unwrap_or(file);
        if is_generated(rel, &text) {
            continue;
        }
        let lines = text.lines().count();
        if lines > MAX_LINES {
            report.long_files.push((rel.to_path_buf(), lines));
        }
        let Some(from) = top_module(src, rel) else {
            continue; // the crate root may name every module
        };
        let code: String = text
            .lines()
            .map(|l| format!("{}\n", strip_comment(l)))
            .collect();
        for (offset, to) in crate_refs(&code) {
            if to != from && is_module(src, &to) {
                let line_no = code[..offset].matches('\n').count() + 1;
                edges
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| format!("{}:{line_no}", rel.display()));
            }
        }
    }
    report.cycles = cycles(&edges);
    Ok(report)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Generated code: under a `gen` folder or marked `@generated` near its top.
fn is_generated(rel: &Path, text: &str) -> bool {
    rel.components().any(|c| c.as_os_str() == "gen")
        || text
            .lines()
            .take(10)
            .any(|l| l.contains("@generated") || l.contains("automatically generated"))
}

/// The top-level module a file belongs to; `None` for the crate roots.
fn top_module(src: &Path, rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    if src.join(&first).is_dir() {
        return Some(first);
    }
    let stem = first.strip_suffix(".rs")?;
    if stem == "lib" || stem == "main" {
        return None;
    }
    Some(stem.to_string())
}

fn is_module(src: &Path, name: &str) -> bool {
    src.join(format!("{name}.rs")).is_file() || src.join(name).is_dir()
}

/// The line without a `//` comment (strings containing `//` are rare enough in `crate::`
/// lines to ignore).
fn strip_comment(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// The first segment after each `crate::` (with its byte offset), including each item of a
/// `crate::{a, b::c}` group.
fn crate_refs(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(i) = code[pos..].find("crate::") {
        let at = pos + i;
        // `$crate::` and `weft_crate::` are not this crate's paths
        let before = code[..at].chars().next_back();
        let after = &code[at + "crate::".len()..];
        pos = at + "crate::".len();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            out.extend(group_idents(group).into_iter().map(|id| (at, id)));
        } else {
            let ident: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                out.push((at, ident));
            }
        }
    }
    out
}

/// The first identifier of each top-level item of a `{...}` use group (text after `{`).
fn group_idents(group: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut current: Option<String> = None;
    let mut expecting = true;
    for ch in group.chars() {
        match ch {
            '{' => {
                depth += 1;
                expecting = false;
            }
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                if let Some(id) = current.take() {
                    out.push(id);
                }
                expecting = true;
            }
            c if depth == 0 && (c.is_alphanumeric() || c == '_') => {
                if expecting {
                    current.get_or_insert_with(String::new).push(c);
                }
            }
            c if c.is_whitespace() && current.as_deref().is_none_or(str::is_empty) => {}
            _ => {
                if current.is_some() {
                    expecting = false;
                }
            }
        }
    }
    if let Some(id) = current {
        out.push(id);
    }
    out.retain(|id| id != "self");
    out
}

/// Every elementary cycle is too many to print: one cycle per strongly connected component
/// with more than one module, found by walking edges inside the component.
fn cycles(edges: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<(String, String)>> {
    let nodes: BTreeSet<&String> = edges
        .keys()
        .chain(edges.values().flat_map(|m| m.keys()))
        .collect();
    let reach = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(n) = stack.pop() {
            for next in edges.get(&n).into_iter().flat_map(|m| m.keys()) {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for n in &nodes {
        if done.contains(*n) || !reachable[n].contains(*n) {
            continue;
        }
        let scc: BTreeSet<String> = reachable[n]
            .iter()
            .filter(|m| reachable[m].contains(*n))
            .cloned()
            .collect();
        done.extend(scc.iter().cloned());
        // shortest path n -> ... -> n inside the component (BFS)
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([(*n).clone()]);
        'bfs: while let Some(cur) = queue.pop_front() {
            for next in edges.get(&cur).into_iter().flat_map(|m| m.keys()) {
                if !scc.contains(next) || prev.contains_key(next) {
                    continue;
                }
                prev.insert(next.clone(), cur.clone());
                if next == *n {
                    break 'bfs;
                }
                queue.push_back(next.clone());
            }
        }
        let mut path = vec![(*n).clone()];
        let mut cur = prev[*n].clone();
        while cur != **n {
            path.push(cur.clone());
            cur = prev[&cur].clone();
        }
        path.push((*n).clone());
        path.reverse();
        path.pop();
        let cycle = path
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let next = &path[(i + 1) % path.len()];
                (m.clone(), edges[m][next].clone())
            })
            .collect();
        out.push(cycle);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_paths_and_groups() {
        let names =
            |code: &str| -> Vec<String> { crate_refs(code).into_iter().map(|(_, n)| n).collect() };
        assert_eq!(names("use crate::datapath::Maps;"), ["datapath"]);
        assert_eq!(
            names("use crate::{\n    agent::run,\n    endpoint,\n    netns::{a, b},\n};"),
            ["agent", "endpoint", "netns"]
        );
        assert_eq!(
            names("let x = crate::tools::f(weft_crate::x, $crate::y);"),
            ["tools"]
        );
    }

    #[test]
    fn finds_a_cycle_between_top_level_modules() {
        let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut add = |a: &str, b: &str| {
            edges
                .entry(a.into())
                .or_default()
                .insert(b.into(), format!("{a}.rs:1"));
        };
        add("a", "b");
        add("b", "c");
        add("c", "a");
        add("c", "d");
        let found = cycles(&edges);
        assert_eq!(found.len(), 1);
        let names: Vec<&str> = found[0].iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        edges.get_mut("c").unwrap().remove("a");
        assert!(cycles(&edges).is_empty());
    }

    #[test]
    fn long_files_skip_build_output_and_generated_code() {
        let root = std::env::temp_dir().join(format!("weft-long-files-{}", std::process::id()));
        let write = |rel: &str, lines: usize, head: &str| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            let body: String = std::iter::once(format!("{head}\n"))
                .chain((1..lines).map(|i| format!("// {i}\n")))
                .collect();
            std::fs::write(path, body).expect("write");
        };
        write("a/tests/big.rs", MAX_LINES + 1, "//! big");
        write("a/src/ok.rs", MAX_LINES, "//! at the limit");
        write(
            "a/target/debug/build/out.rs",
            MAX_LINES + 1,
            "//! build output",
        );
        write("a/src/gen/api.rs", MAX_LINES + 1, "//! generated folder");
        write("a/src/proto.rs", MAX_LINES + 1, "// @generated by prost");
        let found = long_files(&root);
        std::fs::remove_dir_all(&root).expect("cleanup");
        let found = found.expect("walk");
        assert_eq!(found, [(PathBuf::from("a/tests/big.rs"), MAX_LINES + 1)]);
    }
}
