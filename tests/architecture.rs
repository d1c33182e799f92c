//! The module graph of `src/` has no circles: no two modules (files) reach each other through
//! `crate::…`, `super::…` or `self::…` paths, directly or round a longer loop. Each file is read
//! with its comments, string literals and `#[cfg(test)]` items (and the files of
//! `#[cfg(test)] mod x;`) left out; every such path in the rest — `use` trees included — is an
//! edge to the longest module it names. A strongly connected component of more than one module
//! fails the test, naming the modules and where each edge of the circle is written.
//!
//! A parent's plain `child::…` paths are not counted: a folder's `mod.rs` that calls into its
//! children while they use its items through `super::` is one module split into files, not a
//! circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module: `["election", "etcd", "txn"]`; the crate root is `[]`.
type Module = Vec<String>;

/// Where an edge is written: file, line, the path as written.
#[derive(Debug, Clone)]
struct Site {
    file: String,
    line: usize,
    path: String,
}

/// The file of each module, from `src/`-relative paths (binaries are crates of their own).
fn module_of(file: &str) -> Option<Module> {
    let rel = file.strip_suffix(".rs")?;
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    Some(parts)
}

/// `src` with comments and the contents of string and character literals blanked out
/// (newlines kept, so line numbers stay).
fn strip_comments_and_strings(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(rest) {
            // r"…", r#"…"#, br"…": no escapes; ends at `"` and as many `#`.
            let open = rest
                .iter()
                .position(|&c| c == b'"')
                .expect("raw string quote");
            out.push(b'"');
            i += open + 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while i < b.len() && !b[i..].starts_with(&close) {
                blank(&mut out, b[i]);
                i += 1;
            }
            out.push(b'"');
            i += close.len();
        } else if b[i] == b'"' {
            out.push(b'"');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            out.push(b'"');
            i += 1;
        } else if b[i] == b'\'' && char_literal_len(rest).is_some() {
            let n = char_literal_len(rest).expect("checked");
            out.extend(std::iter::repeat_n(b' ', n));
            i += n;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// At `r"`, `r#"`, `br"`…: the number of `#`s (not after an identifier character, which the
/// caller has already copied: `for"` is not a raw string, but `r` alone never ends a word we
/// care about).
fn raw_string_start(rest: &[u8]) -> Option<usize> {
    let after_prefix = rest
        .strip_prefix(b"br")
        .or_else(|| rest.strip_prefix(b"r"))?;
    let hashes = after_prefix.iter().take_while(|&&c| c == b'#').count();
    (after_prefix.get(hashes) == Some(&b'"')).then_some(hashes)
}

/// The length of a character literal at `rest` (`'a'`, `'\n'`, `'\u{1F600}'`, `'é'`), or
/// `None` for a lifetime or label.
fn char_literal_len(rest: &[u8]) -> Option<usize> {
    if rest.get(1) == Some(&b'\\') {
        // `'\n'`, `'\''`, `'\u{..}'`: the closing quote comes after the escaped character.
        let end = rest.get(3..)?.iter().position(|&c| c == b'\'')?;
        return Some(end + 4);
    }
    let s = std::str::from_utf8(&rest[1..rest.len().min(6)])
        .ok()
        .or_else(|| {
            // A multi-byte character cut at the slice's end.
            (2..6)
                .rev()
                .find_map(|n| std::str::from_utf8(&rest[1..rest.len().min(n)]).ok())
        })?;
    let c = s.chars().next()?;
    (rest.get(1 + c.len_utf8()) == Some(&b'\'')).then_some(2 + c.len_utf8())
}

/// `code` (comments and strings already blanked) without its `#[cfg(test)]` items, and the
/// names of the child modules declared test-only (`#[cfg(test)] mod tests;`).
fn strip_test_items(code: &str) -> (String, Vec<String>) {
    let mut out = code.as_bytes().to_vec();
    let mut test_children = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("#[cfg(test)]").map(|p| p + from) {
        let b = code.as_bytes();
        let mut i = at + "#[cfg(test)]".len();
        let item_start = i;
        let mut depth = 0i32;
        while i < b.len() {
            match b[i] {
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' => depth -= 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        i += 1;
                        break;
                    }
                }
                b';' if depth == 0 => {
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let item = &code[item_start..i];
        let words: Vec<&str> = item
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        if let Some(pos) = words.iter().position(|w| *w == "mod")
            && item.trim_end().ends_with(';')
            && let Some(name) = words.get(pos + 1)
        {
            test_children.push(name.to_string());
        }
        for c in &mut out[at..i] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
        from = i;
    }
    (String::from_utf8_lossy(&out).into_owned(), test_children)
}

/// Every `crate::…`, `super::…` and `self::…` path in `code`, `use` trees expanded, with its
/// line: as segments, the first being `crate`, `super` or `self`.
fn paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let tokens = tokenize(code);
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let (line, t) = &tokens[i];
        let prev = i.checked_sub(1).map(|p| tokens[p].1.as_str());
        // `pub(in crate::x)` is a visibility, not a use.
        let starts = matches!(t.as_str(), "crate" | "super" | "self") && prev != Some("in");
        if t == "use" {
            let (end, mut found) = use_tree(&tokens, i + 1, Vec::new());
            found.retain(|(_, p)| matches!(p[0].as_str(), "crate" | "super" | "self"));
            out.extend(found);
            i = end;
            continue;
        }
        if starts && prev != Some("::") && tokens.get(i + 1).is_some_and(|(_, n)| n == "::") {
            let mut segs = vec![t.clone()];
            let mut j = i + 1;
            while tokens.get(j).is_some_and(|(_, n)| n == "::")
                && tokens.get(j + 1).is_some_and(|(_, n)| is_ident(n))
            {
                segs.push(tokens[j + 1].1.clone());
                j += 2;
            }
            out.push((*line, segs));
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Identifiers, `::` and single punctuation characters, with their lines.
fn tokenize(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = code.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\n' {
            line += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if !(d.is_alphanumeric() || d == '_') {
                    break;
                }
                end = j + d.len_utf8();
                chars.next();
            }
            out.push((line, code[i..end].to_string()));
        } else if c == ':' && chars.peek().is_some_and(|&(_, d)| d == ':') {
            chars.next();
            out.push((line, "::".to_string()));
        } else if !c.is_whitespace() {
            out.push((line, c.to_string()));
        }
    }
    out
}

/// Parse a `use` tree from `tokens[i]` with `prefix` before it; returns where it ended and the
/// paths it names.
fn use_tree(
    tokens: &[(usize, String)],
    mut i: usize,
    prefix: Vec<String>,
) -> (usize, Vec<(usize, Vec<String>)>) {
    let mut segs = prefix;
    let mut out = Vec::new();
    let line = tokens.get(i).map_or(0, |t| t.0);
    while let Some((_, t)) = tokens.get(i) {
        match t.as_str() {
            "::" => i += 1,
            "{" => {
                i += 1;
                loop {
                    let (end, found) = use_tree(tokens, i, segs.clone());
                    out.extend(found);
                    i = end;
                    match tokens.get(i).map(|t| t.1.as_str()) {
                        Some(",") => i += 1,
                        Some("}") => {
                            i += 1;
                            break;
                        }
                        _ => break,
                    }
                    if tokens.get(i).is_some_and(|t| t.1 == "}") {
                        i += 1;
                        break;
                    }
                }
                return (skip_to_end(tokens, i), out);
            }
            // `self` inside braces names the prefix itself.
            "self" if !segs.is_empty() => {
                out.push((line, segs.clone()));
                return (skip_to_end(tokens, i + 1), out);
            }
            "*" => {
                out.push((line, segs.clone()));
                return (skip_to_end(tokens, i + 1), out);
            }
            "as" => {
                out.push((line, segs.clone()));
                return (skip_to_end(tokens, i + 2), out);
            }
            ";" | "," | "}" => {
                if !segs.is_empty() {
                    out.push((line, segs.clone()));
                }
                let end = if t == ";" { i + 1 } else { i };
                return (end, out);
            }
            w if is_ident(w) => {
                segs.push(w.to_string());
                i += 1;
            }
            _ => return (i + 1, out),
        }
    }
    (i, out)
}

/// Past a finished tree: at the `,` or `}` that follows (for the caller), or past the `;`.
fn skip_to_end(tokens: &[(usize, String)], i: usize) -> usize {
    match tokens.get(i).map(|t| t.1.as_str()) {
        Some(";") => i + 1,
        _ => i,
    }
}

/// The module graph of `files` (`src/`-relative path → source): each module's edges to the
/// modules it names, with where.
fn graph(files: &BTreeMap<String, String>) -> BTreeMap<Module, BTreeMap<Module, Site>> {
    let mut parsed = BTreeMap::new();
    let mut test_only: BTreeSet<Module> = BTreeSet::new();
    for (file, src) in files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let (code, test_children) = strip_test_items(&strip_comments_and_strings(src));
        for child in test_children {
            let mut m = module.clone();
            m.push(child);
            test_only.insert(m);
        }
        parsed.insert(module, (file.clone(), code));
    }
    // A test-only module's own children are test-only too.
    parsed.retain(|m, _| !test_only.iter().any(|t| m.starts_with(t)));
    let modules: BTreeSet<Module> = parsed.keys().cloned().collect();
    let mut edges: BTreeMap<Module, BTreeMap<Module, Site>> = BTreeMap::new();
    for (module, (file, code)) in &parsed {
        let out = edges.entry(module.clone()).or_default();
        for (line, segs) in paths(code) {
            let mut target: Module = match segs[0].as_str() {
                "crate" => Vec::new(),
                "self" => module.clone(),
                _ => module.clone(),
            };
            let mut rest = &segs[..];
            if rest[0] == "super" {
                while rest.first().is_some_and(|s| s == "super") {
                    target.pop();
                    rest = &rest[1..];
                }
            } else {
                rest = &rest[1..];
            }
            target.extend(rest.iter().cloned());
            let Some(to) = (0..=target.len())
                .rev()
                .map(|n| target[..n].to_vec())
                .find(|m| modules.contains(m))
            else {
                continue;
            };
            if &to != module {
                out.entry(to).or_insert_with(|| Site {
                    file: file.clone(),
                    line,
                    path: segs.join("::"),
                });
            }
        }
    }
    edges
}

