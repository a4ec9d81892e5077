//! The crate's module layering, checked against its code.
//!
//! ARCHITECTURE.md's module diagram declares the layers, each line a rank and the modules in
//! it (lowest rank at the ground). This test reads that diagram and every `src/**/*.rs` file,
//! follows each file's `crate::`, `super::` and `self::` paths to the file that defines what
//! they name (through re-exports), and fails when:
//!
//! - a file imports a module of a higher rank, or another module of its own rank;
//! - a module in `src/` is missing from the diagram;
//! - two files import each other, directly or around a circle;
//! - a file has more than 500 lines of code (not blank, not a comment) outside its
//!   `#[cfg(test)]` modules;
//! - a file does not open with a `//!` comment.
//!
//! Test modules (`#[cfg(test)]`, loom's included) are left out: a test may reach anywhere.
//! `LAYERING_SRC=/path/to/src cargo test --test layering -- --nocapture print` prints the
//! import graph of another tree without checking it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

const MAX_CODE_LINES: usize = 500;

/// A module path from the crate root: `[]` for lib.rs, `["endpoint", "slots"]` for
/// `endpoint/slots.rs`.
type ModPath = Vec<String>;

struct Crate {
    root: PathBuf,
    /// Every file, by module path.
    files: BTreeMap<ModPath, File>,
}

struct File {
    rel: String,
    /// Names this file re-exports (`pub use`), and the path each stands for, as written.
    reexports: BTreeMap<String, (Anchor, Vec<String>)>,
    /// The paths it uses, as written.
    uses: Vec<(Anchor, Vec<String>)>,
    code_lines: usize,
    opens_with_doc: bool,
}

/// Where a written path starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Anchor {
    Crate,
    /// `super::` this many times.
    Super(usize),
    SelfMod,
}

