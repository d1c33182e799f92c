//! Generated reports kept as a data file and the page rendered from it (`docs/benchmarks.*`,
//! `docs/safety.*`): reading and writing the data, and holding a page to its rendering.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The data as its file holds it: pretty JSON with a final newline.
pub fn to_json<T: Serialize>(data: &T) -> String {
    serde_json::to_string_pretty(data).expect("invariant: report data serialises") + "\n"
}

/// Read a data file's text of `format`; another format is refused before its fields are read.
pub fn from_json<T: DeserializeOwned>(text: &str, format: u32) -> Result<T, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    match v.get("format").and_then(serde_json::Value::as_u64) {
        Some(f) if f == u64::from(format) => {}
        other => {
            let found = other.map_or("none".to_string(), |f| f.to_string());
            return Err(format!(
                "format {found} where this renderer reads format {format}"
            ));
        }
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

/// Whether the page at `page` is what the data at `data` renders to (`render` reads the data
/// file's text); the error says where they first differ.
pub fn check_rendered(
    data: &Path,
    page: &Path,
    render: impl Fn(&str) -> Result<String, String>,
) -> Result<(), String> {
    let text = std::fs::read_to_string(data)
        .map_err(|e| format!("cannot read {}: {e}", data.display()))?;
    let rendered = render(&text).map_err(|e| format!("{}: {e}", data.display()))?;
    let committed = std::fs::read_to_string(page)
        .map_err(|e| format!("cannot read {}: {e}", page.display()))?;
    if committed == rendered {
        return Ok(());
    }
    let line = committed
        .lines()
        .zip(rendered.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| committed.lines().count().min(rendered.lines().count()));
    Err(format!(
        "{} is not what {} renders to (first difference at line {}):\n  page:     {:?}\n  \
         rendered: {:?}",
        page.display(),
        data.display(),
        line + 1,
        committed.lines().nth(line).unwrap_or("(end of file)"),
        rendered.lines().nth(line).unwrap_or("(end of file)"),
    ))
}

/// The test of a committed pair `docs/NAME.json` → `docs/NAME.md`: the page must be what the
/// data renders to. With `ELECTD_RENDER_REPORTS=1` the page is rewritten from the data instead
/// (after a change of the renderer's words; never to change a figure). `rerun` says how the
/// pair is made.
pub fn check_committed(name: &str, render: impl Fn(&str) -> Result<String, String>, rerun: &str) {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let (data, page) = (
        docs.join(format!("{name}.json")),
        docs.join(format!("{name}.md")),
    );
    if std::env::var_os("ELECTD_RENDER_REPORTS").is_some() {
        let text = std::fs::read_to_string(&data).expect("read the data file");
        let rendered = render(&text).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
        std::fs::write(&page, rendered).expect("write the page");
        return;
    }
    if let Err(e) = check_rendered(&data, &page, render) {
        panic!(
            "{e}\nThe page is generated: {rerun}, or after changing the renderer's words, \
             `ELECTD_RENDER_REPORTS=1 cargo nextest run` of this test"
        );
    }
}