/// The strongly connected components of more than one module (Tarjan).
fn circles(edges: &BTreeMap<Module, BTreeMap<Module, Site>>) -> Vec<Vec<Module>> {
    struct Tarjan<'a> {
        edges: &'a BTreeMap<Module, BTreeMap<Module, Site>>,
        index: BTreeMap<Module, usize>,
        low: BTreeMap<Module, usize>,
        stack: Vec<Module>,
        on: BTreeSet<Module>,
        out: Vec<Vec<Module>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: &Module) {
            let n = self.index.len();
            self.index.insert(v.clone(), n);
            self.low.insert(v.clone(), n);
            self.stack.push(v.clone());
            self.on.insert(v.clone());
            let next: Vec<Module> = self
                .edges
                .get(v)
                .map(|e| e.keys().cloned().collect())
                .unwrap_or_default();
            for w in next {
                if !self.index.contains_key(&w) {
                    self.visit(&w);
                    let l = self.low[v].min(self.low[&w]);
                    self.low.insert(v.clone(), l);
                } else if self.on.contains(&w) {
                    let l = self.low[v].min(self.index[&w]);
                    self.low.insert(v.clone(), l);
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(&w);
                    let done = &w == v;
                    comp.push(w);
                    if done {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    self.out.push(comp);
                }
            }
        }
    }
    let mut t = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// Each circle, with the edges inside it and where they are written.