fn src_root() -> PathBuf {
    std::env::var_os("LAYERING_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

fn mod_path(root: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(root).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !(stem == "mod" || (parts.is_empty() && stem == "lib")) {
        parts.push(stem.to_owned());
    }
    parts
}

impl Crate {
    fn read(root: PathBuf) -> Self {
        let mut paths = Vec::new();
        rust_files(&root, &mut paths);
        let mut files = BTreeMap::new();
        let mut test_modules = BTreeSet::new();
        for path in paths {
            let text = fs::read_to_string(&path).unwrap();
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let module = mod_path(&root, &path);
            for name in test_children(&text) {
                let mut child = module.clone();
                child.push(name);
                test_modules.insert(child);
            }
            files.insert(module, File::parse(rel, &text));
        }
        // A file that is a test module of its parent (`#[cfg(test)] mod tests;`) is a test.
        files.retain(|module, _| !test_modules.contains(module));
        Self { root, files }
    }

    /// The file a written path, used from `from`, names: the deepest module file it reaches,
    /// followed through that module's re-exports.
    fn resolve(
        &self,
        from: &ModPath,
        anchor: Anchor,
        segments: &[String],
        depth: usize,
    ) -> ModPath {
        let mut module: ModPath = match anchor {
            Anchor::Crate => Vec::new(),
            Anchor::SelfMod => from.clone(),
            Anchor::Super(n) => from[..from.len().saturating_sub(n)].to_vec(),
        };
        let mut rest = segments;
        while let Some((first, tail)) = rest.split_first() {
            let mut next = module.clone();
            next.push(first.clone());
            if self.files.contains_key(&next) {
                module = next;
                rest = tail;
            } else {
                break;
            }
        }
        if depth < 8 {
            if let Some(name) = rest.first() {
                if let Some((a, path)) = self.files[&module].reexports.get(name) {
                    let mut path = path.clone();
                    path.extend(rest[1..].iter().cloned());
                    return self.resolve(&module, *a, &path, depth + 1);
                }
            }
        }
        module
    }

    /// Each file's imports of other files.
    fn graph(&self) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
        let mut graph = BTreeMap::new();
        for (module, file) in &self.files {
            let targets: BTreeSet<ModPath> = file
                .uses
                .iter()
                .map(|(anchor, path)| self.resolve(module, *anchor, path, 0))
                .filter(|t| t != module)
                .collect();
            graph.insert(module.clone(), targets);
        }
        graph
    }

    fn rel(&self, module: &ModPath) -> &str {
        &self.files[module].rel
    }
}

/// The modules a file declares as test modules in files of their own:
/// `#[cfg(test)] mod name;` (or `#[cfg(all(test, ...))]`).
fn test_children(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(") {
        let attribute = &rest[at..];
        let Some(close) = attribute.find(")]") else {
            break;
        };
        let condition = &attribute["#[cfg(".len()..close];
        let item = attribute[close + 2..].trim_start();
        let is_test = condition == "test" || condition.starts_with("all(test");
        if let Some(declared) = item.strip_prefix("mod ") {
            let name: String = declared
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if is_test && declared[name.len()..].trim_start().starts_with(';') {
                names.push(name);
            }
        }
        rest = &attribute[close + 2..];
    }
    names
}

/// Strips comments, the contents of string and char literals, and `#[cfg(test)]` /
/// `#[cfg(all(test, ...))]` items. Returns the code and whether the file opened with `//!`.
fn strip(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').map_or(text.len(), |n| i + n);
            i = end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(text.len(), |n| i + n + 2);
            out.extend(text[i..end].chars().filter(|&c| c == '\n'));
            i = end;
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") || rest.starts_with("br\"") {
            let open = rest.find('"').unwrap();
            let hashes = rest[..open].matches('#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let end = rest[open + 1..]
                .find(&close)
                .map_or(text.len(), |n| i + open + 1 + n + close.len());
            out.push_str("\"\"");
            out.extend(text[i..end].chars().filter(|&c| c == '\n'));
            i = end;
        } else if bytes[i] == b'"' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            out.extend(text[i..j.min(text.len())].chars().filter(|&c| c == '\n'));
            i = (j + 1).min(text.len());
        } else if bytes[i] == b'\'' && char_literal_end(bytes, i).is_some() {
            let end = char_literal_end(bytes, i).unwrap();
            out.push_str("' '");
            i = end;
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    remove_test_items(&out)
}

/// The end of a char literal starting at `i`, if one starts there (not a lifetime).
fn char_literal_end(bytes: &[u8], i: usize) -> Option<usize> {
    if bytes.get(i + 1) == Some(&b'\\') {
        let close = bytes[i + 2..].iter().position(|&b| b == b'\'')?;
        return Some(i + 2 + close + 1);
    }
    let text = std::str::from_utf8(&bytes[i + 1..]).ok()?;
    let c = text.chars().next()?;
    (bytes.get(i + 1 + c.len_utf8()) == Some(&b'\'')).then_some(i + 2 + c.len_utf8())
}

/// Removes every item under a `#[cfg(test)]` or `#[cfg(all(test, ...))]` attribute.
fn remove_test_items(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    loop {
        let found = ["#[cfg(test)]", "#[cfg(all(test"]
            .iter()
            .filter_map(|m| rest.find(m))
            .min();
        let Some(at) = found else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        // The item ends at its closing brace, or at a `;` before any brace.
        let open = item.find('{');
        let semi = item.find(';');
        let end = match (open, semi) {
            (Some(o), Some(s)) if s < o => s + 1,
            (Some(o), _) => {
                let mut depth = 0usize;
                let mut end = item.len();
                for (k, c) in item[o..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = o + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, Some(s)) => s + 1,
            (None, None) => item.len(),
        };
        out.extend(item[..end].chars().filter(|&c| c == '\n'));
        rest = &item[end..];
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Path,
    Open,
    Close,
    Comma,
    Semi,
    Star,
    Other,
}

fn tokens(code: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
            continue;
        }
        i += 1;
        out.push(match c {
            ':' if chars.get(i) == Some(&':') => {
                i += 1;
                Token::Path
            }
            '{' => Token::Open,
            '}' => Token::Close,
            ',' => Token::Comma,
            ';' => Token::Semi,
            '*' => Token::Star,
            c if c.is_whitespace() => continue,
            _ => Token::Other,
        });
    }
    out
}

fn anchor_of(segments: &[String]) -> Option<(Anchor, usize)> {
    match segments.first().map(String::as_str) {
        Some("crate") => Some((Anchor::Crate, 1)),
        Some("self") => Some((Anchor::SelfMod, 1)),
        Some("super") => {
            let n = segments.iter().take_while(|s| *s == "super").count();
            Some((Anchor::Super(n), n))
        }
        _ => None,
    }
}

/// Parses a use tree from `tokens[*i]` with the segments before it in `prefix`, pushing each
/// leaf's full path and the name it binds.
fn use_tree(
    tokens: &[Token],
    i: &mut usize,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, String)>,
) {
    let mut path = prefix;
    loop {
        match tokens.get(*i) {
            Some(Token::Ident(name)) => {
                path.push(name.clone());
                *i += 1;
                if tokens.get(*i) == Some(&Token::Path) {
                    *i += 1;
                    continue;
                }
                // A leaf, perhaps renamed.
                let mut bound = name.clone();
                if tokens.get(*i) == Some(&Token::Ident("as".into())) {
                    if let Some(Token::Ident(alias)) = tokens.get(*i + 1) {
                        bound = alias.clone();
                    }
                    *i += 2;
                }
                if bound == "self" {
                    path.pop();
                    bound = path.last().cloned().unwrap_or_default();
                }
                out.push((path, bound));
                return;
            }
            Some(Token::Open) => {
                *i += 1;
                loop {
                    match tokens.get(*i) {
                        Some(Token::Close) => {
                            *i += 1;
                            return;
                        }
                        Some(Token::Comma) => *i += 1,
                        None => return,
                        _ => use_tree(tokens, i, path.clone(), out),
                    }
                }
            }
            Some(Token::Star) => {
                *i += 1;
                out.push((path, "*".into()));
                return;
            }
            _ => return,
        }
    }
}