fn describe(edges: &BTreeMap<Module, BTreeMap<Module, Site>>, circle: &[Module]) -> String {
    let mut s = format!(
        "modules that import each other in a circle: {}\n",
        circle.iter().map(name).collect::<Vec<_>>().join(", ")
    );
    for a in circle {
        for (b, site) in edges.get(a).into_iter().flatten() {
            if circle.contains(b) {
                s += &format!(
                    "  {} -> {}: src/{}:{} `{}`\n",
                    name(a),
                    name(b),
                    site.file,
                    site.line,
                    site.path
                );
            }
        }
    }
    s
}

fn read_src(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("read src/ entry").path();
        if path.is_dir() {
            read_src(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).expect("under src/");
            out.insert(
                rel.to_string_lossy().into_owned(),
                std::fs::read_to_string(&path).expect("read a source file"),
            );
        }
    }
}

#[test]
fn no_module_in_src_imports_in_a_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    read_src(&root, &root, &mut files);
    let edges = graph(&files);
    assert!(
        edges.len() > 20 && edges.values().map(BTreeMap::len).sum::<usize>() > 50,
        "the graph of src/ looks too small to be right: {} modules",
        edges.len()
    );
    let found = circles(&edges);
    let report: Vec<String> = found.iter().map(|c| describe(&edges, c)).collect();
    assert!(found.is_empty(), "{}", report.join("\n"));
}

fn sources(files: &[(&str, &str)]) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect()
}

/// The checker itself: the circles it must find, and what it must not count.
#[test]
fn the_checker_finds_circles_and_ignores_comments_strings_and_tests() {
    let lib = "pub mod a; pub mod b; pub mod c; pub mod d;";
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a [&'a str]]);
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("a pair through use", &[
            ("lib.rs", lib),
            ("a.rs", "use crate::b::Thing;"),
            ("b.rs", "use crate::a::Other;"),
        ], &[&["a", "b"]]),
        ("a loop of three, through a use tree and an inline path", &[
            ("lib.rs", lib),
            ("a.rs", "use crate::{b::{self, X}, d};"),
            ("b.rs", "fn f() { crate::c::go(); }"),
            ("c.rs", "pub fn go() { let _ = crate::a::Y; }"),
        ], &[&["a", "b", "c"]]),
        ("siblings through super", &[
            ("lib.rs", "pub mod e;"),
            ("e/mod.rs", "mod client; mod txn;"),
            ("e/client.rs", "use super::txn::read;"),
            ("e/txn.rs", "use super::client::Clients;"),
        ], &[&["e::client", "e::txn"]]),
        ("a child and its parent through self and super", &[
            ("lib.rs", "pub mod e;"),
            ("e/mod.rs", "mod x; pub use self::x::X;"),
            ("e/x.rs", "use super::Shared;"),
        ], &[&["e", "e::x"]]),
        ("a parent's plain child path is not an import", &[
            ("lib.rs", "pub mod e;"),
            ("e/mod.rs", "mod x; pub use x::X; fn f() { x::go(); }"),
            ("e/x.rs", "use super::Shared;"),
        ], &[]),
        ("comments, doc links and strings", &[
            ("lib.rs", lib),
            ("a.rs", "use crate::b::B; // crate::b again"),
            ("b.rs", "//! see [`crate::a`]\n/* crate::a::X /* nested */ crate::a */\nconst S: &str = \"crate::a::X\";\nconst R: &str = r#\"crate::a\"#;\nconst C: char = '\"'; fn f<'a>(x: &'a str) {}"),
        ], &[]),
        ("test modules, inline and in files", &[
            ("lib.rs", lib),
            ("a.rs", "use crate::b::B;"),
            ("b.rs", "pub struct B;\n#[cfg(test)]\nmod tests { use crate::a::X; #[test] fn t() {} }\n#[cfg(test)]\nmod more;"),
            ("b/more.rs", "use crate::a::Y;"),
        ], &[]),
        ("code after a test module still counts", &[
            ("lib.rs", lib),
            ("a.rs", "use crate::b::B;"),
            ("b.rs", "#[cfg(test)]\nmod tests { fn t() { if x { y(); } } }\nfn late() { crate::a::f(); }"),
        ], &[&["a", "b"]]),
        ("binaries are crates of their own", &[
            ("lib.rs", lib),
            ("a.rs", "use crate::b::B;"),
            ("bin/tool.rs", "use crate::a::A;"),
            ("b.rs", ""),
        ], &[]),
    ];
    for (what, files, want) in cases {
        let edges = graph(&sources(files));
        let got: Vec<Vec<String>> = circles(&edges)
            .iter()
            .map(|c| c.iter().map(name).collect())
            .collect();
        let want: Vec<Vec<String>> = want
            .iter()
            .map(|c| c.iter().map(|s| s.to_string()).collect())
            .collect();
        assert_eq!(got, want, "{what}: {edges:?}");
    }
    // The failure names the files and lines of the edges.
    let edges = graph(&sources(&[
        ("lib.rs", lib),
        ("a.rs", "\nuse crate::b::Thing;"),
        ("b.rs", "fn f() {\n    crate::a::go();\n}"),
    ]));
    let text = describe(&edges, &circles(&edges)[0]);
    assert!(
        text.contains("a -> b: src/a.rs:2 `crate::b::Thing`")
            && text.contains("b -> a: src/b.rs:2 `crate::a::go`"),
        "{text}"
    );
}