impl File {
    fn parse(rel: String, text: &str) -> Self {
        let opens_with_doc = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.trim_start().starts_with("//!"));
        let code = strip(text);
        let code_lines = code.lines().filter(|l| !l.trim().is_empty()).count();
        let tokens = tokens(&code);
        let mut reexports = BTreeMap::new();
        let mut uses = Vec::new();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                Token::Ident(word) if word == "use" => {
                    // `pub use` and `pub(crate) use` re-export; `pub(crate) use` of another
                    // crate (the loom shim) names nothing of this one.
                    let public = i >= 1
                        && (tokens[i - 1] == Token::Ident("pub".into())
                            || (i >= 4 && tokens[i - 4] == Token::Ident("pub".into())));
                    i += 1;
                    let mut leaves = Vec::new();
                    use_tree(&tokens, &mut i, Vec::new(), &mut leaves);
                    for (path, bound) in leaves {
                        let Some((anchor, skip)) = anchor_of(&path) else {
                            continue;
                        };
                        let path = path[skip..].to_vec();
                        if public && bound != "*" {
                            reexports.insert(bound, (anchor, path.clone()));
                        }
                        if !(public && anchor == Anchor::SelfMod) {
                            uses.push((anchor, path));
                        }
                    }
                }
                Token::Ident(word) if matches!(word.as_str(), "crate" | "super") => {
                    let mut path = vec![word.clone()];
                    let mut j = i + 1;
                    while tokens.get(j) == Some(&Token::Path) {
                        match tokens.get(j + 1) {
                            Some(Token::Ident(s)) => {
                                path.push(s.clone());
                                j += 2;
                            }
                            _ => break,
                        }
                    }
                    if path.len() > 1 {
                        let (anchor, skip) = anchor_of(&path).unwrap();
                        uses.push((anchor, path[skip..].to_vec()));
                    }
                    i = j;
                }
                _ => i += 1,
            }
        }
        Self {
            rel,
            reexports,
            uses,
            code_lines,
            opens_with_doc,
        }
    }
}

/// The diagram's ranks: each top-level module (`endpoint`, `pick`, `lib` for lib.rs) and its rank.
fn declared_ranks(architecture: &str) -> BTreeMap<String, usize> {
    let mut ranks = BTreeMap::new();
    let mut in_block = false;
    let mut after_heading = false;
    for line in architecture.lines() {
        if line.starts_with("## ") {
            after_heading = line.contains("who imports whom");
            continue;
        }
        if after_heading && line.trim_start().starts_with("```") {
            in_block = !in_block;
            if !in_block {
                break;
            }
            continue;
        }
        if !in_block {
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(rank) = words.next().and_then(|w| w.parse::<usize>().ok()) else {
            continue;
        };
        for word in words {
            let name = if let Some(dir) = word.strip_suffix('/') {
                dir
            } else if let Some(file) = word.strip_suffix(".rs") {
                file
            } else {
                break; // the description begins
            };
            ranks.insert(name.to_owned(), rank);
        }
    }
    ranks
}

fn top(module: &ModPath) -> String {
    module.first().cloned().unwrap_or_else(|| "lib".into())
}

/// Every circle of imports among files, each as the files around it.
fn cycles(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    // Tarjan's strongly connected components; a component of more than one file is a circle.
    struct State<'a> {
        graph: &'a BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        found: Vec<Vec<ModPath>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a ModPath) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            if !s.graph.contains_key(w) {
                continue;
            }
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[w].min(s.low[v]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.index[w].min(s.low[v]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn print_graph(krate: &Crate) {
    for (module, targets) in krate.graph() {
        let names: Vec<&str> = targets.iter().map(|t| krate.rel(t)).collect();
        println!("{} -> {}", krate.rel(&module), names.join(", "));
    }
}

/// Every violation of the rules in the module docs, one line each.
fn violations(krate: &Crate, architecture: &str) -> Vec<String> {
    let ranks = declared_ranks(architecture);
    let mut found = Vec::new();
    if ranks.is_empty() {
        found.push("ARCHITECTURE.md declares no layers (a numbered diagram under \"Modules and who imports whom\")".into());
        return found;
    }
    let graph = krate.graph();
    for (module, targets) in &graph {
        let file = &krate.files[module];
        let Some(&rank) = ranks.get(&top(module)) else {
            found.push(format!(
                "{}: module `{}` is not in ARCHITECTURE.md's diagram",
                file.rel,
                top(module)
            ));
            continue;
        };
        for target in targets {
            if top(target) == top(module) {
                continue;
            }
            let Some(&to) = ranks.get(&top(target)) else {
                continue; // reported as undeclared on its own
            };
            if to >= rank {
                found.push(format!(
                    "{} (rank {rank}) imports {} (rank {to}): only lower ranks may be imported",
                    file.rel,
                    krate.rel(target)
                ));
            }
        }
        if file.code_lines > MAX_CODE_LINES {
            found.push(format!(
                "{}: {} lines of code outside tests (at most {MAX_CODE_LINES})",
                file.rel, file.code_lines
            ));
        }
        if !file.opens_with_doc {
            found.push(format!(
                "{}: does not open with a `//!` comment naming its concept",
                file.rel
            ));
        }
    }
    for cycle in cycles(&graph) {
        let names: Vec<&str> = cycle.iter().map(|m| krate.rel(m)).collect();
        found.push(format!("an import circle: {}", names.join(" <-> ")));
    }
    found
}

#[test]
fn the_code_keeps_the_declared_layers() {
    let krate = Crate::read(src_root());
    if std::env::args().any(|a| a == "print") {
        print_graph(&krate);
        return;
    }
    let architecture =
        fs::read_to_string(krate.root.join("../ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let found = violations(&krate, &architecture);
    assert!(
        found.is_empty(),
        "layering broken:\n  {}",
        found.join("\n  ")
    );
}

/// The checker itself: it finds an upward import, a circle, a long file and a missing
/// opening comment in a made-up crate, and passes a clean one.
#[test]
fn the_checker_catches_what_it_must() {
    let dir = std::env::temp_dir().join(format!("layering-check-{}", std::process::id()));
    let src = dir.join("src");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(src.join("high")).unwrap();
    let write = |rel: &str, text: &str| fs::write(src.join(rel), text).unwrap();
    let architecture = "## Modules and who imports whom\n\n```text\n2 lib.rs  the root\n1 high/  uses low\n0 low.rs  the ground\n```\n";
    write(
        "lib.rs",
        "//! Root.\nmod high;\nmod low;\npub use crate::high::Thing;\n",
    );
    write(
        "high/mod.rs",
        "//! High.\nmod part;\npub use self::part::Thing;\nuse crate::low::Base;\n",
    );
    write(
        "high/part.rs",
        "//! A part.\npub struct Thing(crate::low::Base);\n",
    );
    write(
        "low.rs",
        "//! Low.\n/// crate::high::Thing in a comment is no import.\npub struct Base;\nconst S: &str = \"crate::high::Thing\";\n#[cfg(test)]\nmod tests {\n    use crate::high::Thing;\n}\n",
    );
    let clean = Crate::read(src.clone());
    assert_eq!(violations(&clean, architecture), Vec::<String>::new());

    // An upward import, through a re-export, is found; and with it, a circle.
    write(
        "low.rs",
        "//! Low.\npub struct Base;\nfn f(_: crate::Thing) {}\n",
    );
    let upward = violations(&Crate::read(src.clone()), architecture);
    assert!(
        upward
            .iter()
            .any(|v| v.starts_with("low.rs (rank 0) imports high/part.rs (rank 1)")),
        "{upward:?}"
    );
    assert!(
        upward.iter().any(|v| v.starts_with("an import circle")),
        "{upward:?}"
    );

    // A long file without its opening comment; a module the diagram does not name.
    let long = "pub fn f() {}\n".repeat(MAX_CODE_LINES + 1);
    write("low.rs", &format!("pub struct Base;\n{long}"));
    write("stray.rs", "//! Stray.\n");
    let found = violations(&Crate::read(src), architecture);
    assert!(
        found.iter().any(|v| v.contains("lines of code")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|v| v.contains("does not open with")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|v| v.contains("`stray` is not in")),
        "{found:?}"
    );
    let _ = fs::remove_dir_all(&dir);
}
